"""The simulation scenarios: ``olactors simulate NAME [--seed N] [--out DIR]``.

Each scenario is a function returning an :class:`olactors.simulation.Scenario`
at a given ``scale`` (1.0 = the documented size; tests run small scales).
``policy-study`` (:mod:`simulations.policy_study`) runs one workload through
every eviction policy at several pool sizes.
"""

from __future__ import annotations

from collections.abc import Callable

from olactors.simulation import Scenario

from .scenarios import burst, code_updates, crash_storm, memory_pressure, steady

SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "steady": steady,
    "burst": burst,
    "memory-pressure": memory_pressure,
    "crash-storm": crash_storm,
    "code-updates": code_updates,
}

__all__ = ["SCENARIOS"]
