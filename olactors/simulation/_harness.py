"""Run a scenario: the real worker, simulated sandboxes and code, virtual time.

:func:`run_scenario` starts ``trio.run`` with an autojumping
``MockClock`` and trio's scheduler seeded (:mod:`._determinism`), opens a
:class:`~olactors.sock.simulated.SimulatedPool` and the real worker
(:func:`olactors.worker.open_worker`: manager, functions, supervised
instances, import cache, memory pool, evictor, code puller) with a
:class:`SimulatedRegistry` as code source, plays the scenario's actions at
their virtual times, waits for every function to idle out, and shuts down.
Every random draw comes from a ``random.Random`` seeded from the run's seed,
so the same seed gives the same trace, byte for byte; the trace's digest is
in the result.  The invariants of :mod:`._checks` are checked throughout.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio.testing

from .._causes import Cause, CauseCode, SignalSender, released
from .._config import Config, build_config
from .._errors import FunctionFailing, OlactorsError, QueueFull
from .._groups import lone_errors_unwrapped
from ..actors.evictor import EvictionRound
from ..sock import (
    Invocation,
    InvocationResult,
    SandboxChildExited,
    SandboxCreated,
    SandboxDestroyed,
    SandboxEvent,
    SandboxForked,
    SandboxState,
)
from ..sock.simulated import (
    Fault,
    Latency,
    SimulatedBehaviour,
    SimulatedPool,
    SimulatedSandbox,
    constant,
    open_simulated_pool,
)
from ..worker import Worker, open_worker
from ._checks import Checker
from ._determinism import deterministic_scheduler
from ._record import Intervals, Trace, percentile
from ._registry import SimulatedRegistry
from ._workload import (
    Action,
    Call,
    Kill,
    Squeeze,
    Update,
    function_name,
    lognormal_mean,
    stream_rng,
)

#: How the harness's kill actions end a sandbox (killed from outside, e.g. by an operator).
SIMULATED_KILL = Cause.of(CauseCode.SIGNAL, signal="SIGKILL", sender=SignalSender.OTHER.value)
#: How a run's scratch directory (see :func:`scratch_dir`) is named in the temp dir.
SCRATCH_PREFIX = "olactors-simulation-"

#: Worker settings every simulation starts from (a scenario adds its own).
BASE_SETTINGS = (
    "memory.free_goal_mb=0",
    "memory.reserve_timeout_s=30",
    "limits.zygote_mem_mb=256",
)


@dataclass(frozen=True)
class Scenario:
    """A named workload: settings, function count, actions, sandbox behaviour.

    ``workload(seed)`` yields the actions sorted by time (only those before
    ``duration_s`` are played).  Handlers take ``service_ms`` on average: each
    function's own mean is drawn once (lognormal, ``service_sigma``), each
    call's duration is exponential around it.  ``faults()`` arms the
    simulated pool's fault hooks.
    """

    name: str
    description: str
    duration_s: float
    functions: int
    workload: Callable[[int], Iterable[Action]]
    settings: tuple[str, ...] = ()
    service_ms: float = 20.0
    service_sigma: float = 1.0
    create_s: Latency = field(default_factory=lambda: constant(0.030))
    fork_s: Latency = field(default_factory=lambda: constant(0.005))
    faults: Callable[[], list[Fault]] = list
    interval_s: float = 60.0


@dataclass
class SimResult:
    scenario: str
    seed: int
    settings: tuple[str, ...]
    digest: str
    events: int
    real_s: float
    virtual_s: float
    summary: dict[str, Any]
    intervals: list[dict[str, object]]
    violations: list[str]
    trace: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A new temporary directory for one run's simulated workers, removed when the run ends.

    The worker keeps a little on disk even in a simulation (its package
    store's directory and staging area; no records database, no state
    dir), so each run gets its own directory: concurrent runs never share
    a file, and none is left behind.  Nothing written there is in the
    trace, so the path (random per run) does not change the digest.
    """
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as path:
        yield Path(path)


def run_scenario(
    scenario: Scenario,
    seed: int,
    *,
    settings: Iterable[str] = (),
    keep_trace: bool = False,
) -> SimResult:
    """Run ``scenario`` with ``seed`` (and extra worker ``settings``) to the end."""
    all_settings = (*BASE_SETTINGS, *scenario.settings, *settings)
    config = build_config(None, all_settings, origin="simulation")
    clock = trio.testing.MockClock(autojump_threshold=0)
    started = time.perf_counter()
    with scratch_dir() as worker_dir:
        run = _Run(scenario, config, seed, keep_trace, worker_dir)
        with deterministic_scheduler(seed), _QuietLogs(run):
            trio.run(run.main, clock=clock)
    real_s = time.perf_counter() - started
    return run.result(all_settings, real_s)


class _Run:
    def __init__(
        self, scenario: Scenario, config: Config, seed: int, keep: bool, worker_dir: Path
    ) -> None:
        self.scenario = scenario
        self.worker_dir = worker_dir
        self.config = config
        self.seed = seed
        self.trace = Trace(keep)
        self.intervals = Intervals(scenario.interval_s)
        self.checker = Checker(config)
        self.kill_rng = stream_rng(seed, "kills")
        means = stream_rng(seed, "service")
        self.service_mean_s = {
            function_name(i): lognormal_mean(means, scenario.service_ms, scenario.service_sigma)
            / 1000
            for i in range(scenario.functions)
        }
        self.requests = 0
        self.ok_latencies: list[float] = []
        self.counts = {"ok": 0, "rejected_429": 0, "errors": 0, "restarts": 0, "escalations": 0}
        self.cold_starts = 0
        self.warm_starts = 0
        self.evictions = 0
        self.peak_memory_mb = 0
        self.pool_mb = config.memory.pool_mb
        self.created = 0
        self.virtual_s = 0.0

    # ----------------------------------------------------------- the run
    async def main(self) -> None:
        baseline = trio.lowlevel.current_statistics().tasks_living
        registry = SimulatedRegistry()
        for i in range(self.scenario.functions):
            registry.add(function_name(i))
        behaviour = SimulatedBehaviour(
            rng=stream_rng(self.seed, "sandboxes"),
            create_s=self.scenario.create_s,
            fork_s=self.scenario.fork_s,
            handler=self.handler,
            faults=self.scenario.faults(),
        )
        with lone_errors_unwrapped():
            async with trio.open_nursery() as observers:
                async with open_simulated_pool(behaviour) as pool:
                    pool.listen(self.observe)
                    async with open_worker(
                        self.config,
                        self.worker_dir,
                        pool=pool,
                        code_source=registry,
                        recording=False,  # no records store: its threads would break replay
                        state=False,  # nor a state dir (secrets, tokens, owners): same reason
                    ) as worker:
                        worker.evictor.audit = partial(self.audit_eviction, worker, pool)
                        observers.start_soon(self.sample, worker, pool)
                        async with trio.open_nursery() as calls:
                            await self.play(worker, pool, registry, calls)
                        await self.drain(worker, pool)
                        self.collect(worker)
                    self.check_closed(pool)
                observers.cancel_scope.cancel()
        self.virtual_s = trio.current_time()
        # Only this task (and trio's system tasks, counted in the baseline) is left.
        left = trio.lowlevel.current_statistics().tasks_living - baseline
        if left > 0:
            self.checker.fail(trio.current_time(), "drain", f"{left} tasks left behind")

    async def play(
        self, worker: Worker, pool: SimulatedPool, registry: SimulatedRegistry, calls: trio.Nursery
    ) -> None:
        for action in self.scenario.workload(self.seed):
            if action.at >= self.scenario.duration_s:
                break
            await trio.sleep_until(action.at)
            now = trio.current_time()
            if isinstance(action, Call):
                self.requests += 1
                calls.start_soon(self.call, worker, self.requests, action.function)
            elif isinstance(action, Update):
                version = registry.update(action.function)
                self.checker.code_updated(now, action.function, version)
                self.trace.add(now, "update", action.function, f"v{version}")
            elif isinstance(action, Kill):
                self.kill(pool, action.kind, now)
            elif isinstance(action, Squeeze):
                calls.start_soon(self.squeeze, worker, action)
        await trio.sleep_until(self.scenario.duration_s)

    async def call(self, worker: Worker, number: int, function: str) -> None:
        arrived = trio.current_time()
        self.intervals.at(arrived).arrivals += 1
        self.trace.add(arrived, "call", number, function)
        self.checker.accepted_request(number, arrived)
        version = None
        try:
            result = await worker.invoke(function, Invocation(), f"sim-{number}")
            outcome = str(result.status)
            version = dict(result.headers).get("x-sim-version")
        except OlactorsError as exc:
            outcome = "429" if isinstance(exc, QueueFull) else exc.code
            self.checker.failed_request(trio.current_time(), number, exc)
            if isinstance(exc, QueueFull):
                self.checker.rejected_429(arrived, function, exc.queued)
            elif isinstance(exc, FunctionFailing):
                self.checker.function_failing(trio.current_time(), function)
        except Exception as exc:  # any other exception is a bug: no clear error
            outcome = "exception"
            self.checker.fail(arrived, "exactly_once", f"request {number} raised {exc!r}")
        now = trio.current_time()
        self.checker.completed_request(number, now)
        self.trace.add(now, "done", number, outcome)
        interval = self.intervals.at(now)
        interval.completed += 1
        if outcome == "200":
            self.counts["ok"] += 1
            interval.ok += 1
            latency_ms = (now - arrived) * 1000
            interval.latencies_ms.append(latency_ms)
            self.ok_latencies.append(latency_ms)
            if version is not None:
                self.checker.served(now, arrived, function, int(version[1:]))
        elif outcome == "429":
            self.counts["rejected_429"] += 1
            interval.rejected_429 += 1
        else:
            self.counts["errors"] += 1
            interval.errors += 1

    async def handler(self, sandbox: SimulatedSandbox, inv: Invocation) -> InvocationResult:
        mean_s = self.service_mean_s.get(sandbox.meta.label, self.scenario.service_ms / 1000)
        await trio.sleep(sandbox.rng.expovariate(1 / mean_s))
        version = os.path.basename(sandbox.code_dir or "v0")
        return InvocationResult(200, (("x-sim-version", version),), b"ok")

    def kill(self, pool: SimulatedPool, kind: str, now: float) -> None:
        live = [
            sb
            for sb in pool.sandboxes()
            if sb.is_leaf == (kind == "leaf") and sb.state is not SandboxState.DEAD
        ]
        if not live:
            self.trace.add(now, "kill", kind, "-")
            return
        victim = live[self.kill_rng.randrange(len(live))]
        self.trace.add(now, "kill", kind, victim.id)
        pool.kill(victim, SIMULATED_KILL)

    async def squeeze(self, worker: Worker, action: Squeeze) -> None:
        self.trace.add(trio.current_time(), "squeeze", action.mb)
        try:
            reservation = await worker.mempool.reserve(action.mb, "simulated squeeze")
        except OlactorsError as exc:
            self.trace.add(trio.current_time(), "squeeze-refused", exc.code)
            return
        await trio.sleep(action.hold_s)
        await worker.mempool.release(reservation)
        self.trace.add(trio.current_time(), "squeeze-released", action.mb)

    # ------------------------------------------------------- observation
    def observe(self, event: SandboxEvent) -> None:
        """Every sandbox event, synchronously as it happens (a pool listener)."""
        now = trio.current_time()
        if isinstance(event, SandboxForked):
            return  # SandboxCreated says it all
        if isinstance(event, SandboxChildExited):
            self.trace.add(now, "child_exited", event.parent.id, event.child.id)
            return
        sandbox = event.sandbox
        kind = type(event).__name__.removeprefix("Sandbox").lower()
        if isinstance(event, SandboxDestroyed):
            self.trace.add(now, kind, sandbox.id, event.cause.summary())
            if event.cause.code is CauseCode.EVICTED:
                self.evictions += 1
                self.intervals.at(now).evictions += 1
        elif isinstance(event, SandboxCreated):
            label = sandbox.raw.meta.label  # type: ignore[attr-defined]
            parent = event.parent.id if event.parent is not None else "-"
            self.trace.add(now, kind, sandbox.id, label, parent)
            self.created += 1
            if sandbox.is_leaf:
                self.intervals.at(now).cold_starts += 1
        else:
            self.trace.add(now, kind, sandbox.id)

    async def sample(self, worker: Worker, pool: SimulatedPool) -> None:
        """At the end of each interval: live sandboxes and reserved memory."""
        length = self.scenario.interval_s
        tick = length
        while True:
            await trio.sleep_until(tick)
            interval = self.intervals.at(tick - length / 2)
            interval.sandboxes = len(pool.sandboxes())
            interval.memory_used_mb = worker.mempool.ledger.used_mb
            tick += length

    def audit_eviction(self, worker: Worker, pool: SimulatedPool, decision: EvictionRound) -> None:
        spared: list[str] = []
        if any(not v.paused for v in decision.victims):
            chosen = {v.key for v in decision.victims}
            spared = [
                sb.id
                for sb in pool.sandboxes()
                if sb.state is SandboxState.PAUSED
                and not sb.live_children
                and worker.mempool.reserved_mb(sb.id) > 0
                and sb.id not in chosen
                and sb.id not in worker.evictor.evicting
            ]
        self.checker.eviction_round(decision, spared)

    def supervision(self, kind: str, child: str, serial: int, unrecoverable: bool) -> None:
        now = trio.current_time()
        self.trace.add(now, kind, child)
        if kind == "restarted":
            self.counts["restarts"] += 1
            self.intervals.at(now).restarts += 1
            self.checker.restarted(now, child, serial)
        elif kind == "escalated":
            self.counts["escalations"] += 1
            self.intervals.at(now).escalations += 1
            self.checker.escalated(now, child, serial, unrecoverable)

    # ------------------------------------------------------------ the end
    async def drain(self, worker: Worker, pool: SimulatedPool) -> None:
        """Let every function idle out, check what is left, then free the zygotes."""
        cfg = self.config
        await trio.sleep(cfg.functions.idle_timeout_s + cfg.registry.cache_s + 5)
        now = trio.current_time()
        fail = self.checker.fail
        left = await worker.manager.functions()
        if left:
            fail(now, "drain", f"{len(left)} function actors still alive, e.g. {left[0].name}")
        leaves = [sb.id for sb in pool.sandboxes() if sb.is_leaf]
        if leaves:
            fail(now, "drain", f"{len(leaves)} leaf sandboxes left, e.g. {leaves[0]}")
        if worker.puller.cached_names():
            fail(now, "drain", f"code of {worker.puller.cached_names()} functions still cached")
        snap = await worker.mempool.snapshot(with_bound=True)
        live = {sb.id for sb in pool.sandboxes()}
        if snap.used_mb != sum(snap.bound.values()) or not set(snap.bound) <= live:
            fail(
                now, "memory", f"{snap.used_mb} MB reserved, bound to live sandboxes: {snap.bound}"
            )
        for sb in sorted(pool.sandboxes(), key=lambda s: s.is_leaf, reverse=True):
            await sb.destroy(released("simulation drained"))
        await trio.sleep(1.0)  # let the memory pool hear of it
        ledger = worker.mempool.ledger
        if ledger.used_mb or ledger.waiters:
            fail(trio.current_time(), "memory", f"{ledger.used_mb} MB still reserved after drain")
        self.checker.memory(trio.current_time(), ledger.total_mb, ledger.peak_used_mb)
        self.peak_memory_mb = ledger.peak_used_mb

    def collect(self, worker: Worker) -> None:
        for m in worker.metrics.functions.values():
            self.cold_starts += m.cold_starts
            self.warm_starts += m.warm_starts

    def check_closed(self, pool: SimulatedPool) -> None:
        now = trio.current_time()
        if pool.sandboxes() or pool.counters["created"] != pool.counters["destroyed"]:
            self.checker.fail(now, "drain", f"sandboxes left after shutdown: {pool.counters}")
        if self.checker.pending:
            number = next(iter(self.checker.pending))
            self.checker.fail(
                now,
                "exactly_once",
                f"{len(self.checker.pending)} requests never answered, e.g. {number}",
            )

    def result(self, settings: tuple[str, ...], real_s: float) -> SimResult:
        lat = sorted(self.ok_latencies)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        started = self.cold_starts + self.warm_starts
        summary = {
            "requests": self.requests,
            "ok": self.counts["ok"],
            "rejected_429": self.counts["rejected_429"],
            "errors": self.counts["errors"],
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
            "cold_start_share": round(self.cold_starts / started, 4) if started else 0.0,
            "cold_starts": self.cold_starts,
            "evictions": self.evictions,
            "restarts": self.counts["restarts"],
            "escalations": self.counts["escalations"],
            "sandboxes_created": self.created,
            "peak_memory_mb": self.peak_memory_mb,
            "pool_mb": self.pool_mb,
            "eviction_policy": self.config.memory.eviction_policy,
            "virtual_s": round(self.virtual_s, 3),
            "real_s": round(real_s, 3),
            "events": self.trace.count,
            "events_per_s": round(self.trace.count / real_s) if real_s > 0 else None,
        }
        return SimResult(
            scenario=self.scenario.name,
            seed=self.seed,
            settings=settings,
            digest=self.trace.digest,
            events=self.trace.count,
            real_s=real_s,
            virtual_s=self.virtual_s,
            summary=summary,
            intervals=[i.row() for i in self.intervals.items],
            violations=[str(v) for v in self.checker.violations],
            trace=self.trace.lines,
        )


class _LogTap(logging.Handler):
    """Follows the worker's logs during a run: supervision records, and any
    logged exception (an actor hit something unexpected: a violation)."""

    def __init__(self, run: _Run) -> None:
        super().__init__(logging.INFO)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        try:
            now = trio.current_time()
        except RuntimeError:
            return
        kind = getattr(record, "supervision", None)
        if kind is not None:
            self.run.supervision(
                kind,
                record.child,  # type: ignore[attr-defined]
                record.serial,  # type: ignore[attr-defined]
                getattr(record, "unrecoverable", False),
            )
        if record.exc_info:
            self.run.checker.fail(now, "no_crash", f"{record.name}: {record.getMessage()}")


class _QuietLogs:
    """During a run the worker's logs go only to the tap (not the console):
    supervision at INFO, everything else from WARNING."""

    def __init__(self, run: _Run) -> None:
        self.tap = _LogTap(run)
        self.root = logging.getLogger("olactors")
        self.supervisor = logging.getLogger("olactors.supervisor")

    def __enter__(self) -> None:
        self.saved = (self.root.level, self.root.propagate, self.supervisor.level)
        self.root.setLevel(logging.WARNING)
        self.root.propagate = False
        self.supervisor.setLevel(logging.INFO)
        self.root.addHandler(self.tap)

    def __exit__(self, *exc: object) -> None:
        self.root.removeHandler(self.tap)
        level, self.root.propagate, supervisor_level = self.saved
        self.root.setLevel(level)
        self.supervisor.setLevel(supervisor_level)
