"""Is a zygote's process still fit to fork?  Inspected from the host, via /proc.

A process must not become a zygote when it has more than one thread (threads
are lost in fork, with whatever locks they held), a regular file open for
writing (siblings would share its offset and data), an open directory fd (a
way out of the child's chroot) or a listening socket (every child would
accept on it).  The host's view through ``/proc/<pid>`` covers native threads
and fds that the process could not see or would not report itself.

A verdict needs every entry read.  The one benign gap is an fd closed
between listing the fds and reading it (ENOENT on that fd's entries): it is
skipped.  Any other failure to read /proc, and the process exiting during
the inspection, raise :class:`InspectionFailed` (a :class:`SandboxError`: the
zygote build fails; it is not a verdict on the package): an unreadable entry
never counts as "fit".
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection

from .._errors import SandboxError

_LISTEN_TCP = "0A"
_UNIX_ACCEPTCON = 0x10000
#: What reading an entry of a process that exited (or a closed fd) fails with.
_GONE = (errno.ENOENT, errno.ESRCH)


class InspectionFailed(SandboxError):
    """The process could not be inspected, so no verdict was reached.

    ``exited`` is True when the process exited during the inspection (its
    /proc entries vanished), False for a real error reading /proc (``error``).
    """

    def __init__(self, pid: int, path: str, error: OSError, exited: bool) -> None:
        self.pid = pid
        self.path = path
        self.error = error
        self.exited = exited
        if exited:
            message = f"process {pid} exited while it was inspected ({path})"
        else:
            message = f"cannot inspect process {pid}: {path}: {error.strerror or error}"
        super().__init__(message)


def unfit_to_fork(
    pid: int, ignore_fds: Collection[object] = frozenset(), proc_root: str = "/proc"
) -> list[str]:
    """What makes process ``pid`` unfit to fork (empty: fit); ``ignore_fds``
    are the runtime's own (stdio and its channel to the worker).

    Raises :class:`InspectionFailed` when /proc cannot be read (or the
    process exits meanwhile).  ``proc_root`` is where procfs is mounted.
    """
    proc = f"{proc_root}/{pid}"
    inspector = _Inspector(pid, proc)
    problems = []
    threads = len(inspector.listdir(f"{proc}/task"))
    if threads > 1:
        problems.append(f"it runs {threads} threads")
    root = inspector.readlink(f"{proc}/root")
    sockets: dict[int, int] = {}  # inode -> fd, looked up in the tables only if any
    for name in sorted(inspector.listdir(f"{proc}/fd"), key=int):
        fd = int(name)
        if fd in ignore_fds:
            continue
        problem = _fd_problem(inspector, fd, root, sockets)
        if problem:
            problems.append(problem)
    if sockets:
        listening = _listening_socket_inodes(inspector)
        problems += [
            f"fd {fd} is a listening socket" for inode, fd in sockets.items() if inode in listening
        ]
    # The lists above are complete only if the process was alive throughout.
    inspector.readlink(f"{proc}/root")
    return problems


class _Inspector:
    """Reads one process's /proc entries; every failure raises InspectionFailed,
    except for an fd's entries, where ENOENT means "closed meanwhile" (None)."""

    def __init__(self, pid: int, proc: str) -> None:
        self.pid = pid
        self.proc = proc

    def _failed(self, path: str, exc: OSError) -> InspectionFailed:
        exited = exc.errno in _GONE and not self.alive()
        return InspectionFailed(self.pid, path, exc, exited=exited)

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except OSError as exc:
            raise self._failed(path, exc) from exc

    def readlink(self, path: str) -> str:
        try:
            return os.readlink(path)
        except OSError as exc:
            raise self._failed(path, exc) from exc

    def table(self, path: str) -> list[list[str]]:
        """The rows of a /proc/<pid>/net table; none if the kernel has no such
        table (say, IPv6 is disabled) while the process lives."""
        try:
            with open(path) as f:
                return [line.split() for line in f.readlines()[1:]]
        except OSError as exc:
            if exc.errno == errno.ENOENT and self.alive():
                return []
            raise self._failed(path, exc) from exc

    def fd_entry(self, fd: int) -> tuple[os.stat_result, str] | None:
        """stat and link target of ``fd``; None if it was closed meanwhile."""
        path = f"{self.proc}/fd/{fd}"
        try:
            return os.stat(path), os.readlink(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT and self.alive():
                return None  # closed between listing and reading
            raise self._failed(path, exc) from exc

    def fd_flags(self, fd: int) -> int | None:
        """The open flags of ``fd``; None if it was closed meanwhile."""
        path = f"{self.proc}/fdinfo/{fd}"
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("flags:"):
                        return int(line.split()[1], 8)
        except OSError as exc:
            if exc.errno == errno.ENOENT and self.alive():
                return None
            raise self._failed(path, exc) from exc
        raise InspectionFailed(self.pid, path, OSError(errno.EIO, "no flags line"), exited=False)

    def alive(self) -> bool:
        """Does the process still run?  (Its root link vanishes once it exited.)"""
        try:
            os.readlink(f"{self.proc}/root")
        except OSError:
            return False
        return True


def _fd_problem(inspector: _Inspector, fd: int, root: str, sockets: dict[int, int]) -> str | None:
    """What is wrong with ``fd``; a socket is noted in ``sockets`` for later."""
    entry = inspector.fd_entry(fd)
    if entry is None:
        return None  # closed meanwhile: nothing left to inherit
    st, target = entry
    if root != "/" and target.startswith(root + "/"):
        target = target[len(root) :]  # as the sandbox sees it
    elif target == root:
        target = "/"
    if stat.S_ISDIR(st.st_mode):
        return f"fd {fd} is an open directory ({target})"
    if stat.S_ISREG(st.st_mode):
        flags = inspector.fd_flags(fd)
        if flags is not None and flags & os.O_ACCMODE != os.O_RDONLY:
            return f"fd {fd} is a file open for writing ({target})"
    if stat.S_ISSOCK(st.st_mode):
        sockets[st.st_ino] = fd
    return None


def _listening_socket_inodes(inspector: _Inspector) -> set[int]:
    """Inodes of listening TCP and unix sockets in the process's network namespace."""
    proc = inspector.proc
    inodes = set()
    for table in ("tcp", "tcp6"):
        for fields in inspector.table(f"{proc}/net/{table}"):
            if len(fields) > 9 and fields[3] == _LISTEN_TCP:
                inodes.add(int(fields[9]))
    for fields in inspector.table(f"{proc}/net/unix"):
        if len(fields) > 6 and int(fields[3], 16) & _UNIX_ACCEPTCON:
            inodes.add(int(fields[6]))
    return inodes
