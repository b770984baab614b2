"""The syscalls a leaf's seccomp filter blocked, by name, per call.

A leaf's filter traps each syscall it denies (:mod:`olactors.sock.seccomp`);
the SIGSYS handler of ``libolsigsys.so`` inside the sandbox sets the
syscall's bit in a map file of :data:`MAP_BYTES` bytes in the sandbox's
scratch dir (:data:`MAP_NAME`, ``/host/blocked-syscalls`` inside) and makes
the call fail with EPERM, as the filter alone did before.  The map is shared
(``MAP_SHARED``) by every process of the sandbox: the leaf, its forked
children, and programs it execs (they inherit ``LD_PRELOAD``, see
:func:`sandbox_env`).

The worker creates the map before the leaf starts (:meth:`BlockedSyscalls.create`),
clears it before each call (:meth:`~BlockedSyscalls.reset`) and reads it after,
or after the sandbox died (:meth:`~BlockedSyscalls.read`).  It keeps its own
fd of the file and uses pread/pwrite, never a mapping: the sandbox owns the
scratch dir and may truncate or replace the file, which can only hide its
own syscalls, never fault or mislead the worker.  Allowed syscalls pay
nothing; a blocked one costs its caller a signal delivery inside the
sandbox, and the worker two small reads per call whatever it does (and a
write to clear the map after a call that blocked something).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pyseccomp

__all__ = [
    "LIBRARY",
    "MAP_BYTES",
    "MAP_NAME",
    "SANDBOX_LIBRARY",
    "BlockedSyscalls",
    "sandbox_env",
    "syscall_names",
]

#: Size of the map: one bit per syscall number (keep in sync with olsigsys.c).
MAP_BYTES = 128
#: A cleared map.
_CLEAR = bytes(MAP_BYTES)
#: The map's file name in a sandbox's scratch dir (``/host`` inside).
MAP_NAME = "blocked-syscalls"
#: The handler library on the host (built at install time by setup.py) ...
LIBRARY = str(Path(__file__).with_name("runtime") / "libolsigsys.so")
#: ... and where sandboxes see it (the runtime dir is bound at /runtime).
SANDBOX_LIBRARY = "/runtime/libolsigsys.so"


class BlockedSyscalls:
    """The map of one leaf, through the worker's own fd of its file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: What the map held when it was closed (read() answers it from then on).
        self.final: tuple[str, ...] = ()

    @classmethod
    def create(cls, scratch_fd: int, uid: int, gid: int) -> BlockedSyscalls:
        """Create the (cleared) map in the scratch dir ``scratch_fd``, owned by
        the leaf's ``uid``/``gid`` (-1: keep root) so its processes can map it.

        Raises OSError (e.g. FileExistsError if the name is taken)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(MAP_NAME, flags, 0o600, dir_fd=scratch_fd)
        try:
            os.ftruncate(fd, MAP_BYTES)
            if uid >= 0 or gid >= 0:
                os.fchown(fd, uid, gid)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def reset(self) -> None:
        """Clear the map (before a call).  It is almost always clear already
        (read after the last call, nothing blocked since): a read tells, and
        costs less than a write, which would also dirty the file's inode."""
        if self.fd >= 0 and os.pread(self.fd, MAP_BYTES, 0) != _CLEAR:
            os.pwrite(self.fd, _CLEAR, 0)

    def read(self) -> tuple[str, ...]:
        """Names of the syscalls blocked since the last :meth:`reset`, sorted
        (once closed: what the map held then, so a call whose sandbox died and
        was released is still answered)."""
        if self.fd < 0:
            return self.final
        try:
            return syscall_names(os.pread(self.fd, MAP_BYTES, 0))
        except OSError:
            return ()

    def close(self) -> None:
        """Keep the map's last contents (see :meth:`read`) and close the fd."""
        if self.fd >= 0:
            self.final = self.read()
            fd, self.fd = self.fd, -1
            os.close(fd)


def syscall_names(bitmap: bytes) -> tuple[str, ...]:
    """The native syscall names of the bits set in ``bitmap``, sorted
    (``"syscall_<nr>"`` for a number libseccomp does not know)."""
    if bitmap == _CLEAR or not any(bitmap):  # the first test is a memcmp: the usual case
        return ()
    names = {
        _syscall_name(index * 8 + bit)
        for index, byte in enumerate(bitmap[:MAP_BYTES])
        if byte
        for bit in range(8)
        if byte & (1 << bit)
    }
    return tuple(sorted(names))


@functools.cache
def _syscall_name(nr: int) -> str:
    try:
        name = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, nr)
    except ValueError:
        return f"syscall_{nr}"
    return name.decode() if isinstance(name, bytes) else str(name)


def sandbox_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the handler library first in ``LD_PRELOAD`` (a function's
    own LD_PRELOAD is kept after it): every dynamically linked program the
    sandbox runs then answers a blocked syscall with EPERM and names it."""
    own = env.get("LD_PRELOAD", "")
    return {**env, "LD_PRELOAD": f"{SANDBOX_LIBRARY}:{own}" if own else SANDBOX_LIBRARY}
