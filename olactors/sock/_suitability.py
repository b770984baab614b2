"""Is a zygote's process still fit to fork?  Inspected from the host, via /proc.

A process must not become a zygote when it has more than one thread (threads
are lost in fork, with whatever locks they held), a regular file open for
writing (siblings would share its offset and data), an open directory fd (a
way out of the child's chroot) or a listening socket (every child would
accept on it).  The host's view through ``/proc/<pid>`` covers native threads
and fds that the process could not see or would not report itself.
"""

from __future__ import annotations

import os
import stat

_LISTEN_TCP = "0A"
_UNIX_ACCEPTCON = 0x10000


def unfit_to_fork(pid: int, ignore_fds: set[object] = frozenset()) -> list[str]:
    """What makes process ``pid`` unfit to fork (empty: fit); ``ignore_fds``
    are the runtime's own (stdio and its channel to the worker)."""
    proc = f"/proc/{pid}"
    problems = []
    try:
        threads = len(os.listdir(f"{proc}/task"))
    except OSError as exc:
        return [f"cannot inspect process {pid}: {exc.strerror}"]
    if threads > 1:
        problems.append(f"it runs {threads} threads")
    try:
        root = os.readlink(f"{proc}/root")
    except OSError:
        root = "/"
    sockets: dict[int, int] = {}  # inode -> fd, looked up in the tables only if any
    for name in sorted(os.listdir(f"{proc}/fd"), key=int):
        fd = int(name)
        if fd in ignore_fds:
            continue
        problem = _fd_problem(proc, fd, root, sockets)
        if problem:
            problems.append(problem)
    if sockets:
        listening = _listening_socket_inodes(proc)
        problems += [
            f"fd {fd} is a listening socket" for inode, fd in sockets.items() if inode in listening
        ]
    return problems


def _fd_problem(proc: str, fd: int, root: str, sockets: dict[int, int]) -> str | None:
    """What is wrong with ``fd``; a socket is noted in ``sockets`` for later."""
    path = f"{proc}/fd/{fd}"
    try:
        st = os.stat(path)
        target = os.readlink(path)
    except OSError:
        return None  # closed meanwhile
    if root != "/" and target.startswith(root + "/"):
        target = target[len(root) :]  # as the sandbox sees it
    elif target == root:
        target = "/"
    if stat.S_ISDIR(st.st_mode):
        return f"fd {fd} is an open directory ({target})"
    if stat.S_ISREG(st.st_mode) and _open_for_writing(proc, fd):
        return f"fd {fd} is a file open for writing ({target})"
    if stat.S_ISSOCK(st.st_mode):
        sockets[st.st_ino] = fd
    return None


def _open_for_writing(proc: str, fd: int) -> bool:
    try:
        with open(f"{proc}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
    except OSError:
        pass
    return False


def _listening_socket_inodes(proc: str) -> set[int]:
    """Inodes of listening TCP and unix sockets in the process's network namespace."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for fields in _table(f"{proc}/net/{table}"):
            if len(fields) > 9 and fields[3] == _LISTEN_TCP:
                inodes.add(int(fields[9]))
    for fields in _table(f"{proc}/net/unix"):
        if len(fields) > 6 and int(fields[3], 16) & _UNIX_ACCEPTCON:
            inodes.add(int(fields[6]))
    return inodes


def _table(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.split() for line in f.readlines()[1:]]
    except OSError:
        return []
