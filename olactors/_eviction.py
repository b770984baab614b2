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

from collections.abc import Hashable, Iterable, Sequence
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

    def rank(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """``candidates`` in eviction order: the first goes first."""
        ...

    def evicted(self, victim: Candidate) -> None:
        """``victim`` was chosen (policies with state, like GDSF's clock, update it)."""
        ...


class OpenLambdaPolicy:
    name = "openlambda"

    def rank(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.state_since, c.order))

    def evicted(self, victim: Candidate) -> None:
        pass


class LRUPolicy:
    name = "lru"

    def rank(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.last_used, c.order))

    def evicted(self, victim: Candidate) -> None:
        pass


class GDSFPolicy:
    """Greedy-Dual-Size-Frequency: ``H = L + uses x max(startup_s, floor) / mem_mb``.

    ``L`` is the clock when the sandbox was last seen used (a candidate whose
    ``uses`` grew since the previous ranking is re-based at the current clock).
    The clock rises to the priority of each victim.  ``floor_s`` keeps a
    sandbox whose startup was measured as ~0 from having no value at all.
    """

    name = "gdsf"

    def __init__(self, floor_s: float = 0.001) -> None:
        self.clock = 0.0
        self.floor_s = floor_s
        self._base: dict[Hashable, tuple[int, float]] = {}  # key -> (uses seen, clock then)

    def priority(self, c: Candidate) -> float:
        seen = self._base.get(c.key)
        base = self.clock if seen is None or seen[0] != c.uses else seen[1]
        return base + max(1, c.uses) * max(c.startup_s, self.floor_s) / max(1, c.mem_mb)

    def rank(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        base: dict[Hashable, tuple[int, float]] = {}
        for c in candidates:
            seen = self._base.get(c.key)
            base[c.key] = seen if seen is not None and seen[0] == c.uses else (c.uses, self.clock)
        self._base = base  # forgets sandboxes that are gone
        return sorted(candidates, key=lambda c: (self.priority(c), c.order))

    def evicted(self, victim: Candidate) -> None:
        self.clock = max(self.clock, self.priority(victim))
        self._base.pop(victim.key, None)


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
    """Up to ``limit`` victims that together free at least ``need_mb`` if possible."""
    if need_mb <= 0 or limit <= 0:
        return []
    free = [c for c in candidates if c.children == 0 and c.mem_mb > 0]
    ranked = policy.rank(free)
    victims: list[Candidate] = []
    freed = 0
    for group in (True, False):  # paused first; running only when critical
        if group is False and (freed >= need_mb or not critical):
            break
        for c in ranked:
            if c.paused is not group:
                continue
            if freed >= need_mb or len(victims) >= limit:
                break
            victims.append(c)
            freed += c.mem_mb
    for victim in victims:
        policy.evicted(victim)
    return victims
