"""Deterministic simulation of the worker: real actors, simulated sandboxes, virtual time.

See :func:`run_scenario`; the scenarios themselves live in the top-level
``simulations`` package (``olactors simulate NAME``).
"""

from ._checks import Checker, Violation
from ._cluster import ClusterResult, ClusterScenario, PackageModel, Routing, run_cluster
from ._determinism import deterministic_scheduler
from ._harness import BASE_SETTINGS, Scenario, SimResult, run_scenario
from ._registry import SimulatedRegistry
from ._workload import (
    Action,
    Call,
    Kill,
    Squeeze,
    Update,
    Zipf,
    bursts,
    function_name,
    kills,
    merge,
    poisson_times,
    stream_rng,
    updates,
    zipf_calls,
)

__all__ = [
    "BASE_SETTINGS",
    "Action",
    "Call",
    "Checker",
    "ClusterResult",
    "ClusterScenario",
    "Kill",
    "PackageModel",
    "Routing",
    "Scenario",
    "SimResult",
    "SimulatedRegistry",
    "Squeeze",
    "Update",
    "Violation",
    "Zipf",
    "bursts",
    "deterministic_scheduler",
    "function_name",
    "kills",
    "merge",
    "poisson_times",
    "run_cluster",
    "run_scenario",
    "stream_rng",
    "updates",
    "zipf_calls",
]
