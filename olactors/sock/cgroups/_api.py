"""Value types and the abstract cgroup interface shared by the v1 and v2 backends.

Everything here is pure: no I/O.  The concrete classes live in ``_v1`` and
``_v2``; callers depend only on :class:`Cgroup` and :class:`CgroupBackend`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

#: Allowed worker ids and cgroup names: they become directory names.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

SUBTREE_PREFIX = "olactors-"


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe single path component, else raise ValueError."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or value in (".", ".."):
        raise ValueError(f"invalid {kind} {value!r}: use 1-64 chars of [A-Za-z0-9_.-]")
    return value


def subtree_dir_name(worker_id: str) -> str:
    """Name of the directory holding all cgroups of worker ``worker_id``."""
    return SUBTREE_PREFIX + check_name("worker id", worker_id)


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """Resource limits of one sandbox cgroup.

    - ``mem_bytes``: memory limit in bytes, swap is always disabled; 0 = unlimited.
    - ``pids``: maximum number of tasks (processes and threads); 0 = unlimited.
    - ``cpu_percent``: CPU bandwidth as a percentage of ONE core (100 = one full
      core, 250 = two and a half cores); 0 = unlimited.  The CPU share/weight
      is scaled the same way (100 = the kernel default weight).
    """

    mem_bytes: int
    pids: int
    cpu_percent: int

    def __post_init__(self) -> None:
        for field in ("mem_bytes", "pids", "cpu_percent"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"CgroupLimits.{field} must be an int >= 0, got {value!r}")
        if 0 < self.mem_bytes < 1 << 20:
            raise ValueError(f"CgroupLimits.mem_bytes too small: {self.mem_bytes} (< 1 MiB)")
        if self.cpu_percent > 100_000:
            raise ValueError(f"CgroupLimits.cpu_percent too large: {self.cpu_percent}")


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    """Resource usage of a cgroup since its last :meth:`Cgroup.reset_baseline`.

    ``oom_kills``, ``pids_limit_hits`` and ``cpu_ns`` are deltas since the
    baseline.  ``memory_bytes`` is the current charge (a gauge, not a delta;
    it can include page cache left by a previous user of a pooled cgroup).
    ``memory_peak_bytes`` is the peak since the baseline where the kernel can
    reset peaks (v1; v2 >= 6.12), otherwise the best lower bound available.
    Counters a backend cannot read (controller not enabled) are 0.
    """

    memory_bytes: int = 0
    memory_peak_bytes: int = 0
    oom_kills: int = 0
    pids_limit_hits: int = 0
    cpu_ns: int = 0


@dataclass(frozen=True, slots=True)
class CallUsage:
    """What a call's record needs of :class:`CgroupUsage`, read alone (on
    every call): CPU time and peak memory since the baseline, as there."""

    cpu_ns: int = 0
    memory_peak_bytes: int = 0


class Cgroup(ABC):
    """One sandbox cgroup (on v1: one directory per used hierarchy).

    Synchronous methods do fast inline cgroupfs I/O and raise
    :class:`~olactors._errors.CgroupError` on failure.  Async methods wait
    through trio; on timeout they count an anomaly and raise CgroupError.
    Cancelling an async method leaves the cgroup in an unspecified (but
    consistent for the kernel) state: the caller should then remove it.
    Async operations on one cgroup must not run concurrently (the sandbox
    wrapper serialises them).
    """

    name: str

    @abstractmethod
    def paths(self) -> list[str]:
        """Directories of this cgroup (one per v1 hierarchy, one on v2)."""

    @abstractmethod
    def set_limits(self, limits: CgroupLimits) -> None:
        """Apply ``limits`` (memory without swap, pids, CPU quota and weight)."""

    @abstractmethod
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process must write itself into to join."""

    @abstractmethod
    def open_procs_fds(self) -> list[int]:
        """Open every :meth:`procs_files` entry O_WRONLY|O_CLOEXEC; the caller closes them.

        A freshly forked child joins the cgroup by writing ``"0"`` to each fd
        before it runs anything else.
        """

    @abstractmethod
    def add_pid(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Sorted pids of the processes in this cgroup."""

    @abstractmethod
    def is_empty(self) -> bool:
        """True when no process is in the cgroup."""

    @abstractmethod
    def reset_baseline(self) -> None:
        """Make :meth:`usage` count from now on (called when a cgroup is handed out)."""

    @abstractmethod
    def usage(self) -> CgroupUsage:
        """Usage since the last :meth:`reset_baseline`."""

    def call_usage(self) -> CallUsage:
        """The CPU time and peak memory of :meth:`usage`, reading only the
        counters they need (a call's record reads them after every call)."""
        usage = self.usage()
        return CallUsage(usage.cpu_ns, usage.memory_peak_bytes)

    @abstractmethod
    async def freeze(self, timeout: float) -> None:
        """Freeze every process; return once the kernel reports the cgroup frozen."""

    @abstractmethod
    async def thaw(self, timeout: float) -> None:
        """Thaw the cgroup; return once the kernel reports it thawed."""

    @abstractmethod
    def is_frozen(self) -> bool:
        """True if the cgroup is (being) frozen."""

    @abstractmethod
    async def kill_all(self, timeout: float) -> None:
        """SIGKILL every process and wait until the cgroup is empty.

        Works on frozen cgroups.  On success the cgroup is empty and thawed.
        """

    @abstractmethod
    async def remove(self, timeout: float = 1.0) -> None:
        """Remove the cgroup (killing what is left in it first).

        Retries ``rmdir`` with backoff on EBUSY until ``timeout``.  Removing an
        already removed cgroup is a no-op.
        """


class CgroupBackend(ABC):
    """Creates the cgroups of one worker inside its own subtree.

    All cgroups live under ``<mount><own cgroup>/olactors-<worker_id>/<name>``
    (one such subtree per v1 hierarchy, one on v2).  A backend never writes
    to or removes a cgroup it did not create (v2 exception: see ``_v2``).
    """

    version: int
    worker_id: str

    @abstractmethod
    def create(self, name: str) -> Cgroup:
        """Create cgroup ``name`` in the worker subtree (CgroupError if it exists)."""

    @abstractmethod
    def subtree_paths(self) -> list[str]:
        """The ``olactors-<worker_id>`` directories (one per hierarchy)."""

    @abstractmethod
    async def remove_subtree(self, timeout: float = 5.0) -> None:
        """Kill and remove everything under the worker subtree, bottom-up, then the subtree.

        Safe to run twice and on a crashed worker's leftovers.  The backend
        cannot create cgroups afterwards.
        """
