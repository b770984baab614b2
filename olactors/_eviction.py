"""Which sandboxes to evict: the safety rules plus a pluggable order (pure).

:func:`choose_victims` applies the rules every policy shares, as OpenLambda
does: a sandbox with live children (a zygote whose forks still run) is never
a candidate, since its memory could not be freed anyway; paused sandboxes go
first; running ones (idle-but-not-yet-paused, or serving a call) are taken
only when ``critical`` (someone is waiting for memory) and the paused ones
cannot cover the need, because evicting a running sandbox may fail a call.

Within each of the two groups an :class:`EvictionPolicy` decides the order:

* ``openlambda`` — OpenLambda's evictor: a FIFO queue per state, a sandbox
  moving to the back whenever its state changes (created, paused, unpaused,
  a child forked or gone); the front goes first.  Calls on a running
  sandbox do not move it.
* ``lru`` — least recently used first (a call, an unpause or a fork from it
  is a use).
* ``gdsf`` — keep-alive as caching, Greedy-Dual-Size-Frequency style
  (FaaSCache, ASPLOS 2021): priority = clock + uses x startup cost / size;
  the lowest priority goes first, and the clock rises to each victim's
  priority, so sandboxes not used for a long time age out.  Frequent,
  expensive-to-recreate, small sandboxes (zygotes, hot functions) stay.

Policies are deterministic: ties break on the candidate's ``order`` (its
creation sequence number), never on hashing or identity.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

POLICY_NAMES = ("openlambda", "lru", "gdsf")


@dataclass(frozen=True, slots=True)
class Candidate:
    key: Hashable
    paused: bool
    children: int
    mem_mb: int
    last_used: float  # a call, unpause or fork: the last use
    state_since: float = 0.0  # the last state change (created, paused, unpaused, children)
    uses: int = 0  # calls started, plus forks for a zygote
    startup_s: float = 0.0  # what recreating it would cost
    order: int = 0  # creation sequence: the deterministic tie-break


class EvictionPolicy(Protocol):
    name: str

    def key(self, c: Candidate) -> float:
        """``c``'s eviction priority now: the lowest goes first.  Computed when
        a sandbox pauses (nothing about it changes while paused) and kept."""
        ...

    def evicted(self, victim: Candidate, key: float) -> None:
        """``victim`` (with priority ``key``) was chosen; stateful policies
        (GDSF's clock) update here."""
        ...


class OpenLambdaPolicy:
    name = "openlambda"

    def key(self, c: Candidate) -> float:
        return c.state_since

    def evicted(self, victim: Candidate, key: float) -> None:
        pass


class LRUPolicy:
    name = "lru"

    def key(self, c: Candidate) -> float:
        return c.last_used

    def evicted(self, victim: Candidate, key: float) -> None:
        pass


class GDSFPolicy:
    """Greedy-Dual-Size-Frequency: ``H = clock + uses x max(startup_s, floor_s) / mem_mb``.

    A sandbox's ``H`` is fixed when it is computed (when it pauses: the
    clock then stands for its last use); the clock rises to the ``H`` of
    each victim, so a sandbox not used for long ends up below newer ones.
    ``floor_s`` keeps a sandbox whose startup measured ~0 from having no value.
    """

    name = "gdsf"

    def __init__(self, floor_s: float = 0.001) -> None:
        self.clock = 0.0
        self.floor_s = floor_s

    def key(self, c: Candidate) -> float:
        return self.clock + max(1, c.uses) * max(c.startup_s, self.floor_s) / max(1, c.mem_mb)

    def evicted(self, victim: Candidate, key: float) -> None:
        self.clock = max(self.clock, key)


def make_policy(name: str) -> EvictionPolicy:
    """The policy called ``name`` (one of :data:`POLICY_NAMES`), fresh."""
    if name == "openlambda":
        return OpenLambdaPolicy()
    if name == "lru":
        return LRUPolicy()
    if name == "gdsf":
        return GDSFPolicy()
    raise ValueError(f"unknown eviction policy {name!r} (known: {', '.join(POLICY_NAMES)})")


def choose_victims(
    policy: EvictionPolicy,
    candidates: Iterable[Candidate],
    need_mb: int,
    *,
    critical: bool,
    limit: int,
) -> list[Candidate]:
    """Up to ``limit`` victims that together free at least ``need_mb`` if possible.

    The reference statement of the rules: keys are computed now.  The
    evictor gets the same order incrementally (:class:`PausedQueue`) with
    keys computed when each sandbox paused.
    """
    if need_mb <= 0 or limit <= 0:
        return []
    free = [c for c in candidates if c.children == 0 and c.mem_mb > 0]
    keyed = sorted(((policy.key(c), c.order, c) for c in free), key=lambda e: e[:2])
    victims: list[tuple[float, Candidate]] = []
    freed = 0
    for group in (True, False):  # paused first; running only when critical
        if group is False and (freed >= need_mb or not critical):
            break
        for key, _, c in keyed:
            if c.paused is not group:
                continue
            if freed >= need_mb or len(victims) >= limit:
                break
            victims.append((key, c))
            freed += c.mem_mb
    for key, victim in victims:
        policy.evicted(victim, key)
    return [victim for _, victim in victims]


class PausedQueue:
    """Paused sandboxes in eviction order, kept incrementally (a heap with lazy deletion).

    ``add`` when a sandbox pauses (its key computed then), ``discard`` when
    it unpauses or is destroyed.  ``take`` pops candidates in key order,
    skipping any the caller rejects (``eligible`` false: say, it has live
    children now), which stay queued.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._keys: dict[Hashable, tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def add(self, item: Hashable, key: float, order: int) -> None:
        self._keys[item] = (key, order)
        heapq.heappush(self._heap, (key, order, item))
        if len(self._heap) > 2 * len(self._keys) + 64:  # too many stale entries
            self._heap = [(k, o, i) for i, (k, o) in self._keys.items()]
            heapq.heapify(self._heap)

    def discard(self, item: Hashable) -> None:
        self._keys.pop(item, None)

    def take(self, wanted: Callable[[Hashable, float], bool]) -> Iterator[tuple[Hashable, float]]:
        """Items in order (each removed from the queue) while ``wanted(item, key)``
        says so; an item for which it returns False is kept and skipped."""
        kept: list[tuple[float, int, Hashable]] = []
        try:
            while self._heap:
                key, order, item = heapq.heappop(self._heap)
                if self._keys.get(item) != (key, order):
                    continue  # stale
                if not wanted(item, key):
                    kept.append((key, order, item))
                    continue
                del self._keys[item]
                yield item, key
        finally:
            for entry in kept:
                heapq.heappush(self._heap, entry)
