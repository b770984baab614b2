"""What a run records: the event trace (and its digest) and per-interval figures."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field


class Trace:
    """Every event of a run, one line each; the digest covers them all, in order.

    Lines are kept only when asked (a long run has millions); the digest is
    always computed.  Times are virtual seconds with microsecond resolution.
    """

    def __init__(self, keep: bool = False) -> None:
        self._hash = hashlib.sha256()
        self.lines: list[str] | None = [] if keep else None
        self.count = 0

    def add(self, at: float, *fields: object) -> None:
        line = f"{at:.6f} " + " ".join(map(str, fields))
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.count += 1
        if self.lines is not None:
            self.lines.append(line)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()[:16]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class Interval:
    """Figures of one interval of virtual time (``start`` to ``start + length``)."""

    start: float
    arrivals: int = 0
    completed: int = 0
    ok: int = 0
    rejected_429: int = 0
    errors: int = 0
    cold_starts: int = 0
    evictions: int = 0
    restarts: int = 0
    escalations: int = 0
    sandboxes: int = 0  # live at the end of the interval
    memory_used_mb: int = 0  # reserved at the end of the interval
    latencies_ms: list[float] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        return {
            "t_s": round(self.start, 3),
            "arrivals": self.arrivals,
            "completed": self.completed,
            "ok": self.ok,
            "rejected_429": self.rejected_429,
            "errors": self.errors,
            "cold_starts": self.cold_starts,
            "cold_start_share": round(self.cold_starts / self.completed, 4)
            if self.completed
            else 0.0,
            "evictions": self.evictions,
            "restarts": self.restarts,
            "escalations": self.escalations,
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
            "sandboxes": self.sandboxes,
            "memory_used_mb": self.memory_used_mb,
        }


class Intervals:
    def __init__(self, length_s: float) -> None:
        self.length_s = length_s
        self.items: list[Interval] = []

    def at(self, t: float) -> Interval:
        index = max(0, int(t // self.length_s))
        while len(self.items) <= index:
            self.items.append(Interval(len(self.items) * self.length_s))
        return self.items[index]
