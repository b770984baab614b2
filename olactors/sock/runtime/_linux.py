"""Thin ctypes wrappers over Linux syscalls, for code running INSIDE sandboxes.

Stdlib only: this file runs where there is no site-packages, so it must never
import pyseccomp, trio or olactors. Every wrapper raises :class:`OSError`
carrying the C ``errno`` on failure (like the ``os`` module does).

Helpers:

- :func:`install_seccomp` — set ``no_new_privs`` and install a classic-BPF
  seccomp filter (as compiled by ``olactors.sock.seccomp.compile_profile``).
"""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = ["install_seccomp"]

_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    """The C library of this process (loaded on first use, errno preserved)."""
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


# ---------------------------------------------------------------------------
# seccomp
# ---------------------------------------------------------------------------

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
_SOCK_FILTER_SIZE = 8  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
_BPF_MAXINSNS = 4096

# seccomp(2) numbers for the architectures we run on; elsewhere prctl is used.
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277}


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(bpf: bytes) -> None:
    """Install the classic-BPF seccomp filter ``bpf`` on the calling process.

    ``bpf`` is a raw ``struct sock_filter`` array. Sets ``PR_SET_NO_NEW_PRIVS``
    first (required for unprivileged callers, and a good idea for all), then
    installs the filter with ``seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)`` so
    every thread of the process gets it (falling back to
    ``prctl(PR_SET_SECCOMP)``, which covers the calling thread only, on
    architectures without a known syscall number). Filters stack: a later
    filter can only restrict further. Irreversible.

    Raises :class:`ValueError` if ``bpf`` is not a whole, non-empty program of
    at most 4096 instructions, :class:`OSError` (with ``errno``) if the kernel
    refuses it.
    """
    data = bytes(bpf)
    count, rest = divmod(len(data), _SOCK_FILTER_SIZE)
    if rest or not 0 < count <= _BPF_MAXINSNS:
        raise ValueError(f"not a BPF program: {len(data)} bytes")
    libc = _libc()
    buffer = ctypes.create_string_buffer(data, len(data))
    prog = _SockFprog(count, ctypes.cast(buffer, ctypes.c_void_p))

    # libc["name"] gives a fresh function object, so setting argtypes here
    # cannot clash with other helpers using the same C function.
    prctl = libc["prctl"]
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise_errno("prctl(PR_SET_NO_NEW_PRIVS)")

    nr = _NR_SECCOMP.get(os.uname().machine)
    if nr is not None:
        syscall = libc["syscall"]
        syscall.restype = ctypes.c_long
        syscall.argtypes = [ctypes.c_long] * 4
        ret = syscall(nr, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                      ctypes.addressof(prog))  # fmt: skip
        if ret > 0:  # TSYNC: id of a thread that could not be synchronised
            raise OSError(errno.EBUSY, f"seccomp: thread {ret} could not be synchronised")
        if ret < 0:
            _raise_errno("seccomp(SECCOMP_SET_MODE_FILTER)")
        return
    ptr = ctypes.addressof(prog)
    if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ptr, 0, 0) != 0:
        _raise_errno("prctl(PR_SET_SECCOMP)")
