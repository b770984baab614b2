"""A state directory: small JSON documents changed atomically under one lock.

``state.dir`` names it (default ``<worker>/state``). Several workers may point
at the same directory (a shared host path, an NFSv4 or other filesystem with
working POSIX ``flock``, a Kubernetes ReadWriteMany volume): every change is a
read-modify-write under an exclusive ``flock`` on ``<dir>/.lock`` that ends in
``rename()`` of a fully written, fsynced file, so a reader sees the old
document or the new one, never half of one, and two writers never lose each
other's change. Readers take no lock; they notice a change by the file's
:class:`Stamp` (inode, size, mtime), which is cheap enough to check on every
cache period.

Documents are JSON objects; the directory is mode 0700 and each file 0600.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from .._files import write_atomically

#: Names a document may have (a file name, never a path).
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")


@dataclass(frozen=True)
class Stamp:
    """What changes when a document is replaced (``None`` fields: it does not exist)."""

    inode: int | None
    size: int | None
    mtime_ns: int | None


MISSING = Stamp(None, None, None)


@dataclass(frozen=True)
class StateDoc:
    """One document as read: its content and the stamp of the file it came from."""

    data: dict[str, Any]
    stamp: Stamp


def state_path(location: str, worker_dir: Path) -> Path:
    """The state directory ``state.dir`` names: ``""`` is ``<worker_dir>/state``;
    ``~`` is expanded; a relative path is relative to ``worker_dir``."""
    return worker_dir / (Path(location).expanduser() if location else Path("state"))


class StateDir:
    """The documents of one state directory (created, mode 0700, if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"state.dir {path}: cannot create it: {exc.strerror}") from None
        if not path.is_dir():
            raise ConfigError(f"state.dir {path}: not a directory")

    def _file(self, name: str) -> Path:
        if not name or not set(name) <= _NAME_CHARS or name.startswith("."):
            raise ValueError(f"bad state document name {name!r}")
        return self.path / f"{name}.json"

    def stamp(self, name: str) -> Stamp:
        """The document's current stamp (:data:`MISSING` if it does not exist)."""
        try:
            st = os.stat(self._file(name))
        except FileNotFoundError:
            return MISSING
        return Stamp(st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self, name: str) -> StateDoc:
        """The document (``{}`` if it does not exist yet). A document that is not
        a JSON object is a :class:`ConfigError` naming the file: it was written
        by something else, and guessing would lose data."""
        path = self._file(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return StateDoc({}, MISSING)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
        try:
            data = json.loads(raw)
        except ValueError:
            raise ConfigError(f"{path}: not valid JSON") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: not a JSON object")
        return StateDoc(data, Stamp(st.st_ino, st.st_size, st.st_mtime_ns))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def update(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> StateDoc:
        """Apply ``change`` to the current document and store its result, all
        under the directory's lock (blocking: call it in a worker thread).

        ``change`` gets a copy it may modify and returns the new document; if it
        raises, nothing is written. Returns the document as stored.
        """
        path = self._file(name)
        with self._locked():
            current = self.read(name).data
            new = change(json.loads(json.dumps(current)))
            if not isinstance(new, dict):
                raise TypeError("a state document must be a dict")
            data = json.dumps(new, sort_keys=True, indent=1).encode()
            write_atomically(path, data, mode=0o600, durable=True)
            return self.read(name)
