"""Restart intensity (pure): Erlang/OTP's "at most N restarts within T seconds".

A supervisor records each restart with the current time; when more than
``max_restarts`` fall within the last ``period_s`` it must stop restarting
and escalate to its parent instead of looping.
"""

from __future__ import annotations

from collections import deque


class RestartIntensity:
    __slots__ = ("max_restarts", "period_s", "_times")

    def __init__(self, max_restarts: int, period_s: float) -> None:
        self.max_restarts = max_restarts
        self.period_s = period_s
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Record a restart at ``now``; False when this one exceeds the intensity."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.period_s:
            self._times.popleft()
        return len(self._times) <= self.max_restarts

    def recent(self, now: float) -> int:
        """Restarts within the period ending at ``now``."""
        return sum(1 for t in self._times if t > now - self.period_s)
