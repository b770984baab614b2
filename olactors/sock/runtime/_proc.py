"""ctypes helpers for the zygote fork path (stdlib only; runs inside sandboxes).

``clone_into_namespaces`` is ``os.fork`` with namespace flags: CPython's own
before/after-fork hooks run around a raw ``clone`` syscall, so the child is PID
1 of a fresh PID namespace without a second fork.  It is only safe in a
single-threaded process, which is exactly what a suitable zygote is.
"""

from __future__ import annotations

import ctypes
import os
import platform

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
SANDBOX_NAMESPACES = CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
_SIGCHLD = 17
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}[platform.machine()]

# PyDLL keeps the GIL held across the call, as os.fork does.
_libc = ctypes.PyDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.syscall.argtypes = [ctypes.c_long] * 6
_libc.chroot.argtypes = [ctypes.c_char_p]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_api = ctypes.pythonapi


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def clone_into_namespaces(flags: int = SANDBOX_NAMESPACES) -> int:
    """Fork into new namespaces; returns the child's pid (as seen here) or 0 in the child."""
    _api.PyOS_BeforeFork()
    pid = _libc.syscall(_SYS_CLONE, flags | _SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        _api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    _api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def chroot_to_fd(root_fd: int) -> None:
    """Make the directory ``root_fd`` this process's root and cwd."""
    os.fchdir(root_fd)
    _check(_libc.chroot(b"."), "chroot")
    os.chdir("/")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with no supplementary groups (capabilities drop with uid 0)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def set_no_new_privs() -> None:
    _check(_libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
