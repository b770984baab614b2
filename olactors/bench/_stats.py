"""Percentiles for benchmark samples."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def p50(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def p99(xs: Sequence[float]) -> float:
    ordered = sorted(xs)
    index = min(len(ordered) - 1, max(0, round(0.99 * (len(ordered) - 1))))
    return ordered[index]
