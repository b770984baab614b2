"""The simulated sandbox pool: latencies in virtual time, events, faults, determinism."""

from __future__ import annotations

import random

import pytest
import trio

from olactors._causes import Cause, CauseCode, SignalSender, released
from olactors._errors import SandboxDead, SandboxError, SandboxStateError, UnknownNetworkMode
from olactors.sock import (
    Invocation,
    InvocationResult,
    SafeSandbox,
    SandboxChildExited,
    SandboxCreated,
    SandboxDestroyed,
    SandboxForked,
    SandboxLimits,
    SandboxMeta,
    SandboxPaused,
    SandboxState,
    SandboxUnpaused,
    SandboxUsage,
)
from olactors.sock.simulated import (
    CRASH_DURING_CALL,
    CRASH_WHILE_IDLE,
    OOM,
    CrashDuringCall,
    CrashWhileIdle,
    CreateFails,
    Hang,
    SimulatedBehaviour,
    SimulatedPool,
    SimulatedSandbox,
    SlowCreate,
    constant,
    open_simulated_pool,
    uniform,
)

# Dyadic latencies: sums of them are exact in binary floating point.
CREATE, FORK, PAUSE, UNPAUSE, DESTROY = 0.5, 0.25, 0.125, 0.0625, 0.375
CALL = 1.0
LEAF = SandboxMeta(label="leaf")
ZYGOTE = SandboxMeta(label="zygote")

SIGKILL = Cause.of(CauseCode.SIGNAL, signal="SIGKILL", sender=SignalSender.OTHER.value)
SEGFAULT = Cause.of(CauseCode.SIGNAL, signal="SIGSEGV", sender=SignalSender.OTHER.value)
KILLED_BY_WORKER = Cause.of(CauseCode.SIGNAL, signal="SIGKILL", sender=SignalSender.WORKER.value)


async def slow_echo(sandbox: SimulatedSandbox, invocation: Invocation) -> InvocationResult:
    await trio.sleep(CALL)
    return InvocationResult(200, (), invocation.body)


def behaviour(seed: int = 1, faults=(), **overrides) -> SimulatedBehaviour:
    settings = dict(
        create_s=constant(CREATE),
        fork_s=constant(FORK),
        pause_s=constant(PAUSE),
        unpause_s=constant(UNPAUSE),
        destroy_s=constant(DESTROY),
        handler=slow_echo,
    )
    settings.update(overrides)
    return SimulatedBehaviour(rng=random.Random(seed), faults=list(faults), **settings)


async def fresh(pool: SimulatedPool, is_leaf: bool = True, meta: SandboxMeta = LEAF):
    return await pool.create(None, is_leaf, None, None, meta)


def drain(events: trio.MemoryReceiveChannel) -> list:
    out = []
    while True:
        try:
            out.append(events.receive_nowait())
        except trio.WouldBlock:
            return out


async def next_destroyed(events: trio.MemoryReceiveChannel) -> SandboxDestroyed:
    async for event in events:
        if isinstance(event, SandboxDestroyed):
            return event
    raise AssertionError("event channel closed")


# ------------------------------------------------------------------ lifecycle
async def test_lifecycle_takes_exactly_the_configured_latencies(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        t = trio.current_time()
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        assert trio.current_time() - t == CREATE
        t = trio.current_time()
        leaf = await pool.create(zygote, True, "/code", None, LEAF)
        assert trio.current_time() - t == FORK
        t = trio.current_time()
        result = await leaf.invoke(Invocation(body=b"hi"))
        assert result == InvocationResult(200, (), b"hi")
        assert trio.current_time() - t == CALL
        t = trio.current_time()
        await leaf.pause()
        assert trio.current_time() - t == PAUSE and leaf.state is SandboxState.PAUSED
        t = trio.current_time()
        await leaf.unpause()
        assert trio.current_time() - t == UNPAUSE and leaf.state is SandboxState.RUNNING
        t = trio.current_time()
        await leaf.destroy(released("done"))
        assert trio.current_time() - t == DESTROY and leaf.state is SandboxState.DEAD
        assert pool.sandboxes() == [zygote]
        assert leaf.raw.calls == 1 and not leaf.raw.in_call and leaf.raw.id == "sim-2"
        assert pool.counters["created"] == 2 and pool.counters["forked"] == 1
        assert pool.counters["destroyed"] == 1 and pool.counters["invocations"] == 1


async def test_defaults_echo_and_usage(autojump_clock):
    b = SimulatedBehaviour(rng=random.Random(0))
    async with open_simulated_pool(b) as pool:
        t = trio.current_time()
        meta = SandboxMeta(limits=SandboxLimits(mem_mb=256))
        sb = await fresh(pool, meta=meta)
        assert trio.current_time() - t == pytest.approx(0.030, abs=1e-9)
        t = trio.current_time()
        result = await sb.invoke(Invocation(body=b'{"a": 1}'))
        assert trio.current_time() - t == pytest.approx(0.001, abs=1e-9)
        assert result == InvocationResult(200, (("content-type", "application/json"),), b'{"a": 1}')
        assert (await sb.invoke(Invocation())).body == b"null"
        usage = sb.usage()
        assert usage.memory_bytes == 64 << 20 and usage.oom_kills == 0
        assert usage.cpu_ns == 2_000_000
        t = trio.current_time()
        await sb.destroy(released("bye"))
        assert trio.current_time() - t == pytest.approx(0.003, abs=1e-9)
        assert sb.usage() == SandboxUsage()


async def test_events_in_order(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        events = pool.subscribe()
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        leaf = await pool.create(zygote, True, None, None, LEAF)
        await leaf.pause()
        await leaf.unpause()
        await leaf.destroy(released("done"))
        await zygote.destroy(released("done too"))
        assert drain(events) == [
            SandboxCreated(zygote, None),
            SandboxCreated(leaf, zygote),
            SandboxForked(zygote, leaf),
            SandboxPaused(leaf),
            SandboxUnpaused(leaf),
            SandboxDestroyed(leaf, released("done")),
            SandboxChildExited(zygote, leaf),
            SandboxDestroyed(zygote, released("done too")),
        ]


async def test_zygote_released_only_after_its_last_child(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        events = pool.subscribe()
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        kids = [await pool.create(zygote, True, None, None, LEAF) for _ in range(2)]
        assert zygote.live_children == 2
        drain(events)
        await zygote.destroy(released("early"))
        assert zygote.state is SandboxState.DEAD and not zygote.released
        assert drain(events) == [] and zygote in pool.sandboxes()
        await kids[0].destroy(released("x"))
        assert not zygote.released and zygote.live_children == 1
        await kids[1].destroy(released("x"))
        assert zygote.released and pool.sandboxes() == []
        assert drain(events)[-1] == SandboxDestroyed(zygote, released("early"))


async def test_forks_are_serialised_with_the_zygote(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        t = trio.current_time()
        done: list[float] = []

        async def fork() -> None:
            await pool.create(zygote, True, None, None, LEAF)
            done.append(trio.current_time() - t)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fork)
            nursery.start_soon(fork)
        assert done == [FORK, 2 * FORK]
        assert zygote.live_children == 2


async def test_create_refuses_like_the_sock_pool(autojump_clock):
    async with (
        open_simulated_pool(behaviour()) as pool,
        open_simulated_pool(behaviour()) as other,
    ):
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        leaf = await fresh(pool)
        foreign = await fresh(other, is_leaf=False, meta=ZYGOTE)
        with pytest.raises(SandboxError, match="not a sandbox of this pool"):
            await pool.create(foreign, True, None, None, LEAF)
        with pytest.raises(SandboxError, match="cannot fork from leaf"):
            await pool.create(leaf, True, None, None, LEAF)
        # Like the SOCK pool (the same check_create): host is gone, egress named instead.
        with pytest.raises(UnknownNetworkMode, match="use egress") as refused:
            await pool.create(zygote, True, None, None, SandboxMeta(network="host"))
        assert refused.value.network == "host" and pool.sandboxes() == [zygote, leaf]
        # Zygotes have no network: a leaf of either mode forks from any of them.
        egress = await pool.create(zygote, True, None, None, SandboxMeta(network="egress"))
        await egress.destroy(released("x"))
        with pytest.raises(UnknownNetworkMode) as refused:
            await fresh(pool, meta=SandboxMeta(network="bogus"))
        assert refused.value.network == "bogus"
        await zygote.pause()
        with pytest.raises(SandboxStateError, match="paused"):
            await pool.create(zygote, True, None, None, LEAF)
        await zygote.unpause()
        child = await pool.create(zygote, True, None, None, LEAF)
        await zygote.destroy(released("gone"))  # dead, but still held by its child
        with pytest.raises(SandboxDead):
            await pool.create(zygote, True, None, None, LEAF)
        await child.destroy(released("x"))
        with pytest.raises(SandboxError, match="not a sandbox of this pool"):
            await pool.create(zygote, True, None, None, LEAF)  # released
        egress_zygote = await fresh(pool, is_leaf=False, meta=SandboxMeta(network="egress"))
        assert await pool.create(egress_zygote, True, None, None, SandboxMeta(network="egress"))
        pool.closing = True
        with pytest.raises(SandboxError, match="shutting down"):
            await fresh(pool)
        pool.closing = False


async def test_cancelled_create_leaves_nothing(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        events = pool.subscribe()
        with trio.move_on_after(CREATE / 2):
            await fresh(pool)
        with trio.move_on_after(FORK / 2):
            await pool.create(zygote, True, None, None, LEAF)
        assert pool.sandboxes() == [zygote] and zygote.live_children == 0
        assert drain(events) == [] and pool.counters["created"] == 1
        assert not zygote._lock.locked()
        await pool.create(zygote, True, None, None, LEAF)  # the zygote is still usable


async def test_pool_closing_during_create_fails_it(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        errors = []

        async def create(parent):
            try:
                await pool.create(parent, True, None, None, LEAF)
            except SandboxError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(create, None)
            nursery.start_soon(create, zygote)
            await trio.sleep(FORK / 2)
            pool.closing = True
        assert len(errors) == 2 and all("shutting down" in e for e in errors)
        assert zygote.live_children == 0 and pool.sandboxes() == [zygote]
        pool.closing = False


async def test_aclose_destroys_leaves_first_and_closes_subscribers(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        leaf = await pool.create(zygote, True, None, None, LEAF)
        other = await fresh(pool)
        events = pool.subscribe()
    destroyed = [e async for e in events if isinstance(e, SandboxDestroyed)]
    assert [e.sandbox for e in destroyed] == [leaf, other, zygote]
    assert all(e.cause == Cause.of(CauseCode.WORKER_SHUTDOWN) for e in destroyed)
    assert pool.sandboxes() == [] and pool.counters["destroyed"] == 3


# --------------------------------------------------------------------- faults
async def test_crash_during_call(autojump_clock):
    fault = CrashDuringCall(delay_s=0.25)
    async with open_simulated_pool(behaviour(faults=[fault])) as pool:
        sb = await fresh(pool)
        events = pool.subscribe()
        t = trio.current_time()
        with pytest.raises(SandboxDead) as info:
            await sb.invoke(Invocation())
        assert info.value.cause == CRASH_DURING_CALL
        assert CRASH_DURING_CALL.code is CauseCode.SIGNAL
        assert trio.current_time() - t == 0.25 + DESTROY
        assert sb.state is SandboxState.DEAD
        assert sb.death_cause == CRASH_DURING_CALL
        assert drain(events) == [SandboxDestroyed(sb, CRASH_DURING_CALL)]
        assert pool.fired(fault) == 1 and pool.counters["fault:CrashDuringCall"] == 1
        assert pool.sandboxes() == []


async def test_crash_while_idle(autojump_clock):
    fault = CrashWhileIdle(after_s=2.0)
    async with open_simulated_pool(behaviour(faults=[fault])) as pool:
        events = pool.subscribe()
        sb = await fresh(pool)
        created = trio.current_time()
        await trio.sleep(1.5)
        await sb.invoke(Invocation())  # a call disarms it; idle again from its end
        call_end = trio.current_time()
        assert call_end - created == 1.5 + CALL
        await trio.sleep(1.5)
        assert sb.state is SandboxState.RUNNING
        event = await next_destroyed(events)
        assert event == SandboxDestroyed(sb, CRASH_WHILE_IDLE)
        assert trio.current_time() - call_end == 2.0 + DESTROY
        assert sb.death_cause == CRASH_WHILE_IDLE
        assert pool.counters["fault:CrashWhileIdle"] == 1


async def test_crash_while_idle_counts_paused_time(autojump_clock):
    async with open_simulated_pool(behaviour(faults=[CrashWhileIdle(1.0)])) as pool:
        events = pool.subscribe()
        sb = await fresh(pool)
        await sb.pause()
        event = await next_destroyed(events)
        assert event.sandbox is sb and sb.death_cause == CRASH_WHILE_IDLE


async def test_hang_is_cancelled_by_a_runtime_limit(autojump_clock):
    async with open_simulated_pool(behaviour(faults=[Hang()])) as pool:
        sb = await fresh(pool)
        events = pool.subscribe()
        t = trio.current_time()
        with trio.move_on_after(5.0) as scope:
            await sb.invoke(Invocation())
        assert scope.cancelled_caught
        assert trio.current_time() - t == 5.0 + DESTROY
        assert sb.state is SandboxState.DEAD
        assert drain(events) == [SandboxDestroyed(sb, KILLED_BY_WORKER)]
        assert pool.counters["fault:Hang"] == 1 and pool.sandboxes() == []


async def test_slow_create(autojump_clock):
    faults = [SlowCreate(extra_s=1.0), SlowCreate(extra_s=2.0, match=lambda sb: not sb.is_leaf)]
    async with open_simulated_pool(behaviour(faults=faults)) as pool:
        t = trio.current_time()
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        assert trio.current_time() - t == CREATE + 3.0
        t = trio.current_time()
        await pool.create(zygote, True, None, None, LEAF)
        assert trio.current_time() - t == FORK + 1.0
        assert pool.counters["fault:SlowCreate"] == 3


async def test_create_fails_leaves_no_sandbox(autojump_clock):
    fault = CreateFails("no space left", times=2)
    async with open_simulated_pool(behaviour(faults=[fault])) as pool:
        zygote_meta = SandboxMeta(label="zygote")
        events = pool.subscribe()
        t = trio.current_time()
        with pytest.raises(SandboxError, match="creating sandbox sim-1 failed: no space left"):
            await fresh(pool, is_leaf=False, meta=zygote_meta)
        assert trio.current_time() - t == CREATE
        assert pool.sandboxes() == [] and drain(events) == []
        assert pool.counters["created"] == 0 and pool.counters["fault:CreateFails"] == 1
        zygote = None
        with pytest.raises(SandboxError, match="no space left"):
            zygote = await fresh(pool, is_leaf=False, meta=zygote_meta)
        assert zygote is None
        zygote = await fresh(pool, is_leaf=False, meta=zygote_meta)  # times=2 used up
        assert pool.fired(fault) == 2 and pool.sandboxes() == [zygote]


async def test_failed_fork_leaves_the_zygote_unchanged(autojump_clock):
    fault = CreateFails("fork broke", match=lambda sb: sb.parent is not None)
    async with open_simulated_pool(behaviour(faults=[fault])) as pool:
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        t = trio.current_time()
        with pytest.raises(SandboxError, match="fork broke"):
            await pool.create(zygote, True, None, None, LEAF)
        assert trio.current_time() - t == FORK
        assert zygote.live_children == 0 and pool.sandboxes() == [zygote]
        await zygote.destroy(released("x"))
        assert zygote.released


async def test_oom(autojump_clock):
    async with open_simulated_pool(behaviour(faults=[OOM()])) as pool:
        sb = await fresh(pool, meta=SandboxMeta(limits=SandboxLimits(mem_mb=96)))
        with pytest.raises(SandboxDead) as info:
            await sb.invoke(Invocation())
        assert info.value.cause == Cause.of(CauseCode.OOM, limit_mb=96)
        assert sb.death_cause == Cause.of(CauseCode.OOM, limit_mb=96)
        assert sb.raw.usage().oom_kills == 1
        assert sb.raw.usage().memory_peak_bytes == 96 << 20
        assert pool.counters["fault:OOM"] == 1


async def test_times_and_match_are_honoured(autojump_clock):
    fault = CrashDuringCall(times=2, match=lambda sb: sb.meta.label == "flaky")
    async with open_simulated_pool(behaviour(faults=[fault])) as pool:
        steady = await fresh(pool, meta=SandboxMeta(label="steady"))
        outcomes = []
        for _ in range(4):
            await steady.invoke(Invocation())
            flaky = await fresh(pool, meta=SandboxMeta(label="flaky"))
            try:
                await flaky.invoke(Invocation())
                outcomes.append("ok")
            except SandboxDead:
                outcomes.append("crashed")
        assert outcomes == ["crashed", "crashed", "ok", "ok"]
        assert steady.state is SandboxState.RUNNING and pool.fired(fault) == 2


async def test_first_firing_call_fault_wins(autojump_clock):
    first, second = OOM(times=1), CrashDuringCall()
    async with open_simulated_pool(behaviour(faults=[first, second])) as pool:
        reasons = []
        for _ in range(2):
            sb = await fresh(pool)
            with pytest.raises(SandboxDead) as info:
                await sb.invoke(Invocation())
            reasons.append(info.value.cause)
        assert reasons[0].code is CauseCode.OOM and reasons[1] == CRASH_DURING_CALL
        assert pool.fired(first) == 1 and pool.fired(second) == 1


async def test_probability_is_drawn_from_the_rng(autojump_clock):
    n, seed = 64, 7
    fault = SlowCreate(extra_s=1.0, p=0.5)
    async with open_simulated_pool(behaviour(seed=seed, faults=[fault])) as pool:
        slow = []
        for _ in range(n):
            t = trio.current_time()
            await fresh(pool)
            slow.append(trio.current_time() - t > CREATE)
    replay = random.Random(seed)
    assert slow == [replay.random() < 0.5 for _ in range(n)]  # the only draws made
    assert 0 < sum(slow) < n and pool.fired(fault) == sum(slow)


async def test_p_zero_never_fires_and_draws_nothing(autojump_clock):
    rng_state = random.Random(3).getstate()
    async with open_simulated_pool(behaviour(seed=3, faults=[CrashDuringCall(p=0.0)])) as pool:
        sb = await fresh(pool)
        for _ in range(10):
            await sb.invoke(Invocation())
        assert pool.counters["fault:CrashDuringCall"] == 0
        assert pool.behaviour.rng.getstate() == rng_state


def test_fault_fields_are_validated():
    with pytest.raises(ValueError):
        Hang(p=1.5)
    with pytest.raises(ValueError):
        OOM(times=-1)
    assert CrashWhileIdle(3.0, p=0.25).after_s == 3.0
    assert Hang() != Hang()  # faults count separately: identity, not value


# ----------------------------------------------------------------------- kill
async def test_kill_an_idle_sandbox(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        sb = await fresh(pool)
        events = pool.subscribe()
        t = trio.current_time()
        pool.kill(sb, SIGKILL)
        event = await next_destroyed(events)
        assert event == SandboxDestroyed(sb, SIGKILL)
        assert trio.current_time() - t == DESTROY
        assert sb.state is SandboxState.DEAD and sb.death_cause == SIGKILL
        assert pool.counters["killed"] == 1 and pool.sandboxes() == []
        with pytest.raises(SandboxError, match="not a live sandbox"):
            pool.kill(sb, SIGKILL)


async def test_kill_during_a_call_fails_the_call(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        sb = await fresh(pool)
        errors = []

        async def call() -> None:
            try:
                await sb.invoke(Invocation())
            except SandboxDead as exc:
                errors.append(exc.cause)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.sleep(CALL / 2)
            assert sb.raw.in_call
            pool.kill(sb, SEGFAULT)
        assert errors == [SEGFAULT] and sb.death_cause == SEGFAULT
        assert sb.released


async def test_killing_a_zygote_kills_its_descendants(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        inner = await pool.create(zygote, False, None, None, ZYGOTE)
        leaf = await pool.create(inner, True, None, None, LEAF)
        bystander = await fresh(pool)
        events = pool.subscribe()
        pool.kill(zygote, SEGFAULT)
        while pool.sandboxes() != [bystander]:
            await next_destroyed(events)
        assert zygote.death_cause == SEGFAULT
        zygote_died = Cause.of(CauseCode.ZYGOTE_DIED, zygote="sim-1")
        assert inner.death_cause == leaf.death_cause == zygote_died
        assert not zygote_died.counts_against_function
        assert bystander.state is SandboxState.RUNNING


async def test_zygote_killed_during_a_fork_fails_the_fork(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        events = pool.subscribe()
        errors = []

        async def fork() -> None:
            try:
                await pool.create(zygote, True, None, None, LEAF)
            except SandboxError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fork)
            await trio.sleep(FORK / 2)
            pool.kill(zygote, SEGFAULT)
        assert errors == ["creating sandbox sim-2 failed: zygote sim-1 died during the fork"]
        assert await next_destroyed(events) == SandboxDestroyed(zygote, SEGFAULT)
        assert pool.sandboxes() == [] and zygote.live_children == 0


async def test_handler_error_destroys_with_its_repr(autojump_clock):
    async def broken(sandbox: SimulatedSandbox, invocation: Invocation) -> InvocationResult:
        raise ValueError("boom")

    async with open_simulated_pool(behaviour(handler=broken)) as pool:
        sb = await fresh(pool)
        with pytest.raises(SandboxDead) as info:
            await sb.invoke(Invocation())
        assert info.value.cause == Cause.of(CauseCode.UNKNOWN, error="ValueError('boom')")
        assert sb.released


async def test_raw_sandbox_refuses_calls_while_frozen(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        sb = await fresh(pool)
        await sb.raw.freeze()
        with pytest.raises(SandboxStateError, match="frozen"):
            await sb.raw.invoke(Invocation())
        await sb.raw.thaw()
        assert (await sb.raw.invoke(Invocation(body=b"x"))).body == b"x"


async def test_kill_refuses_foreign_objects(autojump_clock):
    async with open_simulated_pool(behaviour()) as pool:
        with pytest.raises(SandboxError):
            pool.kill(object(), SIGKILL)  # type: ignore[arg-type]


# ----------------------------------------------------------------- determinism
async def scenario(seed: int) -> list:
    """A scripted run with random latencies and probabilistic faults; returns its trace."""
    faults = [
        SlowCreate(extra_s=0.1, p=0.3),
        CreateFails("flaky create", p=0.1),
        CrashDuringCall(delay_s=0.01, p=0.1),
        OOM(p=0.05),
        CrashWhileIdle(after_s=0.5, p=0.2),
    ]

    async def handler(sandbox: SimulatedSandbox, invocation: Invocation) -> InvocationResult:
        await trio.sleep(sandbox.rng.expovariate(50.0))
        return InvocationResult(200, (), invocation.body)

    b = SimulatedBehaviour(
        rng=random.Random(seed),
        create_s=uniform(0.02, 0.04),
        fork_s=uniform(0.003, 0.006),
        pause_s=uniform(0.0001, 0.0003),
        unpause_s=uniform(0.0001, 0.0003),
        destroy_s=uniform(0.002, 0.004),
        handler=handler,
        memory_mb=lambda rng, meta: rng.randint(10, meta.limits.mem_mb),
        faults=faults,
    )
    trace: list = []
    start = trio.current_time()

    def note(*what) -> None:
        trace.append((round(trio.current_time() - start, 9), *what))

    async with open_simulated_pool(b) as pool:
        events = pool.subscribe(buffer=10_000)
        zygote = None
        while zygote is None:
            try:
                zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
            except SandboxError as exc:
                note("create failed", str(exc))
        for i in range(40):
            try:
                sb = await pool.create(zygote if i % 2 else None, True, None, None, LEAF)
            except SandboxError as exc:
                note("create failed", str(exc))
                continue
            for _ in range(3):
                try:
                    result = await sb.invoke(Invocation(body=b"%d" % i))
                    note("ok", sb.id, result.body, sb.usage().memory_bytes)
                except SandboxError as exc:
                    note("call failed", sb.id, str(exc))
                    break
                await trio.sleep(0.2 * (i % 4))
            if sb.state is SandboxState.RUNNING:
                await sb.pause()
                note("paused", sb.id)
        await trio.sleep(1.0)
        note("counters", sorted(pool.counters.items()))
        for event in drain(events):
            trace.append(
                (type(event).__name__, event.sandbox.id if hasattr(event, "sandbox") else "")
            )
    return trace


async def test_same_seed_same_trace(autojump_clock):
    first = await scenario(11)
    second = await scenario(11)
    assert first == second
    assert any(t[1] == "call failed" for t in first if len(t) > 1)
    assert any(CRASH_WHILE_IDLE.summary() in str(t) for t in first)
    assert first != await scenario(12)


async def test_many_sandboxes_in_virtual_time(autojump_clock):
    async with open_simulated_pool(behaviour(handler=None)) as pool:
        zygote = await fresh(pool, is_leaf=False, meta=ZYGOTE)
        t = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(2000):
                nursery.start_soon(pool.create, None, True, None, None, LEAF)
        assert trio.current_time() - t == CREATE  # concurrent fresh creates overlap
        assert len(pool.sandboxes()) == 2001 and zygote.live_children == 0
        assert all(isinstance(sb, SafeSandbox) for sb in pool.sandboxes())
