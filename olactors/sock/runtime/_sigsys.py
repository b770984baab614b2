"""Blocked-syscall recording inside sandboxes (stdlib only).

A leaf's seccomp filter traps every syscall it denies; the SIGSYS handler of
``libolsigsys.so`` (next to this file, so at ``/runtime`` in a sandbox) sets
the syscall's bit in the map file ``/host/blocked-syscalls`` the worker reads,
and makes the call fail with EPERM.  Fresh sandboxes load the library through
``LD_PRELOAD`` (its constructor installs the handler and maps the file).  A
zygote loads it with :func:`load` before it forks; a forked leaf calls
:func:`attach` once it is in its own root (so ``/host`` is its own scratch
dir) and before it installs the leaf filter, so the first trapped call is
already recorded in its own map.
"""

from __future__ import annotations

import ctypes
import os

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libolsigsys.so")
MAP_PATH = "/host/blocked-syscalls"

_library: ctypes.CDLL | None = None


def load() -> None:
    """Load the library (once; a no-op when LD_PRELOAD already did): its
    constructor installs the SIGSYS handler.  Raises OSError if it is missing."""
    global _library
    if _library is None:
        _library = ctypes.CDLL(LIBRARY, use_errno=True)


def attach(path: str = MAP_PATH) -> None:
    """Install the handler and record into the map at ``path`` from now on
    (dropping any map inherited from the parent).  Raises OSError if the map
    cannot be opened: the worker creates it before every leaf starts."""
    load()
    assert _library is not None
    if _library.olsigsys_install() != 0 or _library.olsigsys_attach(os.fsencode(path)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"blocked-syscall map {path}: {os.strerror(err)}")
