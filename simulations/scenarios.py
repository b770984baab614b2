"""The five scenarios of the simulation issue, each a function of ``scale``.

``scale`` multiplies the number of functions and the duration (rates stay),
so ``scale=0.05`` is a quick version of the same shape for tests.
"""

from __future__ import annotations

from typing import Any

from olactors.simulation import (
    Scenario,
    bursts,
    function_name,
    kills,
    merge,
    stream_rng,
    updates,
    zipf_calls,
)
from olactors.sock.simulated import CrashDuringCall, CrashWhileIdle, uniform


def _n(count: int, scale: float, least: int = 2) -> int:
    return max(least, round(count * scale))


def zipf_scenario(
    name: str,
    description: str,
    *,
    functions: int,
    zipf_s: float,
    rate_per_s: float,
    duration_s: float,
    **fields: Any,
) -> Scenario:
    """Poisson arrivals of ``rate_per_s`` over ``functions`` of Zipf(``zipf_s``)
    popularity; ``fields`` are the other :class:`Scenario` fields."""

    def workload(seed: int):
        rng = stream_rng(seed, "calls")
        return zipf_calls(rng, functions, zipf_s, rate_per_s, 0.0, duration_s)

    return Scenario(
        name=name,
        description=description,
        duration_s=duration_s,
        functions=functions,
        workload=workload,
        **fields,
    )


def steady(scale: float = 1.0) -> Scenario:
    """10,000 functions of Zipf popularity, Poisson arrivals totalling 50 req/s, 1 hour."""
    return zipf_scenario(
        "steady",
        "10,000 functions, Zipf popularity, Poisson arrivals of 50 req/s, 1 hour",
        functions=_n(10_000, scale),
        zipf_s=1.0,
        rate_per_s=50.0,
        duration_s=3600.0 * scale,
        settings=("limits.mem_mb=64", "memory.pool_mb=262144"),
        interval_s=60.0 * max(scale, 0.1),
    )


def burst(scale: float = 1.0) -> Scenario:
    """Quiet traffic on 20 functions (1 req/s each) with sudden 20x bursts of 30 s."""
    functions, duration = _n(20, scale), 900.0 * scale
    names = [function_name(i) for i in range(functions)]

    def workload(seed: int):
        rng = stream_rng(seed, "calls")
        return bursts(rng, names, 1.0, 20.0, 120.0 * max(scale, 0.2), 30.0, 0.0, duration)

    return Scenario(
        name="burst",
        description="quiet traffic with sudden 20x bursts on a few functions",
        duration_s=duration,
        functions=functions,
        workload=workload,
        settings=("queue.max_depth=16", "functions.max_instances=4"),
        service_ms=100.0,
        service_sigma=0.3,
        interval_s=30.0 * max(scale, 0.2),
    )


def memory_pressure(scale: float = 1.0) -> Scenario:
    """2,000 functions at 30 req/s with a pool that holds 128 of their sandboxes."""
    return zipf_scenario(
        "memory-pressure",
        "a pool that holds only a fraction of the working set",
        functions=_n(2000, scale, 20),
        zipf_s=0.9,
        rate_per_s=30.0,
        duration_s=900.0 * scale,
        settings=("memory.pool_mb=16640", "memory.free_goal_mb=512", "limits.mem_mb=128"),
        interval_s=60.0 * max(scale, 0.1),
    )


def crash_storm(scale: float = 1.0) -> Scenario:
    """50 functions at 20 req/s while sandboxes and zygotes crash at random."""
    functions, duration = _n(50, scale, 5), 900.0 * scale

    def workload(seed: int):
        return merge(
            [
                zipf_calls(stream_rng(seed, "calls"), functions, 0.8, 20.0, 0.0, duration),
                kills(stream_rng(seed, "leaf-kills"), "leaf", 10.0, 0.0, duration),
                kills(stream_rng(seed, "zygote-kills"), "zygote", 120.0, 0.0, duration),
            ]
        )

    def faults():
        return [
            CrashDuringCall(p=0.02, delay_s=0.005),
            CrashWhileIdle(after_s=30.0, p=0.05),
        ]

    return Scenario(
        name="crash-storm",
        description="sandboxes and zygotes crash at random: supervision, escalation, recovery",
        duration_s=duration,
        functions=functions,
        workload=workload,
        settings=("functions.restart_intensity=3", "functions.restart_period_s=10"),
        create_s=uniform(0.02, 0.06),
        faults=faults,
        interval_s=30.0 * max(scale, 0.2),
    )


def code_updates(scale: float = 1.0) -> Scenario:
    """30 functions at 30 req/s, a new version of one of them every 2 s."""
    functions, duration = _n(30, scale, 3), 900.0 * scale
    names = [function_name(i) for i in range(functions)]

    def workload(seed: int):
        return merge(
            [
                zipf_calls(stream_rng(seed, "calls"), functions, 0.8, 30.0, 0.0, duration),
                updates(stream_rng(seed, "updates"), names, 2.0, 0.0, duration),
            ]
        )

    return Scenario(
        name="code-updates",
        description="frequent code updates under load: stale instances retired",
        duration_s=duration,
        functions=functions,
        workload=workload,
        settings=("registry.cache_s=2.0",),
        interval_s=30.0 * max(scale, 0.2),
    )
