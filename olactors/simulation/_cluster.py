"""A cluster in one simulation: N real workers (simulated sandboxes) behind a balancer policy.

:func:`run_cluster` plays one Zipf workload through ``N`` workers, each the
real worker (:func:`olactors.worker.open_worker`: manager, functions,
supervised instances, import cache, memory pool, evictor, code puller) on
its own :class:`~olactors.sock.simulated.SimulatedPool`, all in one
``trio.run`` under ``MockClock`` with trio's scheduler seeded, sharing one
:class:`SimulatedRegistry` (the code store).  In front, the balancer picks
a worker per call with HAProxy's own policy (:mod:`olactors._balancing`):
``consistent`` (the ring on the function name, ``hash-balance-factor``
bounding each worker's requests in flight) or ``roundrobin``.

What a worker cannot simulate itself is modelled here, per worker: the
function's **packages** (:class:`PackageModel`).  Each function declares a
few distributions drawn by popularity; the first call of a function on a
worker waits for those of its distributions that worker has not installed
yet (one install per distribution and worker, shared by concurrent calls,
taking ``install_base_s + size / install_mb_per_s``), and the worker keeps
them (its disk, reported per worker; no ``packages.max_disk_mb`` trim).

Figures: the cold-start share (sandboxes created for a call over all
calls that got a sandbox, from the workers' own metrics), p50/p99 latency
of successful calls (arrival to answer, package waits included), the
installed-package disk per worker, and how the calls and functions spread.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import trio
import trio.testing

from .._balancing import HashRing, RoundRobin, Server, key_hash
from .._config import Config, build_config
from .._errors import OlactorsError
from .._groups import lone_errors_unwrapped
from ..sock import Invocation, InvocationResult
from ..sock.simulated import (
    Latency,
    SimulatedBehaviour,
    SimulatedSandbox,
    constant,
    open_simulated_pool,
)
from ..worker import Worker, open_worker
from ._determinism import deterministic_scheduler
from ._harness import BASE_SETTINGS, scratch_dir
from ._record import percentile
from ._registry import SimulatedRegistry
from ._workload import Zipf, function_name, lognormal_mean, poisson_times, stream_rng

#: The hash-balance-factor ``olactors cluster haproxy-config`` writes (a worker
#: takes at most 150 % of the average requests in flight, rounded up).
DEFAULT_BALANCE_FACTOR = 150


class Routing(Enum):
    """``consistent``: the ring with the scenario's ``hash-balance-factor``;
    ``consistent-unbounded``: the ring alone (no factor: a hot function
    stays on its one worker); ``roundrobin``."""

    CONSISTENT = "consistent"
    CONSISTENT_UNBOUNDED = "consistent-unbounded"
    ROUND_ROBIN = "roundrobin"


@dataclass(frozen=True)
class PackageModel:
    """Which distributions functions use, their sizes and install times (a model)."""

    distributions: int = 2000
    popularity_s: float = 1.1  # Zipf exponent over distributions (a few are everywhere)
    #: P(a function declares 0, 1, 2, ... distributions)
    per_function: tuple[float, ...] = (0.3, 0.3, 0.2, 0.12, 0.08)
    mean_mb: float = 12.0  # installed size, lognormal around this mean
    sigma: float = 1.2
    install_base_s: float = 0.5
    install_mb_per_s: float = 50.0

    def draw(self, seed: int, functions: int) -> tuple[list[float], list[tuple[int, ...]]]:
        """Sizes (MB) of every distribution, and each function's distributions."""
        rng = stream_rng(seed, "packages")
        sizes = [lognormal_mean(rng, self.mean_mb, self.sigma) for _ in range(self.distributions)]
        zipf = Zipf(self.distributions, self.popularity_s)
        counts = list(range(len(self.per_function)))
        uses = []
        for _ in range(functions):
            (count,) = rng.choices(counts, weights=self.per_function)
            chosen: set[int] = set()
            while len(chosen) < count:
                chosen.add(zipf.draw(rng))
            uses.append(tuple(sorted(chosen)))
        return sizes, uses

    def install_s(self, size_mb: float) -> float:
        return self.install_base_s + size_mb / self.install_mb_per_s


@dataclass(frozen=True)
class ClusterScenario:
    """``calls`` Poisson arrivals at ``rate_per_s`` (cluster-wide) over
    ``functions`` of Zipf(``zipf_s``) popularity, through ``workers`` workers
    each started with ``settings``."""

    name: str
    workers: int
    functions: int
    calls: int
    rate_per_s: float
    zipf_s: float = 1.0
    service_ms: float = 20.0
    service_sigma: float = 1.0
    settings: tuple[str, ...] = ()
    packages: PackageModel = field(default_factory=PackageModel)
    balance_factor: int = DEFAULT_BALANCE_FACTOR
    create_s: Latency = field(default_factory=lambda: constant(0.030))
    fork_s: Latency = field(default_factory=lambda: constant(0.005))


@dataclass
class ClusterResult:
    scenario: str
    routing: Routing
    workers: int
    seed: int
    digest: str
    real_s: float
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        s = self.summary
        return s["unanswered"] == 0 and s["exceptions"] == 0 and s["logged_exceptions"] == 0


class _Host:
    """One simulated machine: a worker and the packages installed on it."""

    def __init__(self, puid: int, worker: Worker) -> None:
        self.puid = puid
        self.worker = worker
        self.installed: set[int] = set()
        self.installing: dict[int, trio.Event] = {}
        self.disk_mb = 0.0
        self.calls = 0
        self.functions: set[str] = set()
        self.installs = 0


class _Cluster:
    def __init__(
        self, scenario: ClusterScenario, routing: Routing, seed: int, scratch: Path
    ) -> None:
        self.scratch = scratch  # each worker's own dir is a subdirectory
        self.scenario = scenario
        self.routing = routing
        self.seed = seed
        self.config: Config = build_config(
            None, (*BASE_SETTINGS, *scenario.settings), origin="simulation"
        )
        self.sizes, self.uses = scenario.packages.draw(seed, scenario.functions)
        means = stream_rng(seed, "service")
        self.service_mean_s = {
            function_name(i): lognormal_mean(means, scenario.service_ms, scenario.service_sigma)
            / 1000
            for i in range(scenario.functions)
        }
        self.hosts: dict[int, _Host] = {}
        self.served: dict[int, int] = {}
        puids = list(range(1, scenario.workers + 1))
        self.ring = HashRing([Server(p) for p in puids])
        self.round_robin = RoundRobin(puids)
        self.hashes = [key_hash(function_name(i)) for i in range(scenario.functions)]
        self.latencies_ms: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.spilled = 0
        self.exceptions = 0
        self.answered = 0
        self.digest = hashlib.sha256()
        self.virtual_s = 0.0

    # ---------------------------------------------------------------- run
    async def main(self) -> None:
        registry = SimulatedRegistry()
        for i in range(self.scenario.functions):
            registry.add(function_name(i))
        with lone_errors_unwrapped():
            async with AsyncExitStack() as stack:
                for puid in self.ring_puids():
                    behaviour = SimulatedBehaviour(
                        rng=stream_rng(self.seed, f"sandboxes-{puid}"),
                        create_s=self.scenario.create_s,
                        fork_s=self.scenario.fork_s,
                        handler=self.handler,
                    )
                    pool = await stack.enter_async_context(open_simulated_pool(behaviour))
                    worker = await stack.enter_async_context(
                        open_worker(
                            self.config,
                            self.scratch / f"worker-{puid}",
                            pool=pool,
                            code_source=registry,
                            recording=False,  # no records store: its threads break replay
                            state=False,  # nor a state dir, for the same reason
                        )
                    )
                    self.hosts[puid] = _Host(puid, worker)
                    self.served[puid] = 0
                async with trio.open_nursery() as calls:
                    await self.play(calls)
                self.virtual_s = trio.current_time()
                self.cold, self.warm = self.starts()

    def ring_puids(self) -> list[int]:
        return list(range(1, self.scenario.workers + 1))

    async def play(self, calls: trio.Nursery) -> None:
        rng = stream_rng(self.seed, "calls")
        zipf = Zipf(self.scenario.functions, self.scenario.zipf_s)
        times = poisson_times(rng, self.scenario.rate_per_s, 0.0, math.inf)
        for number in range(self.scenario.calls):
            at = next(times)
            index = zipf.draw(rng)
            await trio.sleep_until(at)
            puid = self.choose(index)
            calls.start_soon(self.call, number, index, puid)

    def choose(self, index: int) -> int:
        if self.routing is Routing.ROUND_ROBIN:
            return self.round_robin.choose()
        h = self.hashes[index]
        factor = self.scenario.balance_factor if self.routing is Routing.CONSISTENT else 0
        puid = self.ring.choose(h, self.served, factor)
        if puid != self.ring.owner(h):
            self.spilled += 1
        return puid

    async def call(self, number: int, index: int, puid: int) -> None:
        name = function_name(index)
        host = self.hosts[puid]
        arrived = trio.current_time()
        self.served[puid] += 1
        host.calls += 1
        host.functions.add(name)
        try:
            await self.packages(host, index)
            result = await host.worker.invoke(name, Invocation(), f"sim-{number}")
            outcome = str(result.status)
        except OlactorsError as exc:
            outcome = exc.code
        except Exception as exc:  # any other exception is a bug: no clear answer
            outcome = f"exception {type(exc).__name__}"
            self.exceptions += 1
        finally:
            self.served[puid] -= 1
        now = trio.current_time()
        self.answered += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome == "200":
            self.latencies_ms.append((now - arrived) * 1000)
        self.digest.update(f"{number} {puid} {outcome} {now - arrived:.6f}\n".encode())

    async def packages(self, host: _Host, index: int) -> None:
        """Wait until the function's distributions are installed on ``host``."""
        model = self.scenario.packages
        for dist in self.uses[index]:
            if dist in host.installed:
                continue
            flight = host.installing.get(dist)
            if flight is not None:
                await flight.wait()
                continue
            flight = host.installing[dist] = trio.Event()
            try:
                await trio.sleep(model.install_s(self.sizes[dist]))
                host.installed.add(dist)
                host.disk_mb += self.sizes[dist]
                host.installs += 1
            finally:
                del host.installing[dist]
                flight.set()

    async def handler(self, sandbox: SimulatedSandbox, inv: Invocation) -> InvocationResult:
        mean_s = self.service_mean_s.get(sandbox.meta.label, self.scenario.service_ms / 1000)
        await trio.sleep(sandbox.rng.expovariate(1 / mean_s))
        return InvocationResult(200, (), b"ok")

    def starts(self) -> tuple[int, int]:
        cold = warm = 0
        for host in self.hosts.values():
            for m in host.worker.metrics.functions.values():
                cold += m.cold_starts
                warm += m.warm_starts
        return cold, warm

    # ------------------------------------------------------------- result
    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        started = self.cold + self.warm
        disks = sorted(h.disk_mb for h in self.hosts.values())
        calls = [h.calls for h in self.hosts.values()]
        functions = [len(h.functions) for h in self.hosts.values()]
        n = len(self.hosts)
        return {
            "workers": n,
            "routing": self.routing.value,
            "functions": self.scenario.functions,
            "calls": self.scenario.calls,
            "ok": self.outcomes.get("200", 0),
            "errors": self.answered - self.outcomes.get("200", 0),
            "outcomes": dict(sorted(self.outcomes.items())),
            "unanswered": self.scenario.calls - self.answered,
            "exceptions": self.exceptions,
            "cold_starts": self.cold,
            "cold_start_share": round(self.cold / started, 4) if started else 0.0,
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
            "package_disk_mb_mean": round(sum(disks) / n, 1),
            "package_disk_mb_max": round(disks[-1], 1),
            "package_installs": sum(h.installs for h in self.hosts.values()),
            "functions_per_worker_mean": round(sum(functions) / n, 1),
            "calls_per_worker_max_over_mean": round(max(calls) / (sum(calls) / n), 3),
            "spilled_share": round(self.spilled / self.scenario.calls, 4),
            "balance_factor": self.scenario.balance_factor
            if self.routing is Routing.CONSISTENT
            else None,
            "virtual_s": round(self.virtual_s, 3),
        }


def run_cluster(scenario: ClusterScenario, routing: Routing, seed: int) -> ClusterResult:
    """Play ``scenario`` through its workers routed by ``routing``; the same
    seed gives the same run (its digest covers every call's worker, outcome
    and latency)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    started = time.perf_counter()
    with scratch_dir() as scratch:
        cluster = _Cluster(scenario, routing, seed, scratch)
        with deterministic_scheduler(seed), _CrashCounter() as crashes:
            trio.run(cluster.main, clock=clock)
    real_s = time.perf_counter() - started
    summary = cluster.summary()
    summary["logged_exceptions"] = crashes.count
    summary["real_s"] = round(real_s, 2)
    return ClusterResult(
        scenario=scenario.name,
        routing=routing,
        workers=scenario.workers,
        seed=seed,
        digest=cluster.digest.hexdigest()[:16],
        real_s=real_s,
        summary=summary,
    )


class _CrashCounter(logging.Handler):
    """During a run the worker's logs stay off the console (WARNING and up are
    only counted); a record with a traceback is an actor's unexpected
    exception, counted as ``logged_exceptions``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.root = logging.getLogger("olactors")

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.count += 1

    def __enter__(self) -> _CrashCounter:
        self.saved = (self.root.level, self.root.propagate)
        self.root.setLevel(logging.WARNING)
        self.root.propagate = False
        self.root.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.root.removeHandler(self)
        self.root.setLevel(self.saved[0])
        self.root.propagate = self.saved[1]
