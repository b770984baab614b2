"""Typed wrapper over the cffi native layer (``_olnative``).

Every failure raises :class:`NativeError`, an :class:`OSError` subclass that
carries ``errno`` and says what was being done (which path, which pid, which
spawn step).  Nothing here touches trio; all calls are short system calls.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ._olnative import ffi, lib

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SANDBOX_NAMESPACES = CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC

# Index = err_step reported by ol_spawn (keep in sync with olnative.c).
SPAWN_STEPS = (
    "none",
    "join cgroup",
    "join network namespace",
    "set hostname",
    "chroot",
    "set up file descriptors",
    "drop uid/gid",
    "prctl",
    "install seccomp filter",
    "execve",
    "clone",
    "parent exited before the child could follow it",
    "mount /proc",
    "drop capabilities",
    "new session",
)


class NativeError(OSError):
    """A native call failed: ``errno`` is set, ``doing`` says what failed."""

    def __init__(self, err: int, doing: str) -> None:
        super().__init__(err, f"{doing}: {os.strerror(err)}")
        self.doing = doing


def _check(rc: int, doing: str) -> int:
    if rc < 0:
        raise NativeError(ffi.errno or _errno.EIO, doing)
    return rc


@dataclass(frozen=True, slots=True)
class ProcMount:
    """A procfs to mount at ``target`` the way Docker does: each of
    ``masked`` (full paths below ``target``) covered, a directory by an empty
    read-only tmpfs and a file by ``/dev/null``; each of ``readonly`` bound
    read-only onto itself.  Paths the kernel's procfs lacks are skipped.  The
    procfs itself is ``nosuid,nodev,noexec``."""

    target: str
    masked: tuple[str, ...] = ()
    readonly: tuple[str, ...] = ()


def _proc_spec(mount: ProcMount, keep: list[object]) -> object:
    """The C ``struct ol_proc_spec`` for ``mount`` (what it points to is kept in ``keep``)."""

    def strings(paths: tuple[str, ...]) -> object:
        items = [ffi.new("char[]", path.encode()) for path in paths]
        keep.extend(items)
        array = ffi.new("char *[]", items or [ffi.NULL])
        keep.append(array)
        return array

    spec = ffi.new("struct ol_proc_spec *")
    target = ffi.new("char[]", mount.target.encode())
    keep.append(target)
    spec.target = target
    spec.masked = strings(mount.masked)
    spec.n_masked = len(mount.masked)
    spec.readonly = strings(mount.readonly)
    spec.n_readonly = len(mount.readonly)
    keep.append(spec)
    return spec


def mount_proc(mount: ProcMount, pidns_fd: int, *, via_helper: bool = False) -> None:
    """Mount the procfs of the PID namespace ``pidns_fd`` (an ``ns/pid`` fd)
    as ``mount`` describes, in this process's mount namespace.

    The kernel's ``pidns`` option names the namespace (:func:`proc_pidns_option`);
    ``via_helper`` is for kernels without it: a short-lived helper process is
    created in the namespace, only to call ``fsopen`` there.  Raises NativeError.
    """
    keep: list[object] = []
    spec = _proc_spec(mount, keep)
    _check(lib.ol_mount_proc(spec, pidns_fd, int(via_helper)), f"mount /proc on {mount.target}")


def proc_pidns_option() -> bool:
    """Does this kernel's procfs take the ``pidns`` option (Linux 6.18)?"""
    return bool(lib.ol_proc_pidns_option())


@dataclass(frozen=True, slots=True)
class SpawnSpec:
    """Everything a fresh sandbox process needs.  The child is created in new
    PID/UTS/IPC namespaces (``clone_flags``), then, in this order before
    ``execve``: joins its cgroups, leads a new session, joins ``netns_fd``, sets the hostname,
    mounts ``proc`` (a procfs of its own PID namespace, as PID 1 of it),
    chroots to ``root_fd``, sets up fds, drops every capability not in
    ``cap_keep`` from the bounding set, drops to ``uid``/``gid``, empties
    the other capability sets but ``cap_keep`` (all of them for a uid
    change), sets no_new_privs (+ optional parent-death signal), resets
    signal handlers and installs the seccomp ``bpf`` program.

    ``die_with_parent``: the child gets SIGKILL when the *thread* that called
    :func:`spawn` exits (``PR_SET_PDEATHSIG`` follows the creating thread, not
    the process), and does not start at all if the caller died before the
    signal was set.  So it must be called on the main thread (where the CLI
    runs trio), never from ``trio.to_thread``'s cached worker threads, which
    exit when idle and would kill the child with them; :func:`spawn` refuses
    otherwise.  Even a SIGKILLed worker then takes its sandboxes with it (a
    frozen child dies only once thawed).
    """

    path: str
    argv: Sequence[str]
    env: dict[str, str]
    cgroup_procs_fds: Sequence[int] = ()
    clone_flags: int = SANDBOX_NAMESPACES
    netns_fd: int = -1
    root_fd: int = -1
    hostname: str | None = None
    uid: int = -1
    gid: int = -1
    stdin_fd: int = -1
    stdout_fd: int = -1
    stderr_fd: int = -1
    keep_fds: Sequence[int] = ()
    seccomp_bpf: bytes = b""
    die_with_parent: bool = False
    proc: ProcMount | None = None
    #: Capabilities kept (bit n = capability n) by a child that keeps its uid;
    #: the rest leave every set, the bounding set included.  A child that
    #: drops to ``uid``/``gid`` keeps none whatever this says.
    cap_keep: int = 0


def spawn(spec: SpawnSpec) -> int:
    """Start a sandbox process as described by ``spec``; return its pid.

    Returns once the child has exec'd (the parent is suspended until then), so
    a failure in any setup step raises here with the step named.  The caller
    owns the child and must reap it.  With ``die_with_parent`` it must run on
    the main thread (ValueError otherwise; see :class:`SpawnSpec`).
    """
    if spec.die_with_parent and threading.current_thread() is not threading.main_thread():
        raise ValueError(
            "spawn(die_with_parent=True) off the main thread: the child would be killed "
            "when this thread exits (PR_SET_PDEATHSIG follows the creating thread)"
        )
    keep: list[object] = []

    def cstr(s: str) -> object:
        b = ffi.new("char[]", s.encode())
        keep.append(b)
        return b

    argv = ffi.new("char *[]", [cstr(a) for a in spec.argv] + [ffi.NULL])
    envp = ffi.new("char *[]", [cstr(f"{k}={v}") for k, v in spec.env.items()] + [ffi.NULL])
    cg = ffi.new("int[]", list(spec.cgroup_procs_fds) or [0])
    kf = ffi.new("int[]", list(spec.keep_fds) or [0])
    bpf = ffi.new("unsigned char[]", spec.seccomp_bpf) if spec.seccomp_bpf else ffi.NULL
    args = ffi.new("struct ol_spawn_args *")
    args.path = cstr(spec.path)
    args.argv = argv
    args.envp = envp
    args.cgroup_fds = cg
    args.n_cgroup_fds = len(spec.cgroup_procs_fds)
    args.clone_flags = spec.clone_flags
    args.netns_fd = spec.netns_fd
    args.root_fd = spec.root_fd
    args.hostname = cstr(spec.hostname) if spec.hostname else ffi.NULL
    args.uid = spec.uid
    args.gid = spec.gid
    args.stdio_fds = [spec.stdin_fd, spec.stdout_fd, spec.stderr_fd]
    args.keep_fds = kf
    args.n_keep_fds = len(spec.keep_fds)
    args.bpf = bpf
    args.bpf_len = len(spec.seccomp_bpf)
    args.die_with_parent = int(spec.die_with_parent)
    args.proc = ffi.NULL if spec.proc is None else _proc_spec(spec.proc, keep)
    args.cap_keep = spec.cap_keep
    pid = lib.ol_spawn(args)
    if pid < 0:
        step = SPAWN_STEPS[args.err_step] if args.err_step < len(SPAWN_STEPS) else "?"
        raise NativeError(args.err_errno or _errno.EIO, f"spawn {spec.path}: {step}")
    return int(pid)


def cgroup_move(procs_fd: int, pid: int, where: str = "") -> None:
    """Move ``pid`` into the cgroup whose ``cgroup.procs`` is open as ``procs_fd``."""
    _check(lib.ol_cgroup_move(procs_fd, pid), f"move pid {pid} into cgroup {where}".rstrip())


def bind(src: str, dst: str, *, readonly: bool, recursive: bool = False) -> None:
    """Bind ``src`` onto ``dst``, always nosuid and nodev."""
    _check(
        lib.ol_bind(src.encode(), dst.encode(), int(recursive), int(readonly)),
        f"bind {src} -> {dst}",
    )


def bind_as_source(src: str, dst: str) -> None:
    """Bind ``src`` onto ``dst`` with the flags of the mount ``src`` is on (a
    directory of a ``nosuid,nodev`` tmpfs gives a ``nosuid,nodev`` bind)."""
    _check(lib.ol_bind_as_source(src.encode(), dst.encode()), f"bind {src} -> {dst}")


def mount_tmpfs(
    dst: str,
    *,
    size_bytes: int,
    mode: int = 0o1777,
    allow_dev: bool = False,
    inodes: int | None = None,
    owner: tuple[int, int] | None = None,
    noswap: bool = False,
) -> None:
    """Mount a tmpfs on ``dst`` limited to ``size_bytes`` (and ``inodes``: files,
    directories, sockets...; the kernel's default when None), its root dir
    owned by ``owner`` (uid, gid; root when None) with ``mode``; ``noswap``:
    its pages never go to swap (Linux 6.4; NativeError EINVAL before)."""
    opts = f"size={size_bytes},mode={mode:o}"
    if inodes is not None:
        opts += f",nr_inodes={inodes}"
    if owner is not None:
        opts += f",uid={owner[0]},gid={owner[1]}"
    if noswap:
        opts += ",noswap"
    _check(lib.ol_mount_tmpfs(dst.encode(), opts.encode(), int(allow_dev)), f"mount tmpfs {dst}")


def remount_readonly(path: str, *, allow_dev: bool = False) -> None:
    """Make the mount at ``path`` read-only, nosuid and (unless ``allow_dev``)
    nodev: this mount only."""
    _check(lib.ol_remount_readonly(path.encode(), int(allow_dev)), f"remount {path} read-only")


def umount(path: str, *, detach: bool = False) -> None:
    """Unmount ``path`` (lazily with ``detach``)."""
    _check(lib.ol_umount(path.encode(), int(detach)), f"umount {path}")


def enter_private_mount_namespace() -> None:
    """Move this process into a private mount namespace (before any thread starts).

    Mounts made afterwards are invisible to the host and vanish with the last
    process in the namespace, so a killed worker leaks no mounts.
    """
    _check(
        lib.ol_private_mount_namespace(),
        "unshare mount namespace (process must be single-threaded)",
    )


def new_network_namespace(loopback_up: bool = False) -> int:
    """Create an empty network namespace and return an fd that keeps it alive;
    with ``loopback_up`` its loopback is up (127.0.0.1 works inside it)."""
    if loopback_up:
        return _check(lib.ol_new_netns_loopback(), "create network namespace with loopback")
    return _check(lib.ol_new_netns(), "create network namespace")


def mknod_char(path: str, mode: int, major: int, minor: int) -> None:
    """Create a character device node."""
    _check(lib.ol_mknod_char(path.encode(), mode, major, minor), f"mknod {path}")
