"""The CodePuller actor: cache window, snapshots, versions, local and HTTP registries."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio

from olactors._config import build_config
from olactors._errors import (
    BadFunction,
    BadFunctionName,
    FunctionNotFound,
    OlactorsError,
    RegistryUnavailable,
)
from olactors.actors import code_puller
from olactors.actors.code_puller import FunctionCode, run_code_puller
from olactors.registry import LocalRegistry

HANDLER = "def f(event):\n    return {version}\n"


# ------------------------------------------------------------------ helpers
@pytest.fixture
def worker(tmp_path: Path) -> Path:
    path = tmp_path / "worker"
    (path / "registry").mkdir(parents=True)
    return path


def write_function(worker: Path, name: str, version: int = 1) -> Path:
    code = worker / "registry" / name
    code.mkdir(parents=True, exist_ok=True)
    (code / "f.py").write_text(HANDLER.format(version=version))
    return code


def archive(version: int = 1) -> bytes:
    """A tar.gz holding f.py; the same bytes for the same ``version``."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tf:
            data = HANDLER.format(version=version).encode()
            info = tarfile.TarInfo("f.py")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def config(*overrides: str):
    return build_config(None, ["registry.cache_s=5", *overrides])


def count_calls(monkeypatch, name: str) -> list[tuple]:
    """Record every call of ``code_puller.<name>`` (from any thread)."""
    calls: list[tuple] = []
    real = getattr(code_puller, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(code_puller, name, wrapper)
    return calls


def snapshots(worker: Path, name: str) -> list[str]:
    return sorted(os.listdir(worker / "run" / "code" / name))


def handler_of(code: FunctionCode) -> str:
    return (code.code_dir / "f.py").read_text()


# ------------------------------------------------------------------ local registry
async def test_cache_window(worker, autojump_clock, monkeypatch):
    fingerprints = count_calls(monkeypatch, "fingerprint_dir")
    write_function(worker, "hello", 1)
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config(), worker)
        first = await ref.pull("hello")
        assert first.name == "hello"
        assert first.code_dir == worker / "run" / "code" / "hello" / first.version
        assert handler_of(first) == HANDLER.format(version=1)
        assert first.config.entry is None and len(fingerprints) == 1

        write_function(worker, "hello", 22)
        await trio.sleep(4.9)
        assert await ref.pull("hello") is first  # within the window: no I/O at all
        assert len(fingerprints) == 1

        await trio.sleep(0.2)
        third = await ref.pull("hello")
        assert len(fingerprints) == 2
        assert third.version != first.version and third.code_dir != first.code_dir
        assert handler_of(third) == HANDLER.format(version=22)
        assert handler_of(first) == HANDLER.format(version=1)  # old snapshot kept
        assert ref.cached_names() == 1

        await trio.sleep(5)  # checked again, unchanged: the same FunctionCode
        assert await ref.pull("hello") is third
        assert len(fingerprints) == 3
        nursery.cancel_scope.cancel()
    assert not (worker / "run" / "code").exists()


async def test_concurrent_pulls_share_one_check(worker, autojump_clock, monkeypatch):
    copies = count_calls(monkeypatch, "snapshot_dir")
    fingerprints = count_calls(monkeypatch, "fingerprint_dir")
    write_function(worker, "hello")
    results: list[FunctionCode] = []
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config(), worker)

        async def pull() -> None:
            results.append(await ref.pull("hello"))

        async with trio.open_nursery() as pulls:
            for _ in range(10):
                pulls.start_soon(pull)
        nursery.cancel_scope.cancel()
    assert len(results) == 10 and all(r is results[0] for r in results)
    assert len(copies) == 1 and len(fingerprints) == 1


async def test_names_do_not_wait_for_each_other(worker, monkeypatch):
    gate = threading.Event()
    real = code_puller.snapshot_dir

    def gated(src, dest, max_bytes):
        if src.name == "slow":
            assert gate.wait(10)
        return real(src, dest, max_bytes)

    monkeypatch.setattr(code_puller, "snapshot_dir", gated)
    write_function(worker, "slow")
    write_function(worker, "fast")
    slow: list[FunctionCode] = []
    try:
        async with trio.open_nursery() as nursery:
            ref = await nursery.start(run_code_puller, config(), worker)

            async def pull_slow() -> None:
                slow.append(await ref.pull("slow"))

            nursery.start_soon(pull_slow)
            await trio.sleep(0.05)
            with trio.fail_after(5):
                fast = await ref.pull("fast")
            assert fast.name == "fast" and not slow
            gate.set()
            with trio.fail_after(5):
                while not slow:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        gate.set()
    assert slow[0].name == "slow"


async def test_broken_update_keeps_the_previous_snapshot(worker, autojump_clock, monkeypatch):
    copies = count_calls(monkeypatch, "snapshot_dir")
    code = write_function(worker, "hello", 1)
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config(), worker)
        good = await ref.pull("hello")

        (code / "f.py").rename(code / "g.py")
        await trio.sleep(6)
        with pytest.raises(BadFunction) as info:
            await ref.pull("hello")
        assert info.value.status == 500
        assert info.value.message == (
            "function 'hello' in the registry is broken: no f.py and no entry in ol.yaml"
        )
        assert handler_of(good) == HANDLER.format(version=1)
        assert snapshots(worker, "hello") == [good.version]  # no temp dir left
        assert len(copies) == 2

        with pytest.raises(BadFunction):  # the failure is cached for the window
            await ref.pull("hello")
        await trio.sleep(6)
        with pytest.raises(BadFunction):  # unchanged broken code is not copied again
            await ref.pull("hello")
        assert len(copies) == 2

        (code / "ol.yaml").write_text("entry: g:f\n")
        await trio.sleep(6)
        fixed = await ref.pull("hello")
        assert fixed.version != good.version and fixed.config.entry == "g:f"
        assert sorted(snapshots(worker, "hello")) == sorted([good.version, fixed.version])
        nursery.cancel_scope.cancel()


async def test_release_and_forget(worker, autojump_clock):
    write_function(worker, "hello", 1)
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config(), worker)
        v1 = await ref.pull("hello")
        write_function(worker, "hello", 22)
        await trio.sleep(6)
        v2 = await ref.pull("hello")
        assert snapshots(worker, "hello") == sorted([v1.version, v2.version])

        await ref.release("hello", v1.version)
        assert snapshots(worker, "hello") == [v2.version]
        await ref.release("hello", v2.version)  # the current version is kept
        await ref.release("hello", "../../..")  # unknown: nothing happens
        await ref.release("other", v2.version)
        assert snapshots(worker, "hello") == [v2.version]
        assert await ref.pull("hello") is v2

        await ref.forget("hello")
        assert not (worker / "run" / "code" / "hello").exists()
        assert ref.cached_names() == 0
        again = await ref.pull("hello")  # a fresh start, within the old window
        assert again.version == v2.version and again.code_dir.is_dir()
        assert ref.cached_names() == 1
        await ref.forget("never-pulled")
        nursery.cancel_scope.cancel()


async def test_forget_during_a_check(worker, monkeypatch):
    gate = threading.Event()
    real = code_puller.snapshot_dir
    copies: list[Path] = []

    def gated(src, dest, max_bytes):
        copies.append(dest)
        if len(copies) == 1:
            assert gate.wait(10)
        return real(src, dest, max_bytes)

    monkeypatch.setattr(code_puller, "snapshot_dir", gated)
    write_function(worker, "hello")
    results: dict[str, FunctionCode] = {}
    try:
        async with trio.open_nursery() as nursery:
            ref = await nursery.start(run_code_puller, config(), worker)

            async def pull(label: str) -> None:
                results[label] = await ref.pull("hello")

            nursery.start_soon(pull, "before")
            await trio.sleep(0.05)
            nursery.start_soon(ref.forget, "hello")
            await trio.sleep(0.05)
            nursery.start_soon(pull, "after")  # must not join the check begun before forget
            await trio.sleep(0.05)
            gate.set()
            with trio.fail_after(5):
                while len(results) < 2:
                    await trio.sleep(0.01)
            after = results["after"]
            assert len(copies) == 2  # the pull after forget made its own snapshot
            assert after.code_dir.is_dir() and snapshots(worker, "hello") == [after.version]
            assert await ref.pull("hello") is after
            nursery.cancel_scope.cancel()
    finally:
        gate.set()


async def test_missing_function_and_bad_names(worker, autojump_clock):
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config(), worker)
        with pytest.raises(FunctionNotFound) as info:
            await ref.pull("nope")
        assert info.value.message == "no function 'nope' in the registry"
        assert info.value.status == 404
        for name in ("../etc", ".hidden", ""):
            with pytest.raises(BadFunctionName):
                await ref.pull(name)
        write_function(worker, "nope")
        with pytest.raises(FunctionNotFound):  # cached for the window
            await ref.pull("nope")
        await trio.sleep(6)
        assert (await ref.pull("nope")).name == "nope"
        nursery.cancel_scope.cancel()


async def test_expired_errors_are_pruned(worker, autojump_clock, monkeypatch):
    monkeypatch.setattr(code_puller, "_PRUNE_MIN", 4)
    write_function(worker, "kept")
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config(), worker)
        kept = await ref.pull("kept")
        for index in range(6):
            with pytest.raises(FunctionNotFound):
                await ref.pull(f"missing{index}")
        await trio.sleep(6)
        with pytest.raises(FunctionNotFound):  # 8 entries now: the next new name prunes
            await ref.pull("late")
        write_function(worker, "new")
        assert (await ref.pull("new")).name == "new"  # its own entry survives the prune
        assert set(ref._puller._entries) == {"kept", "late", "new"}
        assert await ref.pull("kept") == kept
        nursery.cancel_scope.cancel()


async def test_archives(worker, autojump_clock, monkeypatch):
    unpacks = count_calls(monkeypatch, "safe_unpack")
    registry = LocalRegistry(worker / "registry", 1 << 20)
    data = archive(1)
    registry.install("arc", data)
    (worker / "registry" / "arc").mkdir()  # a directory too: the archive wins
    (worker / "registry" / "arc" / "f.py").write_text("from the dir")
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config(), worker)
        first = await ref.pull("arc")
        assert first.version == hashlib.sha256(data).hexdigest()[:16]
        assert handler_of(first) == HANDLER.format(version=1)

        path = worker / "registry" / "arc.tar.gz"
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same content
        await trio.sleep(6)
        assert await ref.pull("arc") is first
        assert len(unpacks) == 1

        registry.install("arc", archive(2))
        await trio.sleep(6)
        second = await ref.pull("arc")
        assert second.version != first.version and handler_of(second).endswith("2\n")
        assert len(unpacks) == 2
        nursery.cancel_scope.cancel()


async def test_registry_location_and_leftovers(worker, tmp_path, autojump_clock):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "fn").mkdir(parents=True)
    (elsewhere / "fn" / "f.py").write_text("x = 1\n")
    relative = worker / "funcs" / "rel"
    relative.mkdir(parents=True)
    (relative / "f.py").write_text("y = 1\n")
    leftover = worker / "run" / "code" / "old" / "abc"
    leftover.mkdir(parents=True)
    for location, name in ((str(elsewhere), "fn"), ("funcs", "rel")):
        async with trio.open_nursery() as nursery:
            ref = await nursery.start(
                run_code_puller, config(f"registry.location={location}"), worker
            )
            assert not leftover.exists()
            assert (await ref.pull(name)).name == name
            nursery.cancel_scope.cancel()
        assert not (worker / "run" / "code").exists()


async def test_dead_actor_answers_with_an_error(worker, autojump_clock):
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config(), worker)
        nursery.cancel_scope.cancel()
    for call in (ref.pull("hello"), ref.forget("hello"), ref.release("hello", "v")):
        with pytest.raises(OlactorsError, match="^code puller is not running$"):
            await call


async def test_waiting_callers_get_an_error_when_the_actor_stops(worker, monkeypatch):
    gate = threading.Event()
    real = code_puller.snapshot_dir

    def gated(src, dest, max_bytes):
        assert gate.wait(10)
        return real(src, dest, max_bytes)

    monkeypatch.setattr(code_puller, "snapshot_dir", gated)
    write_function(worker, "hello")
    errors: list[BaseException] = []
    try:
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as inner:
                ref = await inner.start(run_code_puller, config(), worker)

                async def pull() -> None:
                    try:
                        await ref.pull("hello")
                    except OlactorsError as exc:
                        errors.append(exc)

                outer.start_soon(pull)
                await trio.sleep(0.05)
                inner.cancel_scope.cancel()
                gate.set()
    finally:
        gate.set()
    assert [str(e) for e in errors] == ["code puller is not running"]
    assert not (worker / "run" / "code").exists()


def registry_state(path: Path) -> list[tuple]:
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in sorted(dirnames + filenames):
            st = os.lstat(os.path.join(dirpath, name))
            found.append((os.path.join(dirpath, name), st.st_size, st.st_mtime_ns, st.st_mode))
    return sorted(found)


async def test_the_registry_is_never_written(worker, autojump_clock):
    write_function(worker, "dir-fn")
    (worker / "registry" / "broken").mkdir()
    LocalRegistry(worker / "registry", 1 << 20).install("arc", archive())
    before = registry_state(worker / "registry")
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config(), worker)
        for _ in range(3):
            for name in ("dir-fn", "arc", "broken", "missing"):
                try:
                    await ref.pull(name)
                except (BadFunction, FunctionNotFound):
                    pass
            await trio.sleep(6)
        await ref.forget("arc")
        nursery.cancel_scope.cancel()
    assert registry_state(worker / "registry") == before


# ------------------------------------------------------------------ HTTP registry
class _Registry(BaseHTTPRequestHandler):
    """Serves ``server.root/<file>`` with a content ETag; counts requests."""

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("If-None-Match")))
        if self.path == "/boom.tar.gz":
            self._answer(500, b"internal error")
            return
        file = server.root / self.path.lstrip("/")
        if not file.is_file():
            self._answer(404, b"not found")
            return
        body = file.read_bytes()
        modified = None
        if server.like_nginx:  # validators from the mtime in whole seconds and the size
            mtime = int(file.stat().st_mtime)
            etag = f'"{mtime:x}-{len(body):x}"'
            modified = formatdate(mtime, usegmt=True)
        else:
            etag = f'"{hashlib.sha256(body).hexdigest()[:12]}"'
        if self.headers.get("If-None-Match") == etag:
            server.not_modified += 1
            self._answer(304, b"", etag, modified)
        else:
            self._answer(200, body, etag, modified)

    def _answer(
        self, status: int, body: bytes, etag: str | None = None, modified: str | None = None
    ) -> None:
        self.send_response(status)  # with a Date header
        if etag:
            self.send_header("ETag", etag)
        if modified:
            self.send_header("Last-Modified", modified)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


class _Server:
    def __init__(self, root: Path) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
        self.httpd.root = root
        self.httpd.requests = []
        self.httpd.not_modified = 0
        self.httpd.like_nginx = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(10)


@pytest.fixture
def http_registry(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "served"
    root.mkdir()
    server = _Server(root)
    try:
        yield server
    finally:
        server.stop()


def http_config(server: _Server):
    return build_config(None, [f"registry.location={server.url}/", "registry.cache_s=0.2"])


async def test_http_conditional_get(worker, http_registry):
    served = http_registry.httpd.root / "web.tar.gz"
    served.write_bytes(archive(1))
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, http_config(http_registry), worker)
        first = await ref.pull("web")
        assert handler_of(first) == HANDLER.format(version=1)
        assert first.version == hashlib.sha256(archive(1)).hexdigest()[:16]
        assert await ref.pull("web") is first
        assert http_registry.httpd.requests == [("/web.tar.gz", None)]

        await trio.sleep(0.3)
        assert await ref.pull("web") is first
        etag = f'"{hashlib.sha256(archive(1)).hexdigest()[:12]}"'
        assert http_registry.httpd.requests[-1] == ("/web.tar.gz", etag)
        assert http_registry.httpd.not_modified == 1

        served.write_bytes(archive(2))
        await trio.sleep(0.3)
        second = await ref.pull("web")
        assert second.version != first.version
        assert handler_of(second) == HANDLER.format(version=2)
        assert len(http_registry.httpd.requests) == 3
        nursery.cancel_scope.cancel()


async def test_http_new_code_within_the_second_of_the_last_read(worker, http_registry):
    """nginx's validators are the mtime in whole seconds and the size: an upload of
    the same size in the second the worker last read the file keeps them. Such a
    read (Date not after Last-Modified) is not trusted for a conditional GET."""
    http_registry.httpd.like_nginx = True
    served = http_registry.httpd.root / "web.tar.gz"
    assert len(archive(1)) == len(archive(2))
    ahead = time.time() + 3600  # the file's second is not over when it is read
    served.write_bytes(archive(1))
    os.utime(served, (ahead, ahead))
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, http_config(http_registry), worker)
        assert handler_of(await ref.pull("web")) == HANDLER.format(version=1)
        served.write_bytes(archive(2))
        os.utime(served, (ahead, ahead))  # the same validators
        await trio.sleep(0.3)
        second = await ref.pull("web")
        assert handler_of(second) == HANDLER.format(version=2)
        assert http_registry.httpd.requests[-1] == ("/web.tar.gz", None)  # not conditional

        # Once the file's second is over when it is read, the validators are used.
        past = time.time() - 60
        os.utime(served, (past, past))
        await trio.sleep(0.3)
        assert (await ref.pull("web")).version == second.version
        assert http_registry.httpd.requests[-1] == ("/web.tar.gz", None)
        await trio.sleep(0.3)
        assert (await ref.pull("web")).version == second.version
        assert http_registry.httpd.requests[-1][1] is not None
        assert http_registry.httpd.not_modified == 1
        nursery.cancel_scope.cancel()


async def test_http_errors(worker, http_registry):
    (http_registry.httpd.root / "junk.tar.gz").write_bytes(b"this is not an archive")
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, http_config(http_registry), worker)
        with pytest.raises(FunctionNotFound, match="^no function 'missing' in the registry"):
            await ref.pull("missing")
        with pytest.raises(RegistryUnavailable) as info:
            await ref.pull("boom")
        assert info.value.status == 502
        assert (
            info.value.message == f"registry answered HTTP 500 for {http_registry.url}/boom.tar.gz"
        )
        with pytest.raises(BadFunction) as bad:
            await ref.pull("junk")
        assert bad.value.status == 500
        assert bad.value.message == (
            "function 'junk' in the registry is broken: not a gzip-compressed tar archive"
        )
        nursery.cancel_scope.cancel()


async def test_http_registry_down_serves_the_cached_version(worker, http_registry, caplog):
    (http_registry.httpd.root / "web.tar.gz").write_bytes(archive(1))
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, http_config(http_registry), worker)
        first = await ref.pull("web")
        await trio.to_thread.run_sync(http_registry.stop)
        await trio.sleep(0.3)
        with caplog.at_level(logging.WARNING, logger="olactors.code"):
            assert await ref.pull("web") is first
        assert "serving cached version" in caplog.text
        assert first.code_dir.is_dir()
        with pytest.raises(RegistryUnavailable, match="^registry unreachable at http://"):
            await ref.pull("other")
        nursery.cancel_scope.cancel()


async def test_http_registry_messages_never_name_its_credentials(worker, http_registry):
    # A 404's message reaches any caller of the public port, and the others
    # reach /stats and the log: none may carry a user:password of the location.
    (http_registry.httpd.root / "web.tar.gz").write_bytes(archive(1))
    with_credentials = http_registry.url.replace("http://", "http://reader:pw-s3cret@")
    config = build_config(None, [f"registry.location={with_credentials}/", "registry.cache_s=0"])
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_code_puller, config, worker)
        assert handler_of(await ref.pull("web")) == HANDLER.format(version=1)
        with pytest.raises(FunctionNotFound) as missing:
            await ref.pull("missing")
        assert f"({http_registry.url}/missing.tar.gz)" in missing.value.message
        with pytest.raises(RegistryUnavailable) as failed:
            await ref.pull("boom")
        assert failed.value.message.endswith(f"for {http_registry.url}/boom.tar.gz")
        await trio.to_thread.run_sync(http_registry.stop)
        with pytest.raises(RegistryUnavailable) as down:
            await ref.pull("other")
        assert down.value.message.startswith(f"registry unreachable at {http_registry.url}/")
        for error in (missing.value, failed.value, down.value):
            assert "pw-s3cret" not in error.message and "reader" not in error.message
        nursery.cancel_scope.cancel()
