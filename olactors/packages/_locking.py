"""``olactors lock``: resolve a function dir's declaration and write its ``ol.lock``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._declare import Declaration, read_declaration
from ._index import IndexOptions
from ._lock import Lock, check_lock, write_lock
from ._resolve import Resolution, resolve


@dataclass(frozen=True, slots=True)
class LockResult:
    """What :func:`lock_function_dir` did: the declaration it resolved, pip's
    resolution, the lock written and its path."""

    declaration: Declaration
    resolution: Resolution
    lock: Lock
    path: Path


def lock_function_dir(function_dir: Path, index: IndexOptions, timeout_s: float) -> LockResult:
    """Resolve what ``function_dir`` declares (ignoring any existing lock) and
    write the pins to ``function_dir/ol.lock`` atomically; blocks.

    A function declaring nothing gets a lock with no pins. Raises
    :class:`BadFunction` for a bad declaration and
    :class:`PackageResolutionFailed` when pip cannot resolve it; either way
    an existing lock is left untouched.
    """
    declaration = read_declaration(function_dir)
    resolution = resolve(declaration.texts(), index, timeout_s)
    lock = Lock(resolution.pins())
    check_lock(lock, declaration.requirements, "the resolution")
    path = write_lock(function_dir, lock.pins)
    return LockResult(declaration, resolution, lock, path)
