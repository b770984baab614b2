"""Root filesystems: the shared read-only base root and per-sandbox roots.

The base root is a directory skeleton made once by ``olactors init`` (a
minimal ``/etc`` with no host secrets, mount points) whose host parts are
bind-mounted read-only when the worker starts: ``/usr`` (and the merged-usr
symlinks), the Python installation when it lives outside ``/usr``, a tmpfs
``/dev`` with the few device nodes Python needs, and the sandbox runtime at
``/runtime``.  Every site-packages/dist-packages directory is covered by an
empty read-only directory, so sandboxes never see host packages.

A sandbox root is a recursive read-only bind of the base plus the function's
code at ``/handler`` (read-only), its writable space (below), its ``/proc``
(``_procfs.py``), and, when it uses packages, a small tmpfs at ``/packages``
holding exactly its package dirs, each bound read-only (the tmpfs is then
made read-only too).  Bind mounts + chroot; no mount namespace per sandbox.
All mounts live in the worker's private mount namespace.

**Writable space.**  Everything a sandbox can write is one tmpfs of its own,
``<sandbox dir>/writable``, bounded in bytes (``sandbox.tmp_mb``) and in
inodes (``sandbox.tmp_inodes``), whose directories are bound at ``/tmp``,
``/dev/shm`` and ``/host`` (the scratch dir; a caller that passes its own
scratch dir, the package installer, gets that dir there instead).  One bound
for all three: a function cannot spread past it across mounts, filling it
gives the function ENOSPC, and nothing of it is on the worker's disk.  Its
pages are charged to the sandbox's memory cgroup like any tmpfs's.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .. import native
from ._api import PACKAGES_MOUNT, PackageMount

RUNTIME_SOURCE = Path(__file__).with_name("runtime")
MOUNT_POINTS = ("handler", "host", "tmp", "runtime", "dev", "packages", "proc")
#: The directories of a sandbox's writable space: /host (its own scratch
#: dir), /tmp and /dev/shm.
SCRATCH_DIR, TMP_DIR, SHM_DIR = "host", "tmp", "shm"
#: Inodes of the writable space beyond ``sandbox.tmp_inodes``, exactly what
#: is not the function's: its root and three directories, and a leaf's two
#: files in /host (its runtime's socket and the worker's blocked-syscalls
#: map; a zygote's: its socket and exits dir), so a function gets the
#: configured number.
WRITABLE_RESERVED_INODES = 4 + 2
#: Where a leaf's own secrets tmpfs is mounted (``_secretfs.py``); empty in the base.
SECRETS_POINT = "run/secrets"
PACKAGES_TMPFS_BYTES = 1 << 20  # holds only the mount points of package dirs
MERGED_USR_LINKS = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")
_DEV_NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}

_ETC_FILES = {
    "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
    "hostname": "sandbox\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}
# Host files copied because they hold no secrets and libc or Python wants them.
_ETC_COPIED = ("ld.so.cache", "resolv.conf", "localtime", "mime.types")


def python_prefix() -> str:
    """The base (non-venv) Python installation the sandboxes run."""
    return os.path.realpath(sys.base_prefix)


def python_executable() -> str:
    exe = getattr(sys, "_base_executable", sys.executable)
    return os.path.realpath(exe)


def site_package_dirs() -> list[str]:
    """Host directories that hold third-party packages and must stay invisible."""
    prefix = python_prefix()
    found = {
        os.path.realpath(p)
        for key in ("purelib", "platlib")
        for p in [sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})[key]]
    }
    for pattern in (
        "/usr/lib/python3*/site-packages",
        "/usr/lib/python3*/dist-packages",
        "/usr/local/lib/python3*/site-packages",
        "/usr/local/lib/python3*/dist-packages",
    ):
        found.update(os.path.realpath(p) for p in glob.glob(pattern))
    return sorted(p for p in found if os.path.isdir(p))


def is_under_usr(path: str) -> bool:
    return path == "/usr" or path.startswith("/usr/")


def _inside(path: str, root: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def make_base_skeleton(base: Path) -> None:
    """Create (or refresh) the assembled base root's directories and /etc.

    Idempotent; never mounts anything.  Raises OSError on I/O failure.
    """
    base.mkdir(parents=True, exist_ok=True)
    (base / "usr").mkdir(exist_ok=True)
    for name in MOUNT_POINTS:
        (base / name).mkdir(exist_ok=True)
    (base / SECRETS_POINT).mkdir(parents=True, exist_ok=True)
    os.chmod(base / "tmp", 0o1777)
    for name in MERGED_USR_LINKS:
        host = Path("/") / name
        link = base / name
        if host.is_symlink() and not link.is_symlink():
            link.symlink_to(os.readlink(host))
        elif host.is_dir() and not host.is_symlink():
            link.mkdir(exist_ok=True)
    prefix = python_prefix()
    if not is_under_usr(prefix):
        Path(_inside(prefix, str(base))).mkdir(parents=True, exist_ok=True)
    etc = base / "etc"
    etc.mkdir(exist_ok=True)
    for name, text in _ETC_FILES.items():
        (etc / name).write_text(text)
    for name in _ETC_COPIED:
        src = Path("/etc") / name
        if src.exists():
            shutil.copy(src, etc / name, follow_symlinks=True)
    (base.parent / "empty").mkdir(exist_ok=True)
    os.chmod(base.parent / "empty", 0o555)


@dataclass
class BaseRoot:
    """The shared base root: ``assembled`` from the host, or a given directory."""

    path: Path
    assembled: bool
    _mounts: list[str]

    @classmethod
    def mount(cls, path: Path, *, assembled: bool) -> BaseRoot:
        """Bind the host parts into ``path``; on any failure undo and raise NativeError."""
        root = cls(path, assembled, [])
        try:
            root._mount_all()
        except BaseException:
            root.unmount()
            raise
        return root

    def _bind(self, src: str, rel: str, *, readonly: bool = True) -> None:
        dst = _inside(rel, str(self.path))
        if not os.path.isdir(dst):
            os.makedirs(dst, exist_ok=True)
        native.bind(src, dst, readonly=readonly, recursive=False)
        self._mounts.append(dst)

    def _mount_all(self) -> None:
        if not self.assembled:
            for name in MOUNT_POINTS:
                (self.path / name).mkdir(exist_ok=True)
            (self.path / SECRETS_POINT).mkdir(parents=True, exist_ok=True)
        else:
            self._bind("/usr", "/usr")
            prefix = python_prefix()
            if not is_under_usr(prefix):
                self._bind(prefix, prefix)
            empty = str(self.path.parent / "empty")
            for site in site_package_dirs():
                if os.path.isdir(_inside(site, str(self.path))):
                    self._bind(empty, site)
        dev = str(self.path / "dev")
        native.mount_tmpfs(dev, size_bytes=65536, mode=0o755, allow_dev=True)
        self._mounts.append(dev)
        for name, (major, minor) in _DEV_NODES.items():
            node = os.path.join(dev, name)
            native.mknod_char(node, 0o666, major, minor)
            os.chmod(node, 0o666)  # mknod's mode is filtered by the umask
        os.mkdir(os.path.join(dev, "shm"), 0o755)  # each sandbox binds its own there
        # Read-only: the tmpfs is shared by every sandbox (device I/O still works).
        native.remount_readonly(dev, allow_dev=True)
        self._bind(str(RUNTIME_SOURCE), "/runtime")

    def unmount(self) -> None:
        """Undo every mount of the base, innermost first (lazy detach)."""
        while self._mounts:
            path = self._mounts.pop()
            try:
                native.umount(path, detach=True)
            except OSError:
                pass


class SandboxRoot:
    """A per-sandbox root at ``<sandbox dir>/root`` and its writable space at
    ``<sandbox dir>/writable``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writable = path.parent / "writable"
        self.mounted = False
        self.writable_mounted = False

    @property
    def own_scratch(self) -> Path:
        """The scratch dir in its writable space (``/host`` unless a caller gives one)."""
        return self.writable / SCRATCH_DIR

    def mount(
        self,
        base: BaseRoot,
        *,
        code_dir: str | None,
        scratch: str | None,
        tmp_bytes: int,
        tmp_inodes: int,
        packages: tuple[PackageMount, ...] = (),
    ) -> None:
        """Assemble the root; on failure undo what was done and raise NativeError.

        ``scratch`` None: the scratch dir is :attr:`own_scratch`, in the
        writable space.  ``/proc`` is mounted later, once the sandbox's PID
        namespace exists (``_procfs.py``).
        """
        root = str(self.path)
        self.path.mkdir(exist_ok=True)
        try:
            self._mount_writable(tmp_bytes, tmp_inodes)
            native.bind(str(base.path), root, readonly=True, recursive=True)
            self.mounted = True
            if code_dir:
                native.bind(code_dir, root + "/handler", readonly=True)
            # From the nosuid,nodev writable space, binds need no remount.
            if scratch is None:
                native.bind_as_source(str(self.own_scratch), root + "/host")
            else:
                native.bind(scratch, root + "/host", readonly=False)
            native.bind_as_source(str(self.writable / TMP_DIR), root + "/tmp")
            native.bind_as_source(str(self.writable / SHM_DIR), root + "/dev/shm")
            if packages:
                mount_packages(root, packages)
        except BaseException:
            self.unmount()
            raise

    def _mount_writable(self, size_bytes: int, inodes: int) -> None:
        """One tmpfs for everything the sandbox can write (see the module doc)."""
        self.writable.mkdir(exist_ok=True)
        native.mount_tmpfs(
            str(self.writable),
            size_bytes=size_bytes,
            mode=0o755,
            inodes=inodes + WRITABLE_RESERVED_INODES,
        )
        self.writable_mounted = True
        os.mkdir(self.own_scratch, 0o755)
        for name in (TMP_DIR, SHM_DIR):
            os.mkdir(self.writable / name)
            os.chmod(self.writable / name, 0o1777)  # mkdir's mode is filtered by the umask

    def is_mounted(self) -> bool:
        """Is anything of it still mounted?"""
        return (
            self.mounted
            or self.writable_mounted
            or os.path.ismount(self.path)
            or os.path.ismount(self.writable)
        )

    def unmount(self) -> None:
        """Detach the whole tree, then the writable space (idempotent; each is
        tried even if the other fails, the first failure is raised)."""
        failure: OSError | None = None
        if self.mounted:
            self.mounted = False
            try:
                native.umount(str(self.path), detach=True)
            except OSError as exc:
                failure = exc
        if self.writable_mounted:
            self.writable_mounted = False
            try:
                native.umount(str(self.writable), detach=True)
            except OSError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


def mount_packages(root: str, packages: tuple[PackageMount, ...]) -> None:
    """A tmpfs at ``<root>/packages`` with each package dir (or file) bound
    read-only at its target; the tmpfs is then made read-only (targets are checked by
    :func:`._safe.check_package_mounts`)."""
    top = root + PACKAGES_MOUNT
    native.mount_tmpfs(top, size_bytes=PACKAGES_TMPFS_BYTES, mode=0o755)
    for mount in packages:
        point = root + mount.target
        if os.path.isdir(mount.source):
            os.makedirs(point, mode=0o755, exist_ok=True)
        else:  # a single file (a CA bundle for the installer)
            os.makedirs(os.path.dirname(point), mode=0o755, exist_ok=True)
            open(point, "x").close()
        native.bind(mount.source, point, readonly=True)
    native.remount_readonly(top)


def _unescape_mountinfo(field: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    prefix = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = _unescape_mountinfo(line.split(b" ")[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree_safely(path: Path) -> None:
    """Detach any mount left below ``path``, then delete it: never delete through a mount."""
    for point in mounts_under(path):
        try:
            native.umount(point, detach=True)
        except OSError:
            pass
    if mounts_under(path):
        raise OSError(f"mounts remain under {path}; not removing it")
    shutil.rmtree(path, ignore_errors=True)
