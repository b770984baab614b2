"""Logic shared by the v1 and v2 cgroup implementations.

:class:`BaseCgroup` implements baselines, usage deltas, timing/anomaly
accounting around the async operations, pid handling and removal with
retries.  Subclasses supply the version-specific file accesses.
"""

from __future__ import annotations

import errno
import os
import signal
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..._errors import CgroupError
from ...native import cgroup_move
from ._anomalies import CgroupAnomalies
from ._api import CallUsage, Cgroup, CgroupUsage, subtree_dir_name
from ._files import CounterFiles, cgroup_error, open_write_fds, read_pids

#: First delay when polling the kernel for a state change, and the cap.
POLL_FIRST_DELAY = 0.0002
POLL_MAX_DELAY = 0.010


async def poll_until(predicate: Callable[[], bool]) -> None:
    """Wait (forever; callers bound it with a cancel scope) until ``predicate()`` is true.

    Sleeps with exponential backoff from 0.2 ms up to 10 ms between checks.
    """
    delay = POLL_FIRST_DELAY
    while not predicate():
        await trio.sleep(delay)
        delay = min(delay * 2, POLL_MAX_DELAY)


def kill_pids(pids: list[int]) -> None:
    """SIGKILL each pid, ignoring processes that are already gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(frozen=True, slots=True)
class RawCounters:
    """Absolute kernel counters of one cgroup, as read from cgroupfs."""

    memory_bytes: int = 0
    memory_peak_bytes: int = 0
    oom_kills: int = 0
    pids_limit_hits: int = 0
    cpu_ns: int = 0


class BaseCgroup(Cgroup):
    """Shared implementation; ``dirs`` are this cgroup's directories (deduplicated)."""

    def __init__(self, name: str, dirs: list[str], anomalies: CgroupAnomalies) -> None:
        self.name = name
        self._dirs = list(dict.fromkeys(dirs))
        self._anomalies = anomalies
        self._baseline = RawCounters()
        self._removed = False
        #: Its counter files, kept open (read on every call; closed once removed).
        self._counter_files = CounterFiles()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._dirs[0]!r}>"

    # -- membership -------------------------------------------------------

    def paths(self) -> list[str]:
        return list(self._dirs)

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self._dirs]

    def open_procs_fds(self) -> list[int]:
        return open_write_fds(self.procs_files())

    def add_pid(self, pid: int) -> None:
        fds = self.open_procs_fds()
        try:
            for fd, path in zip(fds, self.procs_files(), strict=True):
                try:
                    cgroup_move(fd, pid, path)
                except OSError as exc:
                    raise cgroup_error(f"move pid {pid} into", path, exc) from exc
        finally:
            for fd in fds:
                os.close(fd)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.procs_files():
            found.update(read_pids(path))
        return sorted(found)

    # -- accounting -------------------------------------------------------

    @abstractmethod
    def _read_counters(self) -> RawCounters:
        """Read the absolute counters (missing files read as 0)."""

    @abstractmethod
    def _read_call_counters(self) -> RawCounters:
        """Read only memory, its peak and CPU (the others read as 0)."""

    def _reset_peak(self) -> None:
        """Reset the kernel's memory peak if possible (default: not possible)."""

    def reset_baseline(self) -> None:
        self._reset_peak()
        self._baseline = self._read_counters()

    def usage(self) -> CgroupUsage:
        now = self._read_counters()
        base = self._baseline
        return CgroupUsage(
            memory_bytes=now.memory_bytes,
            memory_peak_bytes=self._peak_since_baseline(now, base),
            oom_kills=max(0, now.oom_kills - base.oom_kills),
            pids_limit_hits=max(0, now.pids_limit_hits - base.pids_limit_hits),
            cpu_ns=max(0, now.cpu_ns - base.cpu_ns),
        )

    def call_usage(self) -> CallUsage:
        now = self._read_call_counters()
        base = self._baseline
        return CallUsage(
            cpu_ns=max(0, now.cpu_ns - base.cpu_ns),
            memory_peak_bytes=self._peak_since_baseline(now, base),
        )

    def _peak_since_baseline(self, now: RawCounters, base: RawCounters) -> int:
        """Default: the kernel peak was reset at the baseline, so it is the answer."""
        return max(now.memory_peak_bytes, now.memory_bytes)

    # -- timed async operations -------------------------------------------

    async def _timed(self, op: str, timeout: float, wait: Callable[[], Awaitable[None]]) -> None:
        """Run ``wait()`` bounded by ``timeout``; count slow runs and timeouts.

        On timeout: record an anomaly and raise CgroupError.  Errors raised by
        ``wait`` are recorded as ``failed_<op>`` and propagate.
        """
        start = trio.current_time()
        try:
            with trio.move_on_after(timeout) as scope:
                await wait()
        except CgroupError as exc:
            self._anomalies.failed(op, trio.current_time() - start, self.name, exc)
            raise
        elapsed = trio.current_time() - start
        if scope.cancelled_caught:
            self._anomalies.timed_out(op, elapsed, self.name)
            raise CgroupError(f"cgroup {op} of {self.name!r} timed out after {timeout:g}s")
        self._anomalies.completed(op, elapsed, self.name)

    @abstractmethod
    async def _wait_frozen(self) -> None: ...

    @abstractmethod
    async def _wait_thawed(self) -> None: ...

    @abstractmethod
    async def _wait_killed(self) -> None: ...

    async def freeze(self, timeout: float) -> None:
        await self._timed("freeze", timeout, self._wait_frozen)
        # A paused sandbox's counters are read again only once it runs: its
        # kept fds are not worth holding meanwhile (a worker keeps many paused).
        self._counter_files.close()

    async def thaw(self, timeout: float) -> None:
        await self._timed("thaw", timeout, self._wait_thawed)

    async def kill_all(self, timeout: float) -> None:
        await self._timed("kill", timeout, self._wait_killed)

    # -- removal ----------------------------------------------------------

    def _on_removed(self) -> None:
        """Release resources held for this cgroup (e.g. open fds)."""
        self._counter_files.close()

    async def remove(self, timeout: float = 1.0) -> None:
        if self._removed:
            return
        start = trio.current_time()
        if any(os.path.isdir(d) for d in self._dirs) and not self._safe_is_empty():
            try:
                await self.kill_all(timeout)
            except CgroupError:
                pass  # already counted; rmdir below will report the real failure
        pending = [d for d in self._dirs]
        delay = 0.001
        while True:
            busy: list[str] = []
            for path in pending:
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        error = cgroup_error("remove", path, exc)
                        self._anomalies.failed("remove", trio.current_time() - start, path, error)
                        raise error from exc
                    busy.append(path)
            elapsed = trio.current_time() - start
            if not busy:
                break
            if elapsed >= timeout:
                error = CgroupError(
                    f"cannot remove cgroup {busy[0]}: still busy after {elapsed:.3f}s"
                )
                self._anomalies.failed("remove", elapsed, busy[0], error)
                raise error
            pending = busy
            await trio.sleep(min(delay, max(0.0, timeout - elapsed)))
            delay = min(delay * 2, 0.05)
        self._removed = True
        self._on_removed()
        self._anomalies.completed("remove", trio.current_time() - start, self.name)

    def _safe_is_empty(self) -> bool:
        try:
            return self.is_empty()
        except CgroupError:
            return False


def check_subtree_root(path: str, worker_id: str) -> str:
    """Refuse any subtree root whose last component is not ``olactors-<worker_id>``."""
    expected = subtree_dir_name(worker_id)
    if os.path.basename(os.path.normpath(path)) != expected:
        raise CgroupError(f"refusing to touch {path!r}: last component is not {expected!r}")
    return path


def subtree_dirs_bottom_up(roots: list[str]) -> list[str]:
    """Relative paths of every directory below ``roots`` (union), deepest first, then ``""``."""
    rels: set[str] = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, _dirnames, _files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            if rel != ".":
                rels.add(rel)
    ordered = sorted(rels, key=lambda r: (-r.count(os.sep), r))
    return [*ordered, ""]


async def remove_subtree_with(
    roots: list[str],
    make: Callable[[str], BaseCgroup],
    timeout: float,
) -> None:
    """Kill and remove every cgroup below ``roots`` and then the roots, collecting errors.

    ``make(rel)`` builds a cgroup object for relative path ``rel`` ("" = the roots).
    Every process of the subtree is killed and every cgroup thawed first: a
    frozen process with a SIGKILL pending (a dead worker's paused sandbox)
    dies only once thawed, and a zygote whose PID namespace holds one cannot
    finish dying before it does, so the cgroups cannot be emptied one by one.
    """
    errors: list[str] = []
    cgroups = [make(rel) for rel in subtree_dirs_bottom_up(roots)]
    for cgroup in cgroups:
        try:
            kill_pids(cgroup.pids())
        except CgroupError as exc:
            errors.append(str(exc))
    for cgroup in reversed(cgroups):  # top down: a v1 child stays frozen under a frozen parent
        try:
            if cgroup.is_frozen():
                await cgroup.thaw(timeout)
        except CgroupError as exc:
            errors.append(str(exc))
    for cgroup in cgroups:
        try:
            await cgroup.remove(timeout)
        except CgroupError as exc:
            errors.append(str(exc))
    if errors:
        raise CgroupError(f"could not remove the worker subtree: {'; '.join(errors)}")
