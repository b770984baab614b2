"""A simulated sandbox pool: the sandbox interface with no processes at all.

For actor unit tests and for deterministic simulations of scheduling and
eviction (thousands of sandboxes in virtual time under
``trio.testing.MockClock(autojump_threshold=0)``).  Nothing here does I/O,
starts a thread or reads the wall clock: every latency is a ``trio.sleep``
and every random choice is drawn from the one seeded ``random.Random`` in
:class:`SimulatedBehaviour`.  A sandbox costs two small objects (the raw
:class:`SimulatedSandbox` and its :class:`~olactors.sock.SafeSandbox`); no
task runs per sandbox.  One timer task (started only when a
:class:`CrashWhileIdle` fault is armed) serves every idle-crash deadline.

The rules of the interface come from :class:`~olactors.sock.SafeSandbox`,
exactly as for the real SOCK pool; :meth:`SimulatedPool.create` follows
``SockPool.create``'s contract.

Random draws happen in a fixed order per operation:

* create: the create (or fork) latency, then each create fault in list order
  (:class:`SlowCreate`, :class:`CreateFails`), then for a leaf each
  :class:`SlowInit` fault, then after the latency the reported memory, then
  each :class:`CrashWhileIdle` fault;
* invoke: each call fault in list order (:class:`CrashDuringCall`,
  :class:`Hang`, :class:`OOM`; the first that fires wins), then the
  handler's own draws, then (on success) the reported memory and each
  :class:`CrashWhileIdle` fault;
* pause, unpause: their latency;
* destroy (each release attempt): its latency, then each :class:`ReleaseFails`
  fault.

A fault draws from the rng only when it is eligible (``times`` not used up,
``match`` true) and ``0 < p < 1``.  A single task replaying a script
therefore sees the same latencies and faults for the same seed.  Concurrent
tasks draw in the order trio schedules them; for a fully reproducible
concurrent simulation trio's scheduler must be deterministic too (as under
pytest-trio with hypothesis installed, with ``trio._core._run._r`` seeded).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from .._causes import Cause, CauseCode, SignalSender
from .._errors import InitTimeout, SandboxError, SandboxStateError
from .._groups import lone_errors_unwrapped
from .._records import NO_OUTPUT, CallOutput
from ._api import (
    Invocation,
    InvocationResult,
    Sandbox,
    SandboxCallUsage,
    SandboxCreated,
    SandboxForked,
    SandboxMeta,
    SandboxUsage,
)
from ._events import EventHub, PoolEvents
from ._safe import ReleaseFailed, SafeSandbox, check_create, destroy_all

__all__ = [
    "CrashDuringCall",
    "CrashWhileIdle",
    "CreateFails",
    "Fault",
    "Hang",
    "OOM",
    "ReleaseFails",
    "SimulatedBehaviour",
    "SimulatedCrash",
    "SimulatedPool",
    "SimulatedSandbox",
    "SlowCreate",
    "SlowInit",
    "always",
    "constant",
    "echo",
    "open_simulated_pool",
    "quarter_of_limit",
    "uniform",
]

#: The default causes of the simulated crashes (a segfault; an exit while idle).
CRASH_DURING_CALL = Cause.of(CauseCode.SIGNAL, signal="SIGSEGV", sender=SignalSender.OTHER.value)
CRASH_WHILE_IDLE = Cause.of(CauseCode.EXIT, exit_code=1)
ECHO_S = 0.001

Latency = Callable[[random.Random], float]


# ------------------------------------------------------------------ helpers
def constant(seconds: float) -> Latency:
    """A latency that is always ``seconds`` (draws nothing from the rng)."""

    def latency(rng: random.Random) -> float:
        return seconds

    return latency


def uniform(low: float, high: float) -> Latency:
    """A latency drawn uniformly from ``[low, high]`` (one draw)."""

    def latency(rng: random.Random) -> float:
        return rng.uniform(low, high)

    return latency


def always(sandbox: SimulatedSandbox) -> bool:
    """The default fault predicate: every sandbox."""
    return True


def quarter_of_limit(rng: random.Random, meta: SandboxMeta) -> int:
    """The default reported memory use: a quarter of the memory limit (draws nothing)."""
    return meta.limits.mem_mb // 4


async def echo(sandbox: SimulatedSandbox, invocation: Invocation) -> InvocationResult:
    """The default handler: after 1 ms, answer 200 with the request body as JSON."""
    await trio.sleep(ECHO_S)
    return InvocationResult(
        200, (("content-type", "application/json"),), invocation.body or b"null"
    )


# ------------------------------------------------------------------- faults
@dataclass(frozen=True, eq=False, kw_only=True)
class _FaultBase:
    """Common fields: fires for sandboxes where ``match`` is true, with
    probability ``p``, at most ``times`` times in the pool (None: no limit).
    Faults compare by identity, so two equal-looking faults count separately."""

    match: Callable[[SimulatedSandbox], bool] = always
    p: float = 1.0
    times: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"{type(self).__name__}.p must be in [0, 1], got {self.p!r}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"{type(self).__name__}.times must be >= 0, got {self.times!r}")


@dataclass(frozen=True, eq=False)
class CrashDuringCall(_FaultBase):
    """``invoke`` sleeps ``delay_s``, then the sandbox's process dies of ``cause``."""

    delay_s: float = 0.0
    cause: Cause = CRASH_DURING_CALL


@dataclass(frozen=True, eq=False)
class CrashWhileIdle(_FaultBase):
    """After ``after_s`` seconds without a call (paused or not) the sandbox dies
    on its own.  Drawn each time the sandbox becomes idle (created, or a call
    returned); a call starting in the meantime disarms it.  It dies of ``cause``."""

    after_s: float
    cause: Cause = CRASH_WHILE_IDLE


@dataclass(frozen=True, eq=False)
class Hang(_FaultBase):
    """``invoke`` never returns (until cancelled, e.g. by a runtime limit)."""


@dataclass(frozen=True, eq=False)
class SlowCreate(_FaultBase):
    """``create`` takes ``extra_s`` longer (every firing SlowCreate adds up)."""

    extra_s: float


@dataclass(frozen=True, eq=False)
class SlowInit(_FaultBase):
    """A leaf's import of the function's code (its init phase, after the create
    latency) takes ``import_s`` (every firing SlowInit adds up); beyond the
    sandbox's ``limits.init_s``, ``create`` raises InitTimeout at that limit."""

    import_s: float


@dataclass(frozen=True, eq=False)
class CreateFails(_FaultBase):
    """``create`` raises SandboxError(``message``) after its latency."""

    message: str = "simulated create failure"


@dataclass(frozen=True, eq=False)
class ReleaseFails(_FaultBase):
    """Releasing the sandbox fails (``release`` raises ReleaseFailed, as the
    real pool's does when a cgroup will not empty or an unmount fails).

    With ``processes_gone`` its process is gone anyway (only leftovers stay:
    the sandbox is released, the event names them); without, the process
    still runs: the sandbox stays in the pool, dead and unreleased, until a
    retry succeeds (:meth:`SimulatedPool.kill` makes it exit at last)."""

    processes_gone: bool = False


@dataclass(frozen=True, eq=False)
class OOM(_FaultBase):
    """``invoke`` sleeps ``delay_s``, then the sandbox is killed at its memory limit."""

    delay_s: float = 0.0


Fault = (
    CrashDuringCall
    | CrashWhileIdle
    | Hang
    | SlowCreate
    | SlowInit
    | CreateFails
    | OOM
    | ReleaseFails
)
_CALL_FAULTS = (CrashDuringCall, Hang, OOM)
_CREATE_FAULTS = (SlowCreate, CreateFails)
_FAULT_KINDS = (
    CrashDuringCall,
    CrashWhileIdle,
    Hang,
    SlowCreate,
    SlowInit,
    CreateFails,
    OOM,
    ReleaseFails,
)


def _counter_key(fault: Fault) -> str:
    return f"fault:{type(fault).__name__}"


@dataclass
class SimulatedBehaviour:
    """Latencies (seconds, drawn per operation), the handler, the reported
    memory (MB, drawn at creation and after each call) and the faults."""

    rng: random.Random
    create_s: Latency = field(default_factory=lambda: constant(0.030))
    fork_s: Latency = field(default_factory=lambda: constant(0.004))
    pause_s: Latency = field(default_factory=lambda: constant(0.0002))
    unpause_s: Latency = field(default_factory=lambda: constant(0.0002))
    destroy_s: Latency = field(default_factory=lambda: constant(0.003))
    handler: Callable[[SimulatedSandbox, Invocation], Awaitable[InvocationResult]] | None = None
    memory_mb: Callable[[random.Random, SandboxMeta], int] = quarter_of_limit
    faults: list[Fault] = field(default_factory=list)


class SimulatedCrash(Exception):
    """Raised by a raw simulated sandbox whose process died of ``cause``."""

    def __init__(self, cause: Cause) -> None:
        super().__init__(cause.summary())
        self.cause = cause


# ------------------------------------------------------------ raw sandboxes
@dataclass(eq=False, slots=True)
class SimulatedSandbox:
    """The raw sandbox (a :class:`~olactors.sock.RawSandbox`): state only, no task."""

    id: str
    is_leaf: bool
    meta: SandboxMeta
    code_dir: str | None
    scratch_dir: str | None
    parent: SimulatedSandbox | None
    pool: SimulatedPool
    safe: SafeSandbox | None = None
    calls: int = 0
    in_call: bool = False
    frozen: bool = False
    released: bool = False
    dead_cause: Cause | None = None
    memory_mb: int = 0
    peak_memory_mb: int = 0
    oom_kills: int = 0
    cpu_ns: int = 0
    idle_generation: int = 0
    call_scope: trio.CancelScope | None = None

    @property
    def network(self) -> str:
        return self.meta.network

    @property
    def rng(self) -> random.Random:
        """The pool's one random source (for handlers)."""
        return self.pool.behaviour.rng

    def __repr__(self) -> str:
        return f"<SimulatedSandbox {self.id}>"

    # ------------------------------------------------------------ mechanics
    def _check_process(self) -> None:
        if self.dead_cause is not None:
            raise SimulatedCrash(self.dead_cause)

    async def invoke(self, request: Invocation) -> InvocationResult:
        self._check_process()
        if self.frozen:
            raise SandboxStateError(f"sandbox {self.id} is frozen")
        pool = self.pool
        self.calls += 1
        pool.counters["invocations"] += 1
        self.in_call = True
        self.idle_generation += 1  # disarms any idle crash
        started = trio.current_time()
        try:
            with trio.CancelScope() as scope:
                self.call_scope = scope
                result = await pool._call(self, request)
            if scope.cancelled_caught or self.dead_cause is not None:
                # killed mid-call (pool.kill, or its zygote died)
                raise SimulatedCrash(self.dead_cause or CRASH_DURING_CALL)
        finally:
            self.call_scope = None
            self.in_call = False
            self.cpu_ns += round((trio.current_time() - started) * 1e9)
        pool._became_idle(self)
        return result

    def call_output(self) -> CallOutput:
        return NO_OUTPUT  # simulated functions write nothing

    def log_tail(self, max_bytes: int) -> str:
        return ""

    async def freeze(self) -> None:
        self._check_process()
        await trio.sleep(self.pool.behaviour.pause_s(self.rng))
        self._check_process()
        self.frozen = True

    async def thaw(self) -> None:
        self._check_process()
        await trio.sleep(self.pool.behaviour.unpause_s(self.rng))
        self._check_process()
        self.frozen = False

    async def release(self, cause: Cause) -> None:
        await trio.sleep(self.pool.behaviour.destroy_s(self.rng))
        failure = self.pool._release_fault(self)
        if failure is not None and not failure.processes_gone:
            raise ReleaseFailed(self.id, ("simulated: process still running",), False)
        self.released = True
        self.idle_generation += 1
        self.pool._released(self)
        if failure is not None:
            raise ReleaseFailed(self.id, ("simulated: leftover mount",), True)

    def usage(self) -> SandboxUsage:
        return SandboxUsage(
            memory_bytes=self.memory_mb << 20,
            memory_peak_bytes=self.peak_memory_mb << 20,
            oom_kills=self.oom_kills,
            cpu_ns=self.cpu_ns,
        )

    def call_usage(self) -> SandboxCallUsage:
        return SandboxCallUsage(self.cpu_ns, self.peak_memory_mb << 20)

    async def diagnose(self, error: BaseException | None) -> Cause:
        if self.dead_cause is not None:
            return self.dead_cause
        if isinstance(error, SimulatedCrash):
            return error.cause
        if error is None:
            return Cause.of(CauseCode.UNKNOWN, error="its process exited unexpectedly")
        return Cause.of(CauseCode.UNKNOWN, error=repr(error))

    def _set_memory(self, mb: int) -> None:
        self.memory_mb = int(mb)
        self.peak_memory_mb = max(self.peak_memory_mb, self.memory_mb)


# --------------------------------------------------------------------- pool
class SimulatedPool(PoolEvents):
    """Implements :class:`olactors.sock.SandboxPool` with simulated sandboxes.

    ``counters``: ``created`` (every sandbox handed out), ``forked`` (of
    those, forked from a zygote), ``destroyed`` (released), ``invocations``
    (raw calls started), ``killed`` (:meth:`kill` calls), and
    ``fault:<Kind>`` for each fault kind fired.
    """

    def __init__(self, behaviour: SimulatedBehaviour, nursery: trio.Nursery) -> None:
        self.behaviour = behaviour
        self.closing = False
        self.counters: dict[str, int] = {
            "created": 0,
            "forked": 0,
            "destroyed": 0,
            "invocations": 0,
            "killed": 0,
        }
        for kind in _FAULT_KINDS:
            self.counters[f"fault:{kind.__name__}"] = 0
        self._nursery = nursery
        self._hub = EventHub()
        self._ids = itertools.count(1)
        self._live: dict[str, SafeSandbox[SimulatedSandbox]] = {}
        self._fired: dict[Fault, int] = {}
        # Idle-crash deadlines: (deadline, seq, idle generation, sandbox, fault).
        self._timers: list[tuple[float, int, int, SimulatedSandbox, CrashWhileIdle]] = []
        self._timer_seq = itertools.count()
        self._timer_wakeup = trio.Event()
        self._timer_running = False

    # ------------------------------------------------------------- interface
    async def forget_network(self, scope: str) -> None:
        """Nothing to free: simulated sandboxes have no network namespaces."""

    def sandboxes(self) -> list[Sandbox]:
        return list(self._live.values())

    def fired(self, fault: Fault) -> int:
        """How many times ``fault`` (this very object) has fired."""
        return self._fired.get(fault, 0)

    async def create(
        self,
        parent: Sandbox | None,
        is_leaf: bool,
        code_dir: str | None,
        scratch_dir: str | None,
        meta: SandboxMeta,
    ) -> SafeSandbox:
        """Create a sandbox after the simulated latency (``SockPool.create``'s contract).

        Fresh when ``parent`` is None, else forked from the zygote ``parent``
        (a running non-leaf of this pool), serialised with
        the parent's other calls.  A failed or cancelled create leaves nothing.
        """
        if self.closing:
            raise SandboxError("the sandbox pool is shutting down")
        zygote = check_create(self._live, parent, meta)
        raw = SimulatedSandbox(
            id=f"sim-{next(self._ids)}",
            is_leaf=is_leaf,
            meta=meta,
            code_dir=code_dir,
            scratch_dir=scratch_dir,
            parent=None if zygote is None else zygote.raw,
            pool=self,
        )
        started = trio.current_time()
        if zygote is None:
            await self._start(raw, self.behaviour.create_s)
        else:
            async with zygote._lock:  # serialised with the zygote's other calls
                zygote.check_running("zygote")  # again, now that calls are serialised
                await self._start(raw, self.behaviour.fork_s)
                if zygote.raw.dead_cause is not None:
                    err = SandboxError(
                        f"creating sandbox {raw.id} failed: zygote {zygote.id} died during the fork"
                    )
                    err.cause = Cause.of(CauseCode.ZYGOTE_DIED, zygote=zygote.id)
                    raise err
                zygote.child_added()
        if is_leaf:
            try:
                await self._init(raw)
            except BaseException:
                if zygote is not None:
                    with trio.CancelScope(shield=True):
                        await zygote.child_not_started()
                raise
        safe = SafeSandbox(raw, self._hub, zygote, trio.current_time() - started)
        raw.safe = safe
        self._live[raw.id] = safe
        self.counters["created"] += 1
        if zygote is not None:
            self.counters["forked"] += 1
        raw._set_memory(self.behaviour.memory_mb(self.behaviour.rng, meta))
        self._hub.emit(SandboxCreated(safe, zygote))
        if zygote is not None:
            self._hub.emit(SandboxForked(zygote, safe))
        self._became_idle(raw)
        return safe

    def kill(self, sandbox: Sandbox, cause: Cause = CRASH_DURING_CALL) -> None:
        """Make the live sandbox's process die on its own now, of ``cause``.

        The death goes through ``SafeSandbox.died`` (as from a real pool's
        watcher); a call in progress fails with SandboxDead(``cause``); its
        descendants die of ``zygote_died``.  A
        zygote's death also kills its descendants (they nest in its PID
        namespace).  Killing a sandbox whose process is already gone does nothing,
        unless its release failed with the process running: the process exits
        at last and the release is retried (as the real pool's watcher does).
        """
        if not isinstance(sandbox, SafeSandbox) or self._live.get(sandbox.id) is not sandbox:
            raise SandboxError(f"{sandbox!r} is not a live sandbox of this pool")
        raw = sandbox.raw
        if sandbox.release_pending:
            self._nursery.start_soon(self._report_deaths, [sandbox])
            return
        if raw.dead_cause is not None:
            return
        self.counters["killed"] += 1
        self._nursery.start_soon(self._report_deaths, self._crash(raw, cause))

    async def aclose(self) -> None:
        """Destroy every sandbox, leaves first (zygotes are released once their
        last child is gone), then close every subscriber's channel.  A sandbox
        whose release keeps failing is left listed (and logged)."""
        self.closing = True
        await destroy_all(self._live, Cause.of(CauseCode.WORKER_SHUTDOWN))
        self._hub.close()
        self._timer_wakeup.set()

    # ------------------------------------------------------------- internals
    def _fires(self, fault: Fault, raw: SimulatedSandbox) -> bool:
        """Is ``fault`` eligible for ``raw`` and does its probability draw hit?"""
        if fault.times is not None and self._fired.get(fault, 0) >= fault.times:
            return False
        if not fault.match(raw):
            return False
        if fault.p >= 1.0:
            return True
        if fault.p <= 0.0:
            return False
        return self.behaviour.rng.random() < fault.p

    def _record(self, fault: Fault) -> None:
        self._fired[fault] = self._fired.get(fault, 0) + 1
        self.counters[_counter_key(fault)] += 1

    async def _start(self, raw: SimulatedSandbox, latency: Latency) -> None:
        """Sleep the create latency (plus slow-create faults); raise a failure fault."""
        rng = self.behaviour.rng
        seconds = latency(rng)
        failure: CreateFails | None = None
        for fault in list(self.behaviour.faults):
            if not isinstance(fault, _CREATE_FAULTS):
                continue
            if isinstance(fault, CreateFails) and failure is not None:
                continue
            if self._fires(fault, raw):
                self._record(fault)
                if isinstance(fault, SlowCreate):
                    seconds += fault.extra_s
                else:
                    failure = fault
        await trio.sleep(seconds)
        if failure is not None:
            err = SandboxError(f"creating sandbox {raw.id} failed: {failure.message}")
            err.cause = Cause.of(CauseCode.STARTUP_FAILED, output="", error=failure.message)
            raise err
        if self.closing:
            raise _shutting_down(raw)

    async def _init(self, raw: SimulatedSandbox) -> None:
        """A leaf's init phase (outside its zygote's lock, as in the real pool):
        the :class:`SlowInit` faults' import time, up to its ``limits.init_s``."""
        seconds = 0.0
        for fault in list(self.behaviour.faults):
            if isinstance(fault, SlowInit) and self._fires(fault, raw):
                self._record(fault)
                seconds += fault.import_s
        if not seconds:
            return
        limit = raw.meta.limits.init_s
        await trio.sleep(min(seconds, limit))
        if seconds > limit:
            raise InitTimeout(limit)
        if self.closing:
            raise _shutting_down(raw)

    async def _call(self, raw: SimulatedSandbox, request: Invocation) -> InvocationResult:
        for fault in list(self.behaviour.faults):
            if isinstance(fault, _CALL_FAULTS) and self._fires(fault, raw):
                self._record(fault)
                if isinstance(fault, Hang):
                    await trio.sleep_forever()
                await trio.sleep(fault.delay_s)
                if isinstance(fault, OOM):
                    raw.oom_kills += 1
                    raw._set_memory(raw.meta.limits.mem_mb)
                    cause = Cause.of(CauseCode.OOM, limit_mb=raw.meta.limits.mem_mb)
                else:
                    cause = fault.cause
                raw.call_scope = None  # dying by itself: its own call fails below
                dead = self._crash(raw, cause)
                if len(dead) > 1:  # a zygote's descendants die with it
                    self._nursery.start_soon(self._report_deaths, dead[1:])
                raise SimulatedCrash(cause)
        handler = self.behaviour.handler or echo
        result = await handler(raw, request)
        raw._set_memory(self.behaviour.memory_mb(self.behaviour.rng, raw.meta))
        return result

    def _crash(self, raw: SimulatedSandbox, cause: Cause) -> list[SafeSandbox]:
        """Mark ``raw``'s process (and, for a zygote, its descendants') dead now.

        Returns the sandboxes whose ``died`` must be reported, in the order
        to report them (the sandbox itself, then its descendants, newest first)."""
        raw.dead_cause = cause
        raw.idle_generation += 1
        if raw.call_scope is not None:
            raw.call_scope.cancel()
        dead = [raw.safe] if raw.safe is not None else []
        if not raw.is_leaf and raw.safe is not None:  # a zygote only has children once live
            zygote = raw.safe
            for safe in reversed(list(self._live.values())):
                child = safe.raw
                if child.dead_cause is None and safe.descends_from(zygote):
                    child.dead_cause = Cause.of(CauseCode.ZYGOTE_DIED, zygote=raw.id)
                    child.idle_generation += 1
                    if child.call_scope is not None:
                        child.call_scope.cancel()
                    dead.append(safe)
        return dead

    async def _report_deaths(self, dead: list[SafeSandbox]) -> None:
        """The watcher's part: report each death, one after the other."""
        for safe in dead:
            await safe.died()

    def _release_fault(self, raw: SimulatedSandbox) -> ReleaseFails | None:
        """The first :class:`ReleaseFails` fault that fires for this release attempt."""
        for fault in list(self.behaviour.faults):
            if isinstance(fault, ReleaseFails) and self._fires(fault, raw):
                self._record(fault)
                return fault
        return None

    def _released(self, raw: SimulatedSandbox) -> None:
        self.counters["destroyed"] += 1
        self._live.pop(raw.id, None)

    # ------------------------------------------------------- idle crashes
    def _became_idle(self, raw: SimulatedSandbox) -> None:
        """Arm the idle-crash faults that fire for ``raw`` from now."""
        if raw.dead_cause is not None or raw.released:
            return
        now = trio.current_time()
        for fault in list(self.behaviour.faults):
            if isinstance(fault, CrashWhileIdle) and self._fires(fault, raw):
                entry = (
                    now + fault.after_s,
                    next(self._timer_seq),
                    raw.idle_generation,
                    raw,
                    fault,
                )
                heapq.heappush(self._timers, entry)
                if self._timers[0] is entry:
                    self._timer_wakeup.set()
                if not self._timer_running:
                    self._timer_running = True
                    self._nursery.start_soon(self._run_timers)

    async def _run_timers(self) -> None:
        """The one task behind every idle-crash deadline."""
        while not self.closing:
            now = trio.current_time()
            dead: list[SafeSandbox] = []
            while self._timers and self._timers[0][0] <= now:
                _, _, generation, raw, fault = heapq.heappop(self._timers)
                if (
                    raw.dead_cause is None
                    and not raw.released
                    and not raw.in_call
                    and raw.idle_generation == generation
                    and (fault.times is None or self._fired.get(fault, 0) < fault.times)
                ):
                    self._record(fault)
                    dead += self._crash(raw, fault.cause)
            if dead:
                self._nursery.start_soon(self._report_deaths, dead)
            self._timer_wakeup = trio.Event()
            deadline = self._timers[0][0] if self._timers else float("inf")
            with trio.move_on_at(deadline):
                await self._timer_wakeup.wait()


def _shutting_down(raw: SimulatedSandbox) -> SandboxError:
    err = SandboxError(f"creating sandbox {raw.id} failed: the sandbox pool is shutting down")
    err.cause = Cause.of(CauseCode.WORKER_SHUTDOWN)
    return err


@asynccontextmanager
async def open_simulated_pool(behaviour: SimulatedBehaviour) -> AsyncIterator[SimulatedPool]:
    """A :class:`SimulatedPool` with its own nursery; every sandbox is destroyed on exit."""
    with lone_errors_unwrapped():  # the pool's own tasks never raise
        async with trio.open_nursery() as nursery:
            pool = SimulatedPool(behaviour, nursery)
            try:
                yield pool
            finally:
                with trio.CancelScope(shield=True):
                    await pool.aclose()
                nursery.cancel_scope.cancel()
