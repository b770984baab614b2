"""ctypes helpers for the zygote fork path (stdlib only; runs inside sandboxes).

``clone_into_namespaces`` is ``os.fork`` with namespace flags: CPython's own
before/after-fork hooks run around a raw ``clone`` syscall, so the child is PID
1 of a fresh PID namespace without a second fork.  It is only safe in a
single-threaded process, which is exactly what a suitable zygote is.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SANDBOX_NAMESPACES = CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
_SIGCHLD = 17
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}[platform.machine()]
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}[platform.machine()]
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_MAX = 64

# PyDLL keeps the GIL held across the call, as os.fork does.
_libc = ctypes.PyDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.syscall.argtypes = [ctypes.c_long] * 6
_libc.chroot.argtypes = [ctypes.c_char_p]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_api = ctypes.pythonapi
# capset(2)'s arguments, made once (creating ctypes array types costs ~100 us)
_CAP_HEADER = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
_CAP_NONE = (ctypes.c_uint32 * 6)()  # two of {effective, permitted, inheritable}, all zero


def _bounding_set() -> list:
    """The capabilities in this process's bounding set."""
    held = []
    for cap in range(_CAP_MAX):
        rc = _libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0)
        if rc < 0:
            break  # beyond the kernel's last capability
        if rc == 1:
            held.append(cap)
    return held


#: Read once, when a zygote imports this module: its children hold at most
#: these, so a leaf child drops only them (a handful of calls, not one per
#: capability the kernel knows).
_BOUNDING = _bounding_set()


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


def join_network_namespace(fd: int) -> None:
    """Enter the network namespace ``fd`` refers to (the zygote's filter allows
    ``setns`` for network namespaces only; a leaf's own filter never)."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with no supplementary groups and no capability in
    any set: the bounding set is emptied first (that needs CAP_SETPCAP, which
    the uid change takes away), the uid change empties permitted and
    effective, then inheritable and ambient are cleared."""
    for cap in _BOUNDING:
        _check(_libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    header, data = ctypes.addressof(_CAP_HEADER), ctypes.addressof(_CAP_NONE)
    _check(_libc.syscall(_SYS_CAPSET, header, data, 0, 0, 0), "capset")
    if _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        if ctypes.get_errno() != errno.EINVAL:  # a kernel without ambient capabilities
            _check(-1, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


def set_no_new_privs() -> None:
    _check(_libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
