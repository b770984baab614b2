"""How many instances a function wants (pure: no trio, time is a parameter).

The rule is OpenLambda's: with ``outstanding`` requests (queued, in hand and
running) and a recent average handler time of ``avg_ms``,

    desired = min(outstanding, ceil(outstanding * avg_ms / 10)), at least 1,

capped by the function's ``max_instances``.  Fast handlers (avg_ms < 10 ms)
need fewer instances than requests: one instance drains several requests
within the 10 ms target; slow ones get one instance per outstanding request.
The instance count moves toward ``desired`` by one step per ``interval_s``
(100 ms by default), so a short spike does not start a crowd of sandboxes.
"""

from __future__ import annotations

import math
from collections import deque


def desired_instances(outstanding: int, avg_ms: float, max_instances: int) -> int:
    """OpenLambda's target instance count, in ``[1, max_instances]``."""
    if outstanding <= 0:
        return 1
    desired = min(outstanding, math.ceil(outstanding * max(avg_ms, 0.0) / 10.0))
    return max(1, min(max_instances, desired))


class Scaler:
    """One scaling step per ``interval_s``: ``decide`` returns +1, -1 or 0."""

    __slots__ = ("interval_s", "max_instances", "_last_step")

    def __init__(self, interval_s: float, max_instances: int) -> None:
        self.interval_s = interval_s
        self.max_instances = max_instances
        self._last_step = -math.inf

    def decide(self, now: float, current: int, outstanding: int, avg_ms: float) -> int:
        desired = desired_instances(outstanding, avg_ms, self.max_instances)
        if desired == current or now - self._last_step < self.interval_s:
            return 0
        self._last_step = now
        return 1 if desired > current else -1


class RecentDurations:
    """Mean of the last ``window`` handler durations (ms); 0 before the first."""

    __slots__ = ("_values", "_sum")

    def __init__(self, window: int = 32) -> None:
        self._values: deque[float] = deque(maxlen=window)
        self._sum = 0.0

    def add(self, ms: float) -> None:
        if len(self._values) == self._values.maxlen:
            self._sum -= self._values[0]
        self._values.append(ms)
        self._sum += ms

    @property
    def mean_ms(self) -> float:
        return self._sum / len(self._values) if self._values else 0.0
