"""Publishing functions to the shared code store (``olactors install/uninstall
--registry URL``).

The store is a plain HTTP server (nginx with WebDAV PUT/DELETE, see
:mod:`olactors.cluster.nginx`) holding ``<name>.tar.gz``, which workers poll
with conditional GETs (``registry.location: URL``), and ``index.json``, the
listing of the published functions::

    {"functions": {"echo": {"archive": "echo.tar.gz", "sha256": "...",
                            "bytes": 1234, "published_at": "2026-...Z"}}}

Installing PUTs the archive, then the updated index, so the index never
names an archive that is not there; uninstalling removes the name from the
index, then DELETEs the archive.  The index is read, changed and written
back under a lock, so publishers at the same moment never lose each other's
entries: the lock is the collection ``index.lock/``, made with WebDAV
``MKCOL`` (which fails while it exists) and removed with ``DELETE``.  A lock
seen held for :data:`LOCK_STALE_S` on end is taken as left by a publisher
that died, and removed.  A store that does not take ``MKCOL`` (an nginx.conf
from before the lock) gets its index updated without one, with a warning.
Publishing and removing *the same* function at the same moment from two
places leaves whichever came last.

Credentials for HTTP basic auth are read from ``--registry-auth FILE``: one
line ``user:password`` (keep it mode 0600).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from .._errors import FunctionNotFound, OlactorsError
from .._names import validate_function_name

INDEX = "index.json"
LOCK = "index.lock/"
TIMEOUT_S = 60.0
#: A lock held this long on end, while we wait for it, was left by a publisher
#: that died (an index update under it takes milliseconds).
LOCK_STALE_S = 30.0
LOCK_POLL_S = 0.05

log = logging.getLogger("olactors.cluster")


@dataclass(frozen=True, slots=True)
class Store:
    """A code store at ``base`` (an http(s) URL), with optional basic auth."""

    base: str
    auth: tuple[str, str] | None = None

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


def open_store(url: str, auth_file: Path | None) -> Store:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OlactorsError(f"--registry {url!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise OlactorsError(f"--registry {url!r}: no query or fragment, only a base URL")
    if "@" in parts.netloc:
        # Not echoed: the credentials would be printed, and they sit in the
        # shell's history and every process listing already.
        raise OlactorsError(
            "--registry: no user or password in the URL; put user:password in a file "
            "and pass --registry-auth FILE"
        )
    return Store(url.rstrip("/"), None if auth_file is None else read_auth(auth_file))


def read_auth(path: Path) -> tuple[str, str]:
    """``user:password`` from the first line of ``path``."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise OlactorsError(f"--registry-auth {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise OlactorsError(f"--registry-auth {path}: not UTF-8 text") from None
    user, sep, password = (lines[0].strip() if lines else "").partition(":")
    if not sep or not user or not password:
        raise OlactorsError(f"--registry-auth {path}: the first line must be user:password")
    return user, password


def _request(
    client: httpx.Client, store: Store, method: str, name: str, content: bytes | None = None
) -> httpx.Response:
    url = store.url(name)
    try:
        return client.request(method, url, content=content, auth=store.auth)
    except httpx.HTTPError as exc:
        raise OlactorsError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from None


def _refused(response: httpx.Response) -> OlactorsError:
    request = response.request
    hint = ""
    if response.status_code in (401, 403):
        hint = " (is this host allowed to publish, are the --registry-auth credentials right?)"
    return OlactorsError(
        f"the code store refused {request.method} {request.url}: HTTP {response.status_code}{hint}"
    )


def read_index(client: httpx.Client, store: Store) -> dict[str, dict[str, Any]]:
    """The store's listing (empty when it has no index yet)."""
    response = _request(client, store, "GET", INDEX)
    if response.status_code == 404:
        return {}
    if response.status_code != 200:
        raise _refused(response)
    try:
        index = response.json()
        functions = index["functions"]
        if not isinstance(functions, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise OlactorsError(
            f"{store.url(INDEX)} is not an olactors index ({{'functions': {{...}}}}); "
            "fix or remove it"
        ) from None
    return functions


def _write_index(client: httpx.Client, store: Store, functions: dict[str, Any]) -> None:
    body = json.dumps({"functions": dict(sorted(functions.items()))}, indent=2).encode()
    response = _request(client, store, "PUT", INDEX, body + b"\n")
    if response.status_code not in (200, 201, 204):
        raise _refused(response)


@contextmanager
def _index_locked(client: httpx.Client, store: Store) -> Iterator[None]:
    """Hold the store's index lock (see the module doc) for the block."""
    locked = _take_lock(client, store)
    try:
        yield
    finally:
        if locked:
            _release_lock(client, store)


def _release_lock(client: httpx.Client, store: Store) -> None:
    """Remove the lock; a failure is logged (the lock goes stale and is
    removed by the next publisher), never raised over the block's own outcome."""
    try:
        response = _request(client, store, "DELETE", LOCK)
    except OlactorsError as exc:
        log.warning("could not remove the index lock: %s", exc.message)
        return
    if response.status_code not in (200, 204, 404):
        log.warning("could not remove the index lock %s: %s", store.url(LOCK), response)


def _take_lock(client: httpx.Client, store: Store) -> bool:
    """Take the lock; False when the store does not take MKCOL (no lock)."""
    waited_since = time.monotonic()
    absent = 0  # MKCOL refused in a row while the lock was not there
    while True:
        response = _request(client, store, "MKCOL", LOCK)
        if response.status_code == 201:
            return True
        if response.status_code != 405:  # 405: it exists, or MKCOL is not allowed
            raise _refused(response)
        if _request(client, store, "GET", LOCK).status_code == 404:
            # Released between the two requests, or MKCOL is not allowed: only
            # the second time in a row does it mean the latter.
            absent += 1
            if absent == 1:
                continue
            log.warning(
                "the code store %s does not take MKCOL: its index is updated without a lock "
                "(regenerate its nginx.conf with `olactors cluster nginx-config`)",
                store.base,
            )
            return False
        absent = 0
        if time.monotonic() - waited_since > LOCK_STALE_S:
            log.warning("removing the index lock %s: held too long", store.url(LOCK))
            gone = _request(client, store, "DELETE", LOCK)
            if gone.status_code not in (200, 204, 404):
                raise _refused(gone)
            waited_since = time.monotonic()
            continue
        time.sleep(LOCK_POLL_S * (1 + random.random()))


def publish(store: Store, name: str, archive: bytes) -> dict[str, Any]:
    """PUT ``<name>.tar.gz``, then list it in the index; the index entry."""
    validate_function_name(name)
    with httpx.Client(timeout=TIMEOUT_S) as client:
        functions = read_index(client, store)  # refuse a broken index before writing
        response = _request(client, store, "PUT", f"{name}.tar.gz", archive)
        if response.status_code not in (200, 201, 204):
            raise _refused(response)
        entry = {
            "archive": f"{name}.tar.gz",
            "sha256": hashlib.sha256(archive).hexdigest(),
            "bytes": len(archive),
            "published_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        with _index_locked(client, store):
            functions = read_index(client, store)
            functions[name] = entry
            _write_index(client, store, functions)
    return entry


def unpublish(store: Store, name: str) -> None:
    """Drop ``name`` from the index, then DELETE its archive;
    :class:`FunctionNotFound` when the store has neither."""
    validate_function_name(name)
    with httpx.Client(timeout=TIMEOUT_S) as client, _index_locked(client, store):
        functions = read_index(client, store)
        listed = functions.pop(name, None) is not None
        if listed:
            _write_index(client, store, functions)
        response = _request(client, store, "DELETE", f"{name}.tar.gz")
        if response.status_code == 404:
            if not listed:
                raise FunctionNotFound(f"function {name!r} is not in the code store {store.base}")
        elif response.status_code not in (200, 204):
            raise _refused(response)
