"""A leaf's ``/run/secrets``: a tmpfs of its own holding its granted secrets.

Each secret is a file ``/run/secrets/<NAME>`` owned by the leaf's uid with
mode 0400, in a directory of mode 0500 on a tmpfs that is then remounted
read-only (and never swapped out where the kernel can promise it).  The
worker mounts it in its own mount namespace onto the leaf's root, so it
goes with the root (one detach at release) and no other sandbox's root
ever has it.

When: after the leaf is in its chroot and before its function's code is
imported (a handshake on the leaf's report channel, see ``_start.py``):

* the leaf reports ``{"started": true}`` (its runtime listens: it is in its
  chroot, under the leaf uid and its seccomp filter) and, told by its
  config that secrets come, waits;
* for a forked leaf the worker also waits for its zygote's fork reply, which
  the zygote sends only after closing its copies of the child's fds (its
  root dir among them): from then on the zygote holds nothing that reaches
  the child's root;
* the worker mounts the tmpfs and writes the files (:func:`mount_secrets`),
  then sends :data:`SECRETS_MOUNTED`; only then does the leaf import the
  function's code.

So a zygote never holds a secret: none is in its root, its memory or an fd
it holds, and nothing of the request it forwards carries one (the child's
config says only that secrets come).
"""

from __future__ import annotations

import os

from .. import native
from .._secrets import SECRETS_MOUNT, SecretFile

#: The worker's word to a leaf that its secrets are in place.
SECRETS_MOUNTED = b'{"secrets": true}'
#: Room in the tmpfs beyond the values: its directory and per-file rounding.
_SLACK_BYTES = 4096

_noswap: bool | None = None  # does this kernel's tmpfs take noswap?


def _mount_tmpfs(target: str, files: tuple[SecretFile, ...], uid: int, gid: int) -> None:
    global _noswap
    size = sum(len(f.value) for f in files) + _SLACK_BYTES * (len(files) + 1)

    def mount(noswap: bool) -> None:
        native.mount_tmpfs(
            target,
            size_bytes=size,
            mode=0o500,
            inodes=len(files) + 2,
            owner=(uid, gid),
            noswap=noswap,
        )

    if _noswap is not False:
        try:
            mount(noswap=True)
            _noswap = True
            return
        except native.NativeError:
            if _noswap:
                raise
            _noswap = False  # an older kernel (before 6.4): swappable, still private
    mount(noswap=False)


def holding(pids: list[int], root: str) -> list[str]:
    """What of processes ``pids`` reaches into ``root`` (a host path): their
    open fds, working dirs and roots there, as ``"<pid>: <path>"``.  The
    worker checks a zygote's processes with it before it mounts a forked
    child's secrets, so "the zygote holds nothing that reaches them" is a
    fact checked from the host, not only the zygote runtime's promise."""
    found = []
    for pid in pids:
        links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue  # gone: it holds nothing
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == root or target.startswith(root + "/"):
                found.append(f"{pid}: {link} -> {target}")
    return found


def mount_secrets(root: str, files: tuple[SecretFile, ...], uid: int, gid: int) -> None:
    """Mount ``files`` at ``<root>/run/secrets`` (see the module doc); on any
    failure nothing stays mounted and NativeError (an OSError) is raised."""
    target = root + SECRETS_MOUNT
    _mount_tmpfs(target, files, uid, gid)
    try:
        dir_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for f in files:
                _write(dir_fd, f, uid, gid)
        finally:
            os.close(dir_fd)
        native.remount_readonly(target)
    except BaseException:
        native.umount(target, detach=True)
        raise


def _write(dir_fd: int, f: SecretFile, uid: int, gid: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(f.name, flags, 0o400, dir_fd=dir_fd)
    try:
        view = memoryview(f.value)
        while view:
            view = view[os.write(fd, view) :]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o400)
    finally:
        os.close(fd)
