"""Workloads: what happens when, as a time-ordered stream of actions (pure).

A scenario's workload is one iterator of actions sorted by virtual time,
usually several generators merged with :func:`merge`.  Each generator draws
from its own ``random.Random``, seeded from the run's seed and the stream's
name (:func:`stream_rng`), so adding a stream never shifts another's draws.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Call:
    """A request for ``function``."""

    at: float
    function: str


@dataclass(frozen=True, slots=True)
class Update:
    """A new version of ``function`` is published to the registry."""

    at: float
    function: str


@dataclass(frozen=True, slots=True)
class Kill:
    """A random live sandbox of ``kind`` ("leaf" or "zygote") dies on its own."""

    at: float
    kind: str


@dataclass(frozen=True, slots=True)
class Squeeze:
    """Someone else takes ``mb`` of the memory pool for ``hold_s`` (memory pressure)."""

    at: float
    mb: int
    hold_s: float


Action = Call | Update | Kill | Squeeze


def stream_rng(seed: int, stream: str) -> random.Random:
    """The random source of one named stream of a run (string seeds hash stably)."""
    return random.Random(f"olactors-sim:{seed}:{stream}")


def function_name(index: int) -> str:
    return f"f{index:05d}"


class Zipf:
    """Draws function indexes ``0..n-1``, index ``i`` with weight ``1 / (i+1)**s``."""

    def __init__(self, n: int, s: float) -> None:
        self.cumulative = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))

    def draw(self, rng: random.Random) -> int:
        return bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1])


def poisson_times(
    rng: random.Random, rate_per_s: float, start: float, end: float
) -> Iterator[float]:
    """Arrival times of a Poisson process of ``rate_per_s`` in ``[start, end)``."""
    if rate_per_s <= 0:
        return
    t = start
    while True:
        t += rng.expovariate(rate_per_s)
        if t >= end:
            return
        yield t


def zipf_calls(
    rng: random.Random, functions: int, s: float, rate_per_s: float, start: float, end: float
) -> Iterator[Call]:
    """Poisson arrivals totalling ``rate_per_s``, each for a Zipf-popular function."""
    zipf = Zipf(functions, s)
    for t in poisson_times(rng, rate_per_s, start, end):
        yield Call(t, function_name(zipf.draw(rng)))


def bursts(
    rng: random.Random,
    names: list[str],
    base_rate_per_s: float,
    factor: float,
    every_s: float,
    length_s: float,
    start: float,
    end: float,
) -> Iterator[Action]:
    """Calls to ``names`` at ``base_rate_per_s`` each, and ``factor`` times that
    during a burst of ``length_s`` starting every ``every_s`` (one random name
    per burst)."""
    per_name = [poisson_times(rng, base_rate_per_s, start, end) for _ in names]
    quiet = merge(
        [(Call(t, name) for t in times) for name, times in zip(names, per_name, strict=True)]
    )
    loud: list[Iterator[Call]] = []
    t = start + every_s
    while t < end:
        name = names[rng.randrange(len(names))]
        stop = min(end, t + length_s)
        extra = base_rate_per_s * (factor - 1)
        loud.append(Call(x, name) for x in list(poisson_times(rng, extra, t, stop)))
        t += every_s
    return merge([quiet, *loud])


def updates(
    rng: random.Random, names: list[str], every_s: float, start: float, end: float
) -> Iterator[Update]:
    """A code update every ``every_s`` on average, each for a random name."""
    for t in poisson_times(rng, 1.0 / every_s, start, end):
        yield Update(t, names[rng.randrange(len(names))])


def kills(
    rng: random.Random, kind: str, every_s: float, start: float, end: float
) -> Iterator[Kill]:
    for t in poisson_times(rng, 1.0 / every_s, start, end):
        yield Kill(t, kind)


def merge(streams: Iterable[Iterable[Action]]) -> Iterator[Action]:
    """Streams each sorted by time, merged into one (ties keep stream order)."""
    return heapq.merge(*streams, key=lambda action: action.at)


def lognormal_mean(rng: random.Random, mean: float, sigma: float) -> float:
    """A draw from a lognormal whose mean is ``mean``."""
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)
