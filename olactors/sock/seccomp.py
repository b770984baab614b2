"""seccomp profiles for SOCK sandboxes: load the allowlists, compile them to BPF.

The allowlists live in ``olactors/config/seccomp.yaml`` (``common`` + per-kind extras);
this module adds the rules that need code: argument filters on ``clone``,
``unshare`` and ``mknod``, ``clone3`` => ``ENOSYS``, and the default action
for everything else, which always makes the call fail with ``EPERM``:

* zygotes: ``SECCOMP_RET_ERRNO(EPERM)``;
* leaves: ``SECCOMP_RET_TRAP``, answered inside the sandbox by the SIGSYS
  handler of ``libolsigsys.so`` (olactors/native/olsigsys.c), which records
  the syscall's number for the worker (:mod:`olactors.sock._blocked`) and
  makes the call return ``-EPERM``.  TRAP outranks ERRNO, so a leaf forked
  from a zygote (whose filter it inherits, and the kernel applies the
  highest-precedence action of all stacked filters) gets the trap too for
  every syscall its own filter denies.  A program without the handler
  (statically linked, or exec'd without LD_PRELOAD) is killed by SIGSYS.

Syscalls of a foreign ABI (i386 via int 0x80, x32) fail with ``EPERM`` and
are not named.  The result is a raw classic-BPF program (an array of
``struct sock_filter``) for the native architecture, which a freshly spawned
process installs itself (``prctl(PR_SET_SECCOMP)`` from C, or
``olactors.sock.runtime._linux.install_seccomp`` inside the sandbox).

Public API::

    load_profiles(path=None) -> {"zygote": [...], "leaf": [...]}
    compile_profile(kind, path=None) -> bytes     # cached per (kind, path)
    compile_profiles(path=None) -> {"zygote": bytes, "leaf": bytes}  # checked
    check_program(kind, program) -> bytes

All raise :class:`~olactors._errors.ConfigError` for a malformed file; the
message names the offending key or syscall.  A sandbox never runs without its
filter: an empty, missing or malformed program is a ConfigError when the
pool starts (:func:`compile_profiles`), never a sandbox spawned unfiltered.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import pyseccomp
import yaml

from olactors._errors import ConfigError

__all__ = [
    "DEFAULT_PATH",
    "KINDS",
    "ProfileKind",
    "check_program",
    "compile_profile",
    "compile_profiles",
    "load_profiles",
]

ProfileKind = Literal["zygote", "leaf"]
KINDS: tuple[ProfileKind, ...] = ("zygote", "leaf")

#: The SIGSYS handler that answers the leaf filter's traps (see _blocked.py).
SIGSYS_LIBRARY = Path(__file__).with_name("runtime") / "libolsigsys.so"

#: The allowlists shipped with the repository.
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "config" / "seccomp.yaml"

_TOP_LEVEL_KEYS = ("common", "zygote", "leaf")

# libseccomp's __NR_SCMP_ERROR: what seccomp_syscall_resolve_name_arch returns for
# a name it does not know (names of other architectures map to other negatives).
_NR_SCMP_ERROR = -1

# Namespace flags (linux/sched.h). CLONE_NEWTIME shares its bit with CSIGNAL for
# clone(2), where an exit signal >= 128 is invalid anyway, so masking it is safe.
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

ALL_NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWTIME
)

#: Namespace flags each kind may pass to clone/unshare; every other one => EPERM.
ALLOWED_NAMESPACE_FLAGS: dict[str, int] = {
    "zygote": CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC,
    "leaf": 0,
}

_S_IFMT = 0o170000
#: File types mknod/mknodat may create (0 means "regular file" to the kernel).
_MKNOD_TYPES = (0, 0o100000, 0o010000, 0o140000)  # -, S_IFREG, S_IFIFO, S_IFSOCK
#: Index of the ``mode`` argument of the filtered mknod calls.
_MKNOD_MODE_ARG = {"mknod": 1, "mknodat": 2}
#: The namespace type each kind may join with ``setns(fd, type)`` (0: no setns
#: at all).  ``setns`` stays in FORBIDDEN_EVERYWHERE: no yaml may list it.
SETNS_ALLOWED: dict[str, int] = {"zygote": CLONE_NEWNET, "leaf": 0}

#: Index of the ``flags`` argument of the filtered namespace-creating calls.
_NS_FLAGS_ARG = {"clone": 0, "unshare": 0}  # clone(flags, ...) on every arch

#: struct sock_filter is 8 bytes; the kernel takes at most BPF_MAXINSNS of them.
_INSN_BYTES = 8
_BPF_MAXINSNS = 4096

#: Syscalls that are compiled to a fixed action and must not be listed.
_NEVER_LISTED = {"clone3": "clone3 always fails with ENOSYS (rule in seccomp.py)"}

#: Syscalls no sandbox may ever have, whatever the yaml says.
FORBIDDEN_EVERYWHERE = frozenset(
    {
        "mount", "umount", "umount2", "pivot_root", "setns", "move_mount", "open_tree",
        "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
        "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
        "process_madvise", "process_mrelease",
        "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
        "io_uring_register", "fanotify_init", "fanotify_mark",
        "keyctl", "add_key", "request_key",
        "init_module", "finit_module", "delete_module", "create_module",
        "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
        "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
        "open_by_handle_at", "name_to_handle_at", "quotactl", "quotactl_fd",
        "ioperm", "iopl", "modify_ldt", "lookup_dcookie", "syslog", "vhangup",
        "uselib", "_sysctl", "nfsservctl",
    }
)  # fmt: skip

#: Syscalls only zygotes may have: never in ``common`` or ``leaf``.
ZYGOTE_ONLY = frozenset(
    {
        "chroot", "unshare", "sethostname", "setdomainname",
        "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
        "setfsuid", "setfsgid", "setgroups",
    }
)  # fmt: skip


def load_profiles(path: str | os.PathLike[str] | None = None) -> dict[str, list[str]]:
    """Load and validate the allowlists; return the full list per profile kind.

    Returns ``{"zygote": common + zygote, "leaf": common + leaf}``, each sorted
    and without duplicates. Raises :class:`ConfigError` naming the culprit for:
    a missing or unreadable file, invalid YAML, a missing or unknown top-level
    key, a list that is not a list of strings, a duplicate, a syscall name
    libseccomp does not know, ``clone3``, a syscall forbidden in every sandbox,
    or a zygote-only syscall in ``common``/``leaf``, or a ``leaf`` syscall
    that zygotes lack (a forked leaf inherits its zygote's filter, so the
    zygote's ERRNO would deny it there, unnamed).
    """
    source = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"seccomp: cannot read {source}: {exc.strerror or exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"seccomp: {source} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"seccomp: {source} must be a mapping with keys {_TOP_LEVEL_KEYS}")

    for key in document:
        if key not in _TOP_LEVEL_KEYS:
            raise ConfigError(
                f"seccomp: unknown key {key!r} in {source} (expected one of {_TOP_LEVEL_KEYS})"
            )
    lists = {key: _syscall_list(document, key) for key in _TOP_LEVEL_KEYS}

    for key in ("common", "leaf"):
        for name in lists[key]:
            if name in ZYGOTE_ONLY:
                raise ConfigError(f"seccomp.{key}: {name!r} is allowed in zygotes only")
    for name in lists["leaf"]:
        if name not in lists["common"] and name not in lists["zygote"]:
            raise ConfigError(
                f"seccomp.leaf: {name!r} must be allowed in zygotes too (forked leaves "
                "inherit the zygote's filter): list it in common instead"
            )
    return {
        "zygote": sorted({*lists["common"], *lists["zygote"]}),
        "leaf": sorted({*lists["common"], *lists["leaf"]}),
    }


def compile_profile(kind: ProfileKind, path: str | os.PathLike[str] | None = None) -> bytes:
    """Compile profile ``kind`` ("zygote" or "leaf") to raw BPF for the native arch.

    The bytes are a ``struct sock_filter`` array (8 bytes per instruction)
    ready for ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &sock_fprog)``.
    The result is cached per ``(kind, path)``; the file is read once.
    Raises :class:`ConfigError` for a bad file, :class:`ValueError` for an
    unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown seccomp profile kind {kind!r} (expected one of {KINDS})")
    source = Path(path).resolve() if path is not None else DEFAULT_PATH
    return _compile_cached(kind, source)


def compile_profiles(
    path: str | os.PathLike[str] | None = None,
) -> dict[ProfileKind, bytes]:
    """Every kind's program, each checked by :func:`check_program`.

    What a sandbox pool calls once when it starts: a bad program stops the
    pool (and the worker) there, with a :class:`ConfigError` naming the kind,
    as does a missing ``libolsigsys.so`` (without its SIGSYS handler a leaf's
    first blocked syscall would kill it instead of failing with EPERM).
    """
    if not os.path.isfile(SIGSYS_LIBRARY):
        raise ConfigError(
            f"seccomp: {SIGSYS_LIBRARY} is missing (built at install time by setup.py; "
            "reinstall olactors): leaves need its SIGSYS handler"
        )
    return {kind: check_program(kind, compile_profile(kind, path)) for kind in KINDS}


def check_program(kind: str, program: bytes | None) -> bytes:
    """``program`` if it is a whole, non-empty BPF program that fits the kernel.

    Raises :class:`ConfigError` otherwise: an empty or missing program would
    mean sandboxes without a seccomp filter, which is never acceptable.
    """
    if not program:
        raise ConfigError(
            f"seccomp: the {kind} program is empty or missing; "
            f"refusing to start {kind} sandboxes without their filter"
        )
    if len(program) % _INSN_BYTES:
        raise ConfigError(
            f"seccomp: the {kind} program is malformed ({len(program)} bytes, "
            f"not whole {_INSN_BYTES}-byte instructions)"
        )
    if len(program) // _INSN_BYTES > _BPF_MAXINSNS:
        raise ConfigError(
            f"seccomp.{kind}: compiled filter exceeds {_BPF_MAXINSNS} BPF instructions"
        )
    return program


@functools.cache
def _compile_cached(kind: str, source: Path) -> bytes:
    allowed = load_profiles(source)[kind]
    flt = _build_filter(kind, allowed)
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        program = out.read()
    return check_program(kind, program)


#: What a denied syscall gets, per kind (see the module docstring): leaves trap
#: so the syscall is named (the SIGSYS handler answers EPERM), zygotes fail it.
DENY_ACTION: dict[str, int] = {"zygote": pyseccomp.ERRNO(errno.EPERM), "leaf": pyseccomp.TRAP}


def _build_filter(kind: str, allowed: Iterable[str]) -> pyseccomp.SyscallFilter:
    flt = pyseccomp.SyscallFilter(DENY_ACTION[kind])
    # Syscalls of a foreign ABI (i386 via int 0x80, x32) fail too instead of
    # killing; not trapped: their numbers are not the native ones a map names.
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.ERRNO(errno.EPERM))
    try:  # binary-tree dispatch: fewer instructions per syscall (libseccomp >= 2.5)
        flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    except OSError:
        pass

    forbidden_ns = ALL_NAMESPACE_FLAGS & ~ALLOWED_NAMESPACE_FLAGS[kind]
    for name in allowed:
        if name in _NS_FLAGS_ARG:
            arg = pyseccomp.Arg(_NS_FLAGS_ARG[name], pyseccomp.MASKED_EQ, forbidden_ns, 0)
            flt.add_rule(pyseccomp.ALLOW, name, arg)
        elif name in _MKNOD_MODE_ARG:
            for file_type in _MKNOD_TYPES:
                arg = pyseccomp.Arg(_MKNOD_MODE_ARG[name], pyseccomp.MASKED_EQ, _S_IFMT, file_type)
                flt.add_rule(pyseccomp.ALLOW, name, arg)
        else:
            flt.add_rule(pyseccomp.ALLOW, name)
    if SETNS_ALLOWED[kind]:
        # A forked child enters its function's network namespace (the zygote is
        # shared by many functions); setns(fd, 0) would take any kind of namespace.
        arg = pyseccomp.Arg(1, pyseccomp.EQ, SETNS_ALLOWED[kind])
        flt.add_rule(pyseccomp.ALLOW, "setns", arg)
    # Its flags live in a struct in memory that seccomp cannot read: make libc
    # fall back to clone(2), whose flags the rule above does inspect.
    flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    return flt


def _syscall_list(document: dict[object, object], key: str) -> list[str]:
    if key not in document:
        raise ConfigError(f"seccomp: missing key {key!r} (use `{key}: []` for an empty list)")
    value = document[key]
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ConfigError(f"seccomp.{key}: must be a list of syscall names")
    seen: set[str] = set()
    for name in value:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"seccomp.{key}: {name!r} is not a syscall name")
        if name in seen:
            raise ConfigError(f"seccomp.{key}: duplicate syscall {name!r}")
        seen.add(name)
        if name in _NEVER_LISTED:
            raise ConfigError(f"seccomp.{key}: {name!r} must not be listed: {_NEVER_LISTED[name]}")
        if name in FORBIDDEN_EVERYWHERE:
            raise ConfigError(f"seccomp.{key}: {name!r} is forbidden in every sandbox")
        if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) == _NR_SCMP_ERROR:
            raise ConfigError(f"seccomp.{key}: unknown syscall {name!r}")
    return list(value)
