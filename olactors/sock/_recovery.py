"""One worker per worker dir, and recovery of a dir whose worker died.

A worker holds an exclusive ``flock`` on ``<worker>/worker.lock`` for its
whole life (:class:`WorkerDirLock`).  The kernel releases it when the
process dies, however it dies (SIGKILL, OOM kill, a crash), so holding the
lock is exactly "the worker is alive": no pid to be reused, no socket that
answers late.  Whoever holds it may take what is in the dir apart: a new
worker recovers a dead one's leftovers itself (:func:`recover_worker_dir`,
called by :func:`olactors.sock.open_sock_pool`), and ``olactors cleanup``
holds it too, so neither ever touches a live worker's sandboxes.

What a dead worker can leave behind, and what becomes of it:

- sandbox processes: fresh sandboxes (leaves, zygotes, installers) get
  SIGKILL when the worker dies (``PR_SET_PDEATHSIG``); a zygote's death kills
  every process of its PID namespace (its forked leaves, spares and child
  zygotes).  A *frozen* process does not die of a pending SIGKILL until it is
  thawed (cgroup v1), nor does a zygote whose namespace holds one finish
  dying.  The worker's watchdog (:mod:`._watchdog`) kills and thaws them
  within milliseconds of the death; recovery does it again (the watchdog may
  have been killed along with the worker) and removes the subtree.
- mounts: they live in the worker's private mount namespace, which the
  kernel frees with its last process (the worker's and its sandboxes'); mounts
  below the worker dir in the caller's namespace (a worker run without the
  private namespace) are detached.
- ``run/`` (sandbox dirs and their sockets, code snapshots, endpoints,
  ``cgroups.json``) is deleted, never through a mount point.
- network namespaces: held only by the worker's fds and its sandboxes'
  processes, so the kernel frees them (and deletes their egress veths) once
  those are dead; recovery deletes any veth still carrying the worker's alias
  and the worker's nftables table (``inet olactors_<worker id>``).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
from pathlib import Path

from .. import native
from .._config import Config
from .._errors import ConfigError, OlactorsError
from . import _egress
from ._process import worker_id
from ._rootfs import mounts_under, remove_tree_safely
from .cgroups import CgroupAnomalies, CgroupBackend, CgroupLayout, open_backend

log = logging.getLogger("olactors.sock.recovery")

LOCK_FILE = "worker.lock"


class AlreadyRunning(OlactorsError):
    """Another live process holds the worker dir (a worker, or a cleanup)."""

    code = "already_running"
    status = 409


class WorkerDirLock:
    """An exclusive ``flock`` on ``<worker>/worker.lock``, held until :meth:`release`.

    The file stays (it is never unlinked, so two processes can never lock two
    different files of the same name); it holds the holder's pid for people
    to read, never for decisions.  The descriptor is close-on-exec, and fresh
    sandboxes close every descriptor they do not need, so no sandbox keeps
    the lock after the worker is gone.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, worker_dir: Path) -> WorkerDirLock:
        """Take the lock without waiting; raise :class:`AlreadyRunning` if it is held."""
        path = worker_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {holder})" if holder else ""
                raise AlreadyRunning(f"a worker{who} is already running at {worker_dir}") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Give the lock up (idempotent).  The file stays, emptied."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> WorkerDirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


async def recover_worker_dir(worker_dir: Path, config: Config, lock: WorkerDirLock) -> list[str]:
    """Remove what a dead worker left in ``worker_dir``; safe to repeat.  Returns what was done.

    ``lock`` must be held on this dir (so no live worker owns what is removed).
    Kills every process of the worker's cgroup subtree (the one recorded in
    ``run/cgroups.json``, see :func:`recorded_layout`), frozen ones included,
    and removes the subtree; detaches mounts below the dir in this mount
    namespace; deletes ``run/``.  The admin socket is left for the server,
    which replaces a stale one.
    """
    worker_dir = worker_dir.resolve()
    if not lock.held or lock.path.parent.resolve() != worker_dir:
        raise OlactorsError(f"recovering {worker_dir} needs its lock held")
    done: list[str] = []
    wid = worker_id(worker_dir)
    layout = recorded_layout(
        CgroupLayout.current(prefer=config.sandbox.cgroup_version),
        worker_dir / "run" / "cgroups.json",
    )
    existing = [
        p
        for parent in subtree_parents(config, layout)
        if os.path.isdir(p := os.path.join(parent, f"olactors-{wid}"))
    ]
    if existing:
        backend = open_worker_backend(config, layout, wid, CgroupAnomalies())
        await backend.remove_subtree(timeout=config.sandbox.kill_timeout_s)
        done.extend(f"removed cgroup subtree {p}" for p in existing)
    done.extend(await _egress.recover(wid))
    for point in mounts_under(worker_dir):
        try:
            native.umount(point, detach=True)
            done.append(f"unmounted {point}")
        except OSError as exc:
            log.warning("could not unmount %s: %s", point, exc)
    run = worker_dir / "run"
    if run.exists():
        remove_tree_safely(run)
        done.append(f"removed {run}")
    return done


def subtree_parents(config: Config, layout: CgroupLayout) -> list[str]:
    """The directories the worker's ``olactors-<id>`` subtrees live in."""
    parent = config.sandbox.cgroup_parent
    if parent:
        if layout.version != 2:
            raise ConfigError(
                "sandbox.cgroup_parent is for cgroup v2 only; this host uses cgroup v1"
            )
        return [parent]
    return [h.own_dir for h in layout.hierarchies]


def open_worker_backend(
    config: Config, layout: CgroupLayout, wid: str, anomalies: CgroupAnomalies
) -> CgroupBackend:
    parents = subtree_parents(config, layout)
    override = config.sandbox.cgroup_parent or None
    if override and not os.path.isdir(parents[0]):
        raise ConfigError(f"sandbox.cgroup_parent {override} is not a directory")
    return open_backend(layout, wid, anomalies, override)


def recorded_layout(layout: CgroupLayout, record: Path) -> CgroupLayout:
    """``layout`` with each hierarchy's own dir taken from what the worker recorded.

    The cgroup a process runs in need not be the one the dead worker ran in
    (here, every command gets its own memory cgroup), so recovery removes the
    subtree the worker wrote down in run/cgroups.json rather than recomputing
    it.  Recorded paths outside the hierarchy's mount are ignored, and the
    backend still refuses any subtree not named ``olactors-<worker id>``.
    """
    try:
        recorded = json.loads(record.read_text())["subtrees"]
    except (OSError, ValueError, KeyError, TypeError):
        return layout
    replaced = {}
    for h in layout.hierarchies:
        mount = h.mount_point.rstrip("/") + "/"
        match = [
            p for p in recorded if isinstance(p, str) and os.path.normpath(p).startswith(mount)
        ]
        replaced[id(h)] = (
            dataclasses.replace(h, own_dir=os.path.dirname(os.path.normpath(match[0])))
            if match
            else h
        )
    return dataclasses.replace(
        layout,
        hierarchies=tuple(replaced[id(h)] for h in layout.hierarchies),
        by_controller={c: replaced[id(h)] for c, h in layout.by_controller.items()},
    )
