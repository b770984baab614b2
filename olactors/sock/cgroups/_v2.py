"""cgroup v2 backend: one directory per cgroup in the unified hierarchy.

Layout and the one exception to "never touch a cgroup we did not create"::

    <own cgroup X>/                       the worker's own cgroup (holds the worker)
        olactors-<worker_id>/             ours, never holds processes
            cgroup.subtree_control        we enable +memory +pids +cpu here
            <name>/                       sandbox cgroups (leaves)

v2's no-internal-process rule forbids enabling controllers for the children
of a non-root cgroup that contains processes.  That is why the worker never
puts a process into ``olactors-<worker_id>``: it is the processes-free level
between the worker's own cgroup and the sandbox leaves, so enabling controllers
in its ``cgroup.subtree_control`` is always allowed.  For the controllers to
be *available* there, X's ``cgroup.subtree_control`` must already enable them.
If it does not, the backend writes ``+memory +pids +cpu`` to X's
``cgroup.subtree_control`` (the only write to a cgroup it did not create; it
only adds, never removes).  The kernel refuses that (EBUSY) when X holds
processes and is not the root cgroup, which is the usual case for a worker
started in its own cgroup: then the backend raises a CgroupError explaining
the deployment fix (set ``root_override`` to a delegated cgroup that holds no
processes and whose subtree_control enables the controllers).

Freeze, thaw and kill wait for the kernel's ``cgroup.events`` notification
(POLLPRI) in a worker thread instead of polling.
"""

from __future__ import annotations

import errno
import logging
import os
import select

import trio

from ..._errors import CgroupError
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
from ._detect import V2_REQUIRED, CgroupLayout
from ._files import (
    cgroup_error,
    make_dir,
    parse_keyed,
    read_keyed_int,
    read_text,
    write_text,
)

logger = logging.getLogger("olactors.cgroups")

CPU_PERIOD_US = 100_000
DEFAULT_WEIGHT = 100
#: Longest single poll() in a worker thread; bounds how long an abandoned thread lingers.
POLL_SLICE_SECONDS = 0.5


def cpu_weight(cpu_percent: int) -> int:
    """cpu.weight for ``cpu_percent`` (100 -> the kernel default 100), clamped to [1, 10000]."""
    if cpu_percent == 0:
        return DEFAULT_WEIGHT
    return max(1, min(10_000, cpu_percent))


def cpu_max(cpu_percent: int) -> str:
    """cpu.max content: ``"<quota> <period>"``, or ``"max <period>"`` when unlimited."""
    if cpu_percent == 0:
        return f"max {CPU_PERIOD_US}"
    return f"{cpu_percent * CPU_PERIOD_US // 100} {CPU_PERIOD_US}"


def _events_match(fd: int, key: str, want: str) -> bool:
    text = os.pread(fd, 4096, 0).decode("ascii", "replace")
    return parse_keyed(text).get(key) == want


def _wait_events_slice(path: str, key: str, want: str, seconds: float) -> bool:
    """Blocking: True once ``key`` in ``path`` reads ``want``, waiting at most ``seconds``.

    Reading a kernfs file arms its change counter; poll() then reports POLLPRI
    for any change made after that read, so no notification is lost.  The
    thread owns its fd, so abandoning it (on cancel) is safe.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _events_match(fd, key, want):
            return True
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        poller.poll(max(1, int(seconds * 1000)))
        return _events_match(fd, key, want)
    finally:
        os.close(fd)


async def wait_events(path: str, key: str, want: str) -> None:
    """Wait (unbounded: callers use a cancel scope) until ``key`` in cgroup.events is ``want``."""
    try:
        if parse_keyed(read_text(path)).get(key) == want:
            return
        while not await trio.to_thread.run_sync(
            _wait_events_slice, path, key, want, POLL_SLICE_SECONDS, abandon_on_cancel=True
        ):
            pass
    except OSError as exc:
        raise cgroup_error("watch", path, exc) from exc


class V2Cgroup(BaseCgroup):
    """A cgroup in the unified hierarchy."""

    def __init__(self, name: str, path: str, anomalies: CgroupAnomalies) -> None:
        super().__init__(name, [path], anomalies)
        self.path = path
        self._peak_fd: int | None = None
        self._memory_current = self._file("memory.current")
        self._memory_peak = self._file("memory.peak")
        self._memory_events = self._file("memory.events")
        self._pids_events = self._file("pids.events")
        self._cpu_stat = self._file("cpu.stat")

    def _file(self, filename: str) -> str:
        return os.path.join(self.path, filename)

    # -- limits -----------------------------------------------------------

    def set_limits(self, limits: CgroupLimits) -> None:
        write_text(self._file("memory.max"), str(limits.mem_bytes) if limits.mem_bytes else "max")
        swap_file = self._file("memory.swap.max")
        if os.path.exists(swap_file):
            write_text(swap_file, "0")
        else:
            logger.warning("no swap accounting (%s missing): cannot forbid swap", swap_file)
        write_text(self._file("pids.max"), str(limits.pids) if limits.pids else "max")
        write_text(self._file("cpu.max"), cpu_max(limits.cpu_percent))
        write_text(self._file("cpu.weight"), str(cpu_weight(limits.cpu_percent)))

    # -- accounting -------------------------------------------------------

    def _read_counters(self) -> RawCounters:
        files = self._counter_files
        return RawCounters(
            memory_bytes=files.read_int(self._memory_current, 0),
            memory_peak_bytes=self._read_peak(),
            # read by path: needed only now and then (a death, a pause), not per call
            oom_kills=read_keyed_int(self._memory_events, "oom_kill"),
            pids_limit_hits=read_keyed_int(self._pids_events, "max"),
            cpu_ns=files.read_keyed_int(self._cpu_stat, "usage_usec") * 1000,
        )

    def _read_call_counters(self) -> RawCounters:
        files = self._counter_files
        return RawCounters(
            memory_bytes=files.read_int(self._memory_current, 0),
            memory_peak_bytes=self._read_peak(),
            cpu_ns=files.read_keyed_int(self._cpu_stat, "usage_usec") * 1000,
        )

    def _read_peak(self) -> int:
        """memory.peak through our reset fd when we have one, else the global file."""
        if self._peak_fd is not None:
            try:
                return int(os.pread(self._peak_fd, 64, 0).split()[0])
            except (OSError, ValueError, IndexError):
                self._close_peak_fd()
        return self._counter_files.read_int(self._memory_peak, 0)

    def _reset_peak(self) -> None:
        """Open memory.peak and reset it for that fd (kernel >= 6.12); fall back silently.

        The reset is per open file, so the fd is kept until the cgroup is removed.
        Only tried on a pseudo file system (statvfs reports no blocks, as for
        cgroupfs): writing to a regular file (a test's fake cgroupfs) would
        just overwrite the value.
        """
        self._close_peak_fd()
        path = self._file("memory.peak")
        try:
            if os.statvfs(path).f_blocks != 0:
                return
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.write(fd, b"reset\n")
            int(os.pread(fd, 64, 0).split()[0])
        except (OSError, ValueError, IndexError):
            os.close(fd)
            return
        self._peak_fd = fd

    def _peak_since_baseline(self, now: RawCounters, base: RawCounters) -> int:
        if self._peak_fd is not None:
            return max(now.memory_peak_bytes, now.memory_bytes)
        # Global peak only: it tells something about this lease only if it grew.
        if now.memory_peak_bytes > base.memory_peak_bytes:
            return now.memory_peak_bytes
        return now.memory_bytes

    def _close_peak_fd(self) -> None:
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None

    def _on_removed(self) -> None:
        super()._on_removed()
        self._close_peak_fd()

    def close(self) -> None:
        """Release the fds kept for memory.peak and the counters (also done by
        :meth:`remove`)."""
        self._on_removed()

    # -- state ------------------------------------------------------------

    def _events(self) -> dict[str, str]:
        return parse_keyed(read_text(self._file("cgroup.events"), default=""))

    def is_frozen(self) -> bool:
        return read_text(self._file("cgroup.freeze"), default="0").strip() == "1"

    def is_empty(self) -> bool:
        populated = self._events().get("populated")
        if populated is not None:
            return populated == "0"
        return not self.pids()

    async def _wait_frozen(self) -> None:
        write_text(self._file("cgroup.freeze"), "1")
        await wait_events(self._file("cgroup.events"), "frozen", "1")

    async def _wait_thawed(self) -> None:
        write_text(self._file("cgroup.freeze"), "0")
        await wait_events(self._file("cgroup.events"), "frozen", "0")

    async def _wait_killed(self) -> None:
        """cgroup.kill (kernel >= 5.14, works on frozen cgroups), wait for ``populated 0``, thaw."""
        kill_file = self._file("cgroup.kill")
        if os.path.exists(kill_file):
            write_text(kill_file, "1")
            await wait_events(self._file("cgroup.events"), "populated", "0")
        else:
            await self._kill_by_pid()
        if self.is_frozen():
            write_text(self._file("cgroup.freeze"), "0")
            await wait_events(self._file("cgroup.events"), "frozen", "0")

    async def _kill_by_pid(self) -> None:
        """Fallback for kernels without cgroup.kill: freeze, SIGKILL each pid, thaw, repeat."""
        while not self.is_empty():
            write_text(self._file("cgroup.freeze"), "1")
            with trio.move_on_after(0.05):
                await wait_events(self._file("cgroup.events"), "frozen", "1")
            kill_pids(self.pids())
            write_text(self._file("cgroup.freeze"), "0")
            with trio.move_on_after(0.05):
                await poll_until(self.is_empty)


class V2Backend(CgroupBackend):
    """Creates v2 cgroups under ``<parent>/olactors-<worker_id>``.

    ``parent`` is the worker's own v2 cgroup, or ``root_override`` (tests use a
    fake cgroupfs directory; operators may name a delegated cgroup).  The
    controllers enabled are those of the layout among memory, pids and cpu.
    """

    version = 2

    def __init__(
        self,
        layout: CgroupLayout,
        worker_id: str,
        anomalies: CgroupAnomalies,
        root_override: str | None = None,
    ) -> None:
        if layout.version != 2:
            raise ValueError("V2Backend needs a cgroup v2 layout")
        self.worker_id = worker_id
        self._anomalies = anomalies
        self._parent = root_override or layout.hierarchies[0].own_dir
        self._root = check_subtree_root(
            os.path.join(self._parent, subtree_dir_name(worker_id)), worker_id
        )
        available = layout.hierarchies[0].controllers
        self._controllers = tuple(c for c in V2_REQUIRED if c in available)

    def ensure_subtree(self) -> None:
        """Create ``olactors-<worker_id>`` (idempotent) and enable the controllers in it."""
        created = make_dir(self._root, exist_ok=True)
        try:
            self._enable_controllers()
        except BaseException:
            if created:
                try:
                    os.rmdir(self._root)
                except OSError:
                    logger.warning("could not roll back %s", self._root)
            raise

    def _enable_controllers(self) -> None:
        if not self._controllers:
            return
        root_available = self._available(self._root)
        missing = [c for c in self._controllers if c not in root_available]
        if missing:
            self._enable_in_parent(missing)
        write_text(
            os.path.join(self._root, "cgroup.subtree_control"),
            " ".join(f"+{c}" for c in self._controllers),
        )

    def _enable_in_parent(self, missing: list[str]) -> None:
        """The documented exception: add ``missing`` to the parent's subtree_control."""
        parent_available = self._available(self._parent)
        unavailable = [c for c in missing if c not in parent_available]
        if unavailable:
            raise CgroupError(
                f"cgroup v2 controller(s) {', '.join(unavailable)} not available in "
                f"{self._parent}; the parent cgroup must delegate them"
            )
        control = os.path.join(self._parent, "cgroup.subtree_control")
        try:
            write_text(control, " ".join(f"+{c}" for c in missing))
        except CgroupError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
                raise CgroupError(
                    f"cannot enable {', '.join(missing)} in {control}: that cgroup holds "
                    "processes (cgroup v2 no-internal-process rule). Run the worker in a "
                    "cgroup whose subtree_control already enables memory pids cpu and "
                    "that holds no processes of its own, or set root_override to such a "
                    "delegated cgroup"
                ) from exc
            raise
        still = [c for c in missing if c not in self._available(self._root)]
        if still:
            raise CgroupError(f"controller(s) {', '.join(still)} still missing in {self._root}")

    @staticmethod
    def _available(path: str) -> frozenset[str]:
        return frozenset(read_text(os.path.join(path, "cgroup.controllers"), default="").split())

    def subtree_paths(self) -> list[str]:
        return [self._root]

    def _cgroup(self, rel: str) -> V2Cgroup:
        path = os.path.join(self._root, rel) if rel else self._root
        return V2Cgroup(rel or subtree_dir_name(self.worker_id), path, self._anomalies)

    def create(self, name: str) -> V2Cgroup:
        cgroup = self._cgroup(check_name("cgroup name", name))
        make_dir(cgroup.path)
        return cgroup

    async def remove_subtree(self, timeout: float = 5.0) -> None:
        check_subtree_root(self._root, self.worker_id)
        await remove_subtree_with([self._root], self._cgroup, timeout)
