"""Per-function accounting (pure, synchronous): counters and latency histograms.

Not an actor: a plain registry that actors update in place (like a metrics
client library), read by the admin API.  A function that stopped after idling
keeps only its ``FunctionMetrics`` record — a few hundred bytes — so the
accounting survives while every other per-function structure is released.
"""

from __future__ import annotations

import math
from array import array

# Latency buckets: upper bounds growing by 25% from 0.1 ms to ~10 minutes.
_GROWTH = 1.25
_FIRST_MS = 0.1
_BUCKETS = 72
BOUNDS_MS = tuple(_FIRST_MS * _GROWTH**i for i in range(_BUCKETS))


def _bucket(ms: float) -> int:
    if ms <= _FIRST_MS:
        return 0
    return min(_BUCKETS - 1, math.ceil(math.log(ms / _FIRST_MS, _GROWTH)))


class Histogram:
    """Log-bucketed latencies; percentiles are bucket upper bounds (<= 25% high).

    The counts grow only up to the highest bucket used, so an idle function's
    histogram costs a few dozen bytes.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = array("I")
        self.total = 0

    def add(self, ms: float) -> None:
        bucket = _bucket(ms)
        if bucket >= len(self.counts):
            self.counts.extend(bytes(bucket + 1 - len(self.counts)))
        self.counts[bucket] += 1
        self.total += 1

    def percentile(self, q: float) -> float | None:
        if not self.total:
            return None
        rank = max(1, math.ceil(q / 100 * self.total))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return round(BOUNDS_MS[i], 3)
        return round(BOUNDS_MS[-1], 3)

    def summary(self) -> dict[str, float | None]:
        return {"p50_ms": self.percentile(50), "p99_ms": self.percentile(99)}


class FunctionMetrics:
    __slots__ = (
        "invocations",
        "errors",
        "rejected",
        "cold_starts",
        "warm_starts",
        "sandbox_failures",
        "sandbox_starts",
        "init_timeouts",
        "latency",
        "cpu_ms",
        "memory_peak_mb",
    )

    def __init__(self) -> None:
        self.invocations = 0  # answered requests, any outcome
        self.errors = 0  # answered with status >= 500 or an error code
        self.rejected = 0  # 429s
        self.cold_starts = 0  # a sandbox had to be created for the call
        self.warm_starts = 0  # an existing sandbox (running or paused) served it
        self.sandbox_failures = 0
        self.sandbox_starts = 0  # sandboxes asked of the pool (forked or fresh, started or not)
        self.init_timeouts = 0  # starts whose import outlasted limits.init_s
        self.cpu_ms: float = 0  # CPU time of its sandboxes (read when they pause or stop)
        self.memory_peak_mb = 0  # largest peak memory of any of its sandboxes
        self.latency = Histogram()

    def as_dict(self) -> dict[str, object]:
        return {
            "invocations": self.invocations,
            "errors": self.errors,
            "rejected_429": self.rejected,
            "cold_starts": self.cold_starts,
            "warm_starts": self.warm_starts,
            "sandbox_failures": self.sandbox_failures,
            "sandbox_starts": self.sandbox_starts,
            "init_timeouts": self.init_timeouts,
            "cpu_ms": round(self.cpu_ms, 3),
            "memory_peak_mb": self.memory_peak_mb,
            "latency": self.latency.summary(),
        }


class Metrics:
    """Every function's metrics plus worker-wide counters."""

    def __init__(self) -> None:
        self.functions: dict[str, FunctionMetrics] = {}
        self.latency = Histogram()
        self.evictions = 0
        self.evicted_mb = 0
        self.escalations = 0
        self.not_found = 0

    def function(self, name: str) -> FunctionMetrics:
        m = self.functions.get(name)
        if m is None:
            m = self.functions[name] = FunctionMetrics()
        return m

    def record_call(self, name: str | None, status: int, ms: float) -> None:
        """Count one answered call; ``name`` None (an unknown function) counts
        only worker-wide, so random names cannot grow the per-function table."""
        self.latency.add(ms)
        if name is None:
            self.not_found += 1
            return
        m = self.function(name)
        m.invocations += 1
        if status == 429:
            m.rejected += 1
        elif status >= 500:  # 499 (caller gone) is not the function's error
            m.errors += 1
        m.latency.add(ms)
