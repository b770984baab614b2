"""A pool of pre-created, reusable sandbox cgroups.

Creating and removing cgroups is slow compared to a SOCK fork (and removal is
asynchronous in the kernel), so the pool keeps up to ``size`` clean cgroups
ready.  A cgroup is reused only after it was proven empty and thawed; any
failure while cleaning it makes the pool remove it instead, so a broken cgroup
is never handed out again.
"""

from __future__ import annotations

import logging

import trio

from ..._errors import CgroupError
from ._anomalies import CgroupAnomalies
from ._api import Cgroup, CgroupBackend, CgroupLimits

logger = logging.getLogger("olactors.cgroups")

DEFAULT_TIMEOUT = 2.0


class CgroupPool:
    """Hands out cgroups named ``cg-<n>`` from ``backend``, keeping ``size`` ready.

    ``timeout`` bounds each kill and removal done by :meth:`release` and
    :meth:`close`.  The pool is used from one trio run; it needs no locks
    because :meth:`acquire` does not await.
    """

    def __init__(
        self,
        backend: CgroupBackend,
        size: int,
        anomalies: CgroupAnomalies,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if size < 0:
            raise ValueError("pool size must be >= 0")
        self._backend = backend
        self._size = size
        self._anomalies = anomalies
        self._timeout = timeout
        self._free: list[Cgroup] = []
        self._in_use: dict[str, Cgroup] = {}
        self._applied: dict[str, CgroupLimits] = {}  # limits last written, per cgroup name
        self._doomed: list[Cgroup] = []  # to remove (failed once already, or discarded)
        self._next_id = 0
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Pre-create ``size`` cgroups.  On failure removes what it created and raises."""
        try:
            while len(self._free) < self._size:
                self._free.append(self._create())
                await trio.lowlevel.checkpoint()
        except BaseException:
            with trio.CancelScope(shield=True):
                for cgroup in self._free:
                    await self._remove(cgroup)
                self._free.clear()
            raise

    async def close(self) -> None:
        """Kill and remove every cgroup the pool created, then the worker subtree.

        Never raises CgroupError (failures are logged and counted); shielded
        from cancellation, bounded by the pool timeout per cgroup.
        """
        self._closed = True
        with trio.CancelScope(shield=True):
            everything = [*self._free, *self._in_use.values(), *self._doomed]
            self._free.clear()
            self._in_use.clear()
            self._doomed.clear()
            for cgroup in everything:
                await self._remove(cgroup)
            try:
                await self._backend.remove_subtree(self._timeout)
            except CgroupError as exc:
                logger.warning("cgroup pool: worker subtree not fully removed: %s", exc)

    # -- leases ------------------------------------------------------------

    def acquire(self, limits: CgroupLimits) -> Cgroup:
        """Return an empty cgroup with ``limits`` applied and a fresh usage baseline.

        Reuses a free cgroup or creates one.  Raises CgroupError if the pool
        is closed or the cgroup cannot be set up (it is then discarded).
        """
        if self._closed:
            raise CgroupError("cgroup pool is closed")
        cgroup = self._free.pop() if self._free else self._create()
        try:
            # A reused cgroup keeps the limits it last had: skip identical writes.
            if self._applied.get(cgroup.name) != limits:
                self._applied.pop(cgroup.name, None)
                cgroup.set_limits(limits)
                self._applied[cgroup.name] = limits
            cgroup.reset_baseline()
        except BaseException:
            self._doomed.append(cgroup)
            raise
        self._in_use[cgroup.name] = cgroup
        return cgroup

    async def release(self, cgroup: Cgroup, *, reuse: bool = True) -> None:
        """Kill everything in ``cgroup`` and take it back.

        It returns to the free list if ``reuse`` is true, it is verifiably
        empty and thawed, and fewer than ``size`` are free; otherwise it is removed.  Shielded from
        cancellation (bounded by the timeout); never raises CgroupError.
        """
        if self._in_use.get(cgroup.name) is not cgroup:
            raise ValueError(f"{cgroup!r} was not acquired from this pool")
        del self._in_use[cgroup.name]
        doomed, self._doomed = self._doomed, []  # earlier failures: retry once now
        with trio.CancelScope(shield=True):
            reusable = await self._clean(cgroup)
            if reuse and reusable and not self._closed and len(self._free) < self._size:
                self._free.append(cgroup)
            else:
                await self._remove(cgroup)
            for old in doomed:
                await self._remove(old)

    # -- introspection -------------------------------------------------------

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def in_use_count(self) -> int:
        return len(self._in_use)

    def stats(self) -> dict[str, int]:
        """Counts of free, in-use and to-be-removed cgroups."""
        return {
            "size": self._size,
            "free": len(self._free),
            "in_use": len(self._in_use),
            "doomed": len(self._doomed),
        }

    # -- internals -----------------------------------------------------------

    def _create(self) -> Cgroup:
        name = f"cg-{self._next_id}"
        self._next_id += 1
        return self._backend.create(name)

    async def _clean(self, cgroup: Cgroup) -> bool:
        """Empty and thaw ``cgroup``; True only if it is then verifiably clean."""
        try:
            await cgroup.kill_all(self._timeout)
            if cgroup.is_frozen():
                await cgroup.thaw(self._timeout)
            if not cgroup.is_empty() or cgroup.is_frozen():
                raise CgroupError(f"cgroup {cgroup.name!r} not empty and thawed after kill")
        except Exception as exc:
            logger.warning("cgroup pool: discarding %r: %s", cgroup, exc)
            return False
        return True

    async def _remove(self, cgroup: Cgroup) -> None:
        """Remove ``cgroup``; on failure keep it to retry later (already counted)."""
        self._applied.pop(cgroup.name, None)
        try:
            await cgroup.remove(self._timeout)
        except Exception as exc:
            logger.warning("cgroup pool: could not remove %r: %s", cgroup, exc)
            if not self._closed:
                self._doomed.append(cgroup)
