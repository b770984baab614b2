"""cgroup v1 backend: one directory per hierarchy (memory, pids, cpu, cpuacct, freezer).

A sandbox cgroup ``<name>`` is ``<mount><own path>/olactors-<worker_id>/<name>``
in each used hierarchy (co-mounted controllers share a directory).  Freezing
polls ``freezer.state`` with a short backoff (v1 has no change notification);
killing is freeze, SIGKILL every listed pid, thaw, then wait until empty.
"""

from __future__ import annotations

import logging
import os

import trio

from ._anomalies import CgroupAnomalies
from ._api import CgroupBackend, CgroupLimits, check_name, subtree_dir_name
from ._common import (
    BaseCgroup,
    RawCounters,
    check_subtree_root,
    kill_pids,
    poll_until,
    remove_subtree_with,
)
from ._detect import V1_REQUIRED, CgroupLayout
from ._files import make_dir, read_int, read_keyed_int, read_text, write_text

logger = logging.getLogger("olactors.cgroups")

CFS_PERIOD_US = 100_000
DEFAULT_SHARES = 1024
#: How long one kill round waits for the processes to vanish before killing again.
KILL_ROUND_SECONDS = 0.05


def cpu_shares(cpu_percent: int) -> int:
    """cpu.shares for ``cpu_percent`` (100 -> the kernel default 1024), clamped to [2, 262144]."""
    if cpu_percent == 0:
        return DEFAULT_SHARES
    return max(2, min(262_144, DEFAULT_SHARES * cpu_percent // 100))


class V1Cgroup(BaseCgroup):
    """A cgroup spread over the v1 hierarchies; ``dirs`` maps controller -> directory."""

    def __init__(self, name: str, dirs: dict[str, str], anomalies: CgroupAnomalies) -> None:
        super().__init__(name, list(dirs.values()), anomalies)
        self._by_controller = dict(dirs)
        self._memory_usage = self._file("memory", "memory.usage_in_bytes")
        self._memory_peak = self._file("memory", "memory.max_usage_in_bytes")
        self._oom_control = self._file("memory", "memory.oom_control")
        self._pids_events = self._file("pids", "pids.events")
        self._cpu_usage = self._file("cpuacct", "cpuacct.usage")

    def _file(self, controller: str, filename: str) -> str:
        return os.path.join(self._by_controller[controller], filename)

    # -- limits -----------------------------------------------------------

    def set_limits(self, limits: CgroupLimits) -> None:
        self._set_memory(limits.mem_bytes)
        write_text(self._file("pids", "pids.max"), str(limits.pids) if limits.pids else "max")
        write_text(self._file("cpu", "cpu.cfs_period_us"), str(CFS_PERIOD_US))
        quota = limits.cpu_percent * CFS_PERIOD_US // 100 if limits.cpu_percent else -1
        write_text(self._file("cpu", "cpu.cfs_quota_us"), str(quota))
        write_text(self._file("cpu", "cpu.shares"), str(cpu_shares(limits.cpu_percent)))

    def _set_memory(self, mem_bytes: int) -> None:
        """Limit memory and memory+swap to the same value (no swap), keeping memsw >= limit."""
        limit_file = self._file("memory", "memory.limit_in_bytes")
        memsw_file = self._file("memory", "memory.memsw.limit_in_bytes")
        write_text(self._file("memory", "memory.swappiness"), "0")
        value = str(mem_bytes) if mem_bytes else "-1"
        if not os.path.exists(memsw_file):
            logger.warning("no swap accounting (%s missing): cannot forbid swap", memsw_file)
            write_text(limit_file, value)
            return
        current_memsw = read_int(memsw_file)
        if mem_bytes == 0 or mem_bytes > current_memsw:
            # Raising: the memsw limit must grow first.
            write_text(memsw_file, value)
            write_text(limit_file, value)
        else:
            # Lowering (or within range): the plain limit must shrink first.
            write_text(limit_file, value)
            write_text(memsw_file, value)

    # -- accounting -------------------------------------------------------

    def _read_counters(self) -> RawCounters:
        files = self._counter_files
        return RawCounters(
            memory_bytes=files.read_int(self._memory_usage, 0),
            memory_peak_bytes=files.read_int(self._memory_peak, 0),
            # read by path: needed only now and then (a death, a pause), not per call
            oom_kills=read_keyed_int(self._oom_control, "oom_kill"),
            pids_limit_hits=read_keyed_int(self._pids_events, "max"),
            cpu_ns=files.read_int(self._cpu_usage, 0),
        )

    def _read_call_counters(self) -> RawCounters:
        files = self._counter_files
        return RawCounters(
            memory_bytes=files.read_int(self._memory_usage, 0),
            memory_peak_bytes=files.read_int(self._memory_peak, 0),
            cpu_ns=files.read_int(self._cpu_usage, 0),
        )

    def _reset_peak(self) -> None:
        write_text(self._memory_peak, "0")

    # -- state ------------------------------------------------------------

    def _freezer_state(self) -> str:
        return read_text(self._file("freezer", "freezer.state"), default="THAWED").strip()

    def is_frozen(self) -> bool:
        return self._freezer_state() != "THAWED"

    def is_empty(self) -> bool:
        return not self.pids()

    async def _wait_frozen(self) -> None:
        write_text(self._file("freezer", "freezer.state"), "FROZEN")
        await poll_until(lambda: self._freezer_state() == "FROZEN")

    async def _wait_thawed(self) -> None:
        write_text(self._file("freezer", "freezer.state"), "THAWED")
        await poll_until(lambda: self._freezer_state() == "THAWED")

    async def _wait_killed(self) -> None:
        """Rounds of freeze -> SIGKILL all -> thaw until the cgroup is empty.

        Freezing first stops forks racing the kill and keeps listed pids from
        being reused before they are signalled.  A freeze that does not settle
        quickly (e.g. a task in uninterruptible sleep) does not stop the kill.
        """
        has_freezer = os.path.isdir(self._by_controller["freezer"])
        while True:
            if has_freezer:
                write_text(self._file("freezer", "freezer.state"), "FROZEN")
                with trio.move_on_after(KILL_ROUND_SECONDS):
                    await poll_until(lambda: self._freezer_state() == "FROZEN")
            kill_pids(self.pids())
            if has_freezer:
                write_text(self._file("freezer", "freezer.state"), "THAWED")
            with trio.move_on_after(KILL_ROUND_SECONDS):
                await poll_until(self.is_empty)
            if self.is_empty():
                return


class V1Backend(CgroupBackend):
    """Creates v1 cgroups under ``olactors-<worker_id>`` in each needed hierarchy."""

    version = 1

    def __init__(self, layout: CgroupLayout, worker_id: str, anomalies: CgroupAnomalies) -> None:
        if layout.version != 1:
            raise ValueError("V1Backend needs a cgroup v1 layout")
        self.worker_id = worker_id
        self._anomalies = anomalies
        subtree = subtree_dir_name(worker_id)
        self._roots = {
            c: check_subtree_root(os.path.join(layout.hierarchy_for(c).own_dir, subtree), worker_id)
            for c in V1_REQUIRED
        }

    def ensure_subtree(self) -> None:
        """Create the ``olactors-<worker_id>`` directories (idempotent)."""
        created: list[str] = []
        try:
            for root in self.subtree_paths():
                if make_dir(root, exist_ok=True):
                    created.append(root)
        except BaseException:
            _rollback(created)
            raise

    def subtree_paths(self) -> list[str]:
        return list(dict.fromkeys(self._roots.values()))

    def _cgroup(self, rel: str) -> V1Cgroup:
        dirs = {c: os.path.join(root, rel) if rel else root for c, root in self._roots.items()}
        return V1Cgroup(rel or subtree_dir_name(self.worker_id), dirs, self._anomalies)

    def create(self, name: str) -> V1Cgroup:
        cgroup = self._cgroup(check_name("cgroup name", name))
        created: list[str] = []
        try:
            for path in cgroup.paths():
                make_dir(path)
                created.append(path)
        except BaseException:
            _rollback(created)
            raise
        return cgroup

    async def remove_subtree(self, timeout: float = 5.0) -> None:
        roots = self.subtree_paths()
        for root in roots:
            check_subtree_root(root, self.worker_id)
        await remove_subtree_with(roots, self._cgroup, timeout)


def _rollback(created: list[str]) -> None:
    """Remove directories this backend just created (empty, so rmdir is immediate)."""
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            logger.warning("could not roll back cgroup %s", path)
