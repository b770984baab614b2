"""Counters for cgroup operations that were slow, timed out or failed.

The kernel freezes, kills and removes cgroups asynchronously; under load any of
these can take far longer than usual or never finish.  None of that may crash
the worker: the operation that noticed it logs a warning on the
``olactors.cgroups`` logger, records it here, and (for timeouts and failures)
raises :class:`~olactors._errors.CgroupError` to its caller, which decides
what to do (usually: destroy the sandbox, never reuse the cgroup).

One :class:`CgroupAnomalies` object is shared by a backend, its cgroups and
the pool.  It is plain synchronous state (no locks are needed under trio).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger("olactors.cgroups")

#: Operations whose duration is tracked.
OPERATIONS = ("freeze", "thaw", "kill", "remove")

#: Anomaly kinds; each is reported per operation as ``<kind>_<op>``.
KINDS = ("slow", "timeout", "failed")

DEFAULT_SLOW_THRESHOLD = 0.050


@dataclass(slots=True)
class _Counter:
    count: int = 0
    max_seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.max_seconds = max(self.max_seconds, seconds)


class CgroupAnomalies:
    """Count slow, timed-out and failed cgroup operations.

    ``slow_threshold`` (seconds, default 50 ms): an operation that completed
    but took longer than this counts as ``slow_<op>``.  A timeout counts only
    as ``timeout_<op>`` (not also as slow); any other failure as
    ``failed_<op>``.  Recording never raises.
    """

    def __init__(self, slow_threshold: float = DEFAULT_SLOW_THRESHOLD) -> None:
        if slow_threshold < 0:
            raise ValueError("slow_threshold must be >= 0")
        self.slow_threshold = slow_threshold
        self._counters: dict[str, _Counter] = {
            f"{kind}_{op}": _Counter() for kind in KINDS for op in OPERATIONS
        }

    def _counter(self, key: str) -> _Counter:
        # Unknown operations are accepted (never crash over bookkeeping).
        return self._counters.setdefault(key, _Counter())

    def completed(self, op: str, seconds: float, what: str = "") -> None:
        """Record a successful ``op`` that took ``seconds``; counts it if slow."""
        if seconds > self.slow_threshold:
            self._counter(f"slow_{op}").add(seconds)
            logger.warning("slow cgroup %s%s: %.1f ms", op, _about(what), seconds * 1e3)

    def timed_out(self, op: str, seconds: float, what: str = "") -> None:
        """Record that ``op`` gave up after ``seconds`` without reaching its goal."""
        self._counter(f"timeout_{op}").add(seconds)
        logger.warning("cgroup %s timed out%s after %.1f ms", op, _about(what), seconds * 1e3)

    def failed(self, op: str, seconds: float, what: str = "", error: object = None) -> None:
        """Record that ``op`` failed (e.g. a cgroup that could not be removed)."""
        self._counter(f"failed_{op}").add(seconds)
        logger.warning("cgroup %s failed%s: %s", op, _about(what), error)

    def count(self, key: str) -> int:
        """Return the count for ``key`` (e.g. ``"timeout_freeze"``), 0 if never seen."""
        counter = self._counters.get(key)
        return counter.count if counter else 0

    def total(self) -> int:
        """Total number of anomalies of every kind."""
        return sum(c.count for c in self._counters.values())

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Return ``{"<kind>_<op>": {"count": n, "max_seconds": s}}`` for every key.

        Every known key is always present (zero when nothing happened), so the
        shape is stable for metrics exporters.
        """
        return {
            key: {"count": c.count, "max_seconds": round(c.max_seconds, 6)}
            for key, c in sorted(self._counters.items())
        }


def _about(what: str) -> str:
    return f" ({what})" if what else ""
