"""Publishing to the code store (real nginx from the generated config): the
index is updated under the ``index.lock/`` lock, so publishers at the same
moment never lose each other's entries; a lock left by a publisher that died
is removed after LOCK_STALE_S; a store without MKCOL still takes publishes."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from olactors.cluster import publish as publishing
from olactors.cluster.publish import Store, _take_lock, publish, unpublish

from .cluster_tools import free_port, nginx
from .test_cluster_config import nginx_config


@contextmanager
def store(tmp_path: Path, *, mkcol: bool = True) -> Iterator[tuple[Store, Path]]:
    root = tmp_path / "store"
    root.mkdir()
    port = free_port()
    config = nginx_config(tmp_path, port, root)
    if not mkcol:  # an nginx.conf from before the lock
        text = config.read_text()
        assert "dav_methods PUT DELETE MKCOL;" in text
        config.write_text(text.replace("dav_methods PUT DELETE MKCOL;", "dav_methods PUT DELETE;"))
    with nginx(config, port, tmp_path / "nginx.log"):
        yield Store(f"http://127.0.0.1:{port}"), root


def listed(root: Path) -> dict:
    return json.loads((root / "index.json").read_text())["functions"]


def test_publishers_at_the_same_moment_keep_every_entry(tmp_path: Path) -> None:
    names = [f"fn{i}" for i in range(8)]
    archives = {name: f"archive of {name}".encode() for name in names}
    with store(tmp_path) as (code_store, root):
        start = threading.Barrier(len(names))
        errors: list[BaseException] = []

        def publisher(name: str) -> None:
            try:
                start.wait()
                for _ in range(3):
                    publish(code_store, name, archives[name])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=publisher, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        index = listed(root)
        assert sorted(index) == names
        for name in names:
            assert index[name]["sha256"] == hashlib.sha256(archives[name]).hexdigest()

        # Removing half of them at the same moment as the rest are published again.
        def remover(name: str) -> None:
            try:
                unpublish(code_store, name)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=remover if i % 2 else publisher, args=(n,))
            for i, n in enumerate(names)
        ]
        start = threading.Barrier(len(names) // 2)
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(listed(root)) == names[::2]
        assert httpx.get(code_store.url("index.lock/")).status_code == 404  # not left held


def test_a_lock_left_by_a_dead_publisher_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(publishing, "LOCK_STALE_S", 0.5)
    with store(tmp_path) as (code_store, root):
        assert httpx.request("MKCOL", code_store.url("index.lock/")).status_code == 201
        with caplog.at_level(logging.WARNING, "olactors.cluster"):
            publish(code_store, "late", b"late")
        assert "removing the index lock" in caplog.text and "held too long" in caplog.text
        assert sorted(listed(root)) == ["late"]
        assert httpx.get(code_store.url("index.lock/")).status_code == 404


def test_a_store_without_mkcol_is_published_to_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with store(tmp_path, mkcol=False) as (code_store, root):
        with caplog.at_level(logging.WARNING, "olactors.cluster"):
            publish(code_store, "old", b"old")
            unpublish(code_store, "old")
            publish(code_store, "kept", b"kept")
        assert "does not take MKCOL" in caplog.text
        assert sorted(listed(root)) == ["kept"]


class _Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next status of ``server.script`` for its method."""

    def _answer(self) -> None:
        self.server.seen.append(self.command)
        status = self.server.script[self.command].pop(0)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_MKCOL = do_GET = do_DELETE = _answer

    def log_message(self, format, *args) -> None:
        pass


def test_a_lock_released_between_mkcol_and_the_check_is_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MKCOL answers 405 both while the lock is held and where MKCOL is not
    allowed; a GET of the lock tells them apart. A holder releasing between
    the two must not make the publisher go on without a lock."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    # held (405), released before the check (404), then taken (201)
    server.script = {"MKCOL": [405, 201], "GET": [404]}
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code_store = Store(f"http://127.0.0.1:{server.server_address[1]}")
        with httpx.Client() as client, caplog.at_level(logging.WARNING, "olactors.cluster"):
            assert _take_lock(client, code_store) is True
        assert server.seen == ["MKCOL", "GET", "MKCOL"]
        assert "does not take MKCOL" not in caplog.text
    finally:
        server.shutdown()
        server.server_close()
