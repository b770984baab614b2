"""Which sandboxes to evict (pure).

OpenLambda's policy, as built: a sandbox with live children (a zygote whose
forks still run) is never a candidate — its memory could not be freed anyway.
Paused sandboxes go first, least recently used first.  Running sandboxes
(idle-but-not-yet-paused or serving a call) are taken only when ``critical``
— someone is waiting for memory — and the paused ones cannot cover the need;
evicting a running sandbox fails its in-flight call, so it is the last resort.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    key: Hashable
    paused: bool
    children: int
    mem_mb: int
    last_used: float


def choose_victims(
    candidates: Iterable[Candidate], need_mb: int, *, critical: bool, limit: int
) -> list[Candidate]:
    """Up to ``limit`` victims that together free at least ``need_mb`` if possible."""
    if need_mb <= 0 or limit <= 0:
        return []
    free = [c for c in candidates if c.children == 0 and c.mem_mb > 0]
    paused = sorted((c for c in free if c.paused), key=lambda c: c.last_used)
    victims: list[Candidate] = []
    freed = 0
    for c in paused:
        if freed >= need_mb or len(victims) >= limit:
            return victims
        victims.append(c)
        freed += c.mem_mb
    if freed >= need_mb or not critical:
        return victims
    running = sorted((c for c in free if not c.paused), key=lambda c: c.last_used)
    for c in running:
        if freed >= need_mb or len(victims) >= limit:
            break
        victims.append(c)
        freed += c.mem_mb
    return victims
