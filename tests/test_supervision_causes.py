"""Supervision follows the typed cause, the per-call trace, and the one owner
of getting a sandbox (actors on the simulated pool, virtual time).

* a death that is not the function's fault (its zygote died, it was evicted,
  its code was updated) is answered 502 with that cause but never counted
  against the function's restart intensity; one that is (an OOM) is, and
  escalates after the intensity;
* each call's :class:`CallTrace` says which sandbox served it, whether it
  was cold and why, its CPU time and memory;
* :class:`SandboxAcquirer` gives back its reservation on every failure path,
  so the memory ledger always equals the live sandboxes' limits.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from olactors._causes import Cause, CauseCode, released
from olactors._errors import FunctionFailing, MemoryExhausted, SandboxDied, SandboxError
from olactors._records import CallTrace, ColdReason
from olactors.actors._acquire import SandboxAcquirer, SandboxKind
from olactors.sock import Invocation, SandboxLimits, SandboxMeta, SandboxState
from olactors.sock.simulated import OOM, CreateFails, SlowCreate

from .test_actors import fn, leaves, sim_worker, sleepy
from .thread_aware_clock import thread_aware_clock


@pytest.fixture
def clock(monkeypatch):
    """Virtual time, as in test_actors (no autojump while a worker thread runs)."""
    return thread_aware_clock(monkeypatch)


EVICTED = Cause.of(CauseCode.EVICTED, policy="test")
CODE_UPDATED = Cause.of(CauseCode.CODE_UPDATED, version="v2")


async def traced(worker, name: str, body: bytes = b"1") -> tuple[int, CallTrace]:
    trace = CallTrace()
    result = await worker.manager.invoke(name, Invocation(body=body), "req", trace)
    return result.status, trace


async def died_mid_call(worker, pool, name: str, kill) -> SandboxDied:
    """A call whose sandbox ``kill(pool)`` ends while it runs; its 502."""
    errors: list[SandboxDied] = []

    async def one_call() -> None:
        with pytest.raises(SandboxDied) as info:
            await worker.invoke(name, Invocation(body=b"1"), "req")
        errors.append(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_call)
        await trio.sleep(0.5)  # the handler sleeps 1 s
        kill(pool)
    return errors[0]


def zygote_of(pool):
    return next(sb for sb in pool.sandboxes() if not sb.is_leaf)


@pytest.mark.parametrize("how", ["zygote_died", "evicted", "code_updated"])
async def test_deaths_not_the_functions_fault_are_never_counted(worker_dir, clock, how):
    fn(worker_dir, "slow")
    kills = {
        "zygote_died": lambda pool: pool.kill(zygote_of(pool)),
        "evicted": lambda pool: pool.kill(leaves(pool)[0], EVICTED),
        "code_updated": lambda pool: pool.kill(leaves(pool)[0], CODE_UPDATED),
    }
    async with sim_worker(worker_dir, handler=sleepy(1.0)) as (worker, pool):
        for _ in range(4):  # restart_intensity=2: a counted death would escalate by now
            error = await died_mid_call(worker, pool, "slow", kills[how])
            assert error.cause is not None and error.cause.code.value == how
            assert error.details()["cause"]["code"] == how
        assert (await worker.invoke("slow", Invocation(body=b"1"), "req")).status == 200
        metrics = worker.metrics.function("slow")
        assert metrics.sandbox_failures == 0 and worker.metrics.escalations == 0


async def test_an_oom_counts_and_escalates_after_the_intensity(worker_dir, clock):
    fn(worker_dir, "hog", "limits:\n  mem_mb: 96\n")
    async with sim_worker(worker_dir, faults=[OOM()]) as (worker, pool):
        for _ in range(3):  # restart_intensity=2: the third failure escalates
            with pytest.raises(SandboxDied) as info:
                await worker.invoke("hog", Invocation(body=b"1"), "req")
            assert info.value.cause == Cause.of(CauseCode.OOM, limit_mb=96)
        with pytest.raises(FunctionFailing) as failing:
            await worker.invoke("hog", Invocation(body=b"1"), "req")
        assert failing.value.cause is None  # answered without a sandbox
        assert worker.metrics.function("hog").sandbox_failures == 3
        assert worker.metrics.escalations == 1


async def test_the_trace_says_why_a_call_was_cold(worker_dir, clock):
    path = fn(worker_dir, "app")
    async with sim_worker(worker_dir) as (worker, pool):
        status, first = await traced(worker, "app")
        assert status == 200 and (first.cold, first.cold_reason) == (True, ColdReason.FIRST)
        assert first.version is not None and first.queue_ms is not None
        assert first.sandbox == leaves(pool)[0].id and first.memory_limit_mb == 128
        assert first.cpu_ms is not None and first.cpu_ms > 0
        assert first.memory_peak_mb == 32  # the simulated pool reports a quarter of the limit
        assert first.cause is None

        _, warm = await traced(worker, "app")
        assert (warm.cold, warm.cold_reason, warm.sandbox) == (False, None, first.sandbox)

        await trio.sleep(1.0)  # paused (pause_after_s=0.5), then evicted
        [leaf] = leaves(pool)
        assert leaf.state is SandboxState.PAUSED
        assert await leaf.destroy_if_paused(EVICTED)
        _, after_eviction = await traced(worker, "app")
        assert after_eviction.cold_reason is ColdReason.EVICTED

        [leaf] = leaves(pool)
        pool.kill(leaf)  # dies while idle
        await trio.sleep(0.1)
        _, after_death = await traced(worker, "app")
        assert after_death.cold_reason is ColdReason.RESTARTED

        (path / "f.py").write_text("def f(event):\n    return 2\n")
        await trio.sleep(1.1)  # registry.cache_s
        _, updated = await traced(worker, "app")
        assert updated.cold_reason is ColdReason.CODE_UPDATED
        assert updated.version != first.version


async def test_the_trace_says_a_call_was_cold_because_others_were_busy(worker_dir, clock):
    fn(worker_dir, "slow")
    async with sim_worker(worker_dir, handler=sleepy(1.0)) as (worker, pool):
        traces: list[CallTrace] = []

        async def one() -> None:
            traces.append((await traced(worker, "slow"))[1])

        await one()  # the function's calls take 1 s: known before it scales
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
        reasons = [t.cold_reason for t in traces]
        assert reasons[0] is ColdReason.FIRST and ColdReason.SCALED_UP in reasons[1:]
        assert all(t.cold == (t.cold_reason is not None) for t in traces)


# --------------------------------------------------------------- acquiring
def acquirer(worker) -> SandboxAcquirer:
    return SandboxAcquirer(worker.pool, worker.mempool, worker.config)


def ledger_balances(worker) -> bool:
    books = worker.mempool.accounting(worker.pool)
    return books.used_mb == sum(books.live.values()) and not books.pending


LEAF = SandboxLimits(mem_mb=100)


async def test_acquire_releases_when_the_creation_fails(worker_dir, clock):
    async with sim_worker(worker_dir, faults=[CreateFails()]) as (worker, _pool):
        with pytest.raises(SandboxError) as info:
            await acquirer(worker).acquire(SandboxKind.LEAF, SandboxMeta(), leaf_limits=LEAF)
        assert info.value.cause is not None
        assert info.value.cause.code is CauseCode.STARTUP_FAILED
        await trio.sleep(0.01)
        assert worker.mempool.ledger.used_mb == 0 and ledger_balances(worker)


async def test_a_failed_fork_falls_back_to_a_fresh_sandbox_on_one_reservation(worker_dir, clock):
    fails_once = CreateFails(times=1, match=lambda sb: sb.parent is not None)  # forks only
    async with sim_worker(worker_dir, faults=[fails_once]) as (worker, pool):
        get = acquirer(worker)
        zygote = await get.acquire(SandboxKind.ZYGOTE, SandboxMeta(label="z"))
        assert zygote.meta.limits.mem_mb == worker.config.limits.zygote_mem_mb

        class Lease:
            async def __aenter__(self):
                return zygote

            async def __aexit__(self, *exc):
                return False

        leaf = await get.acquire(SandboxKind.LEAF, SandboxMeta(), leaf_limits=LEAF, fork_from=Lease)
        assert pool.fired(fails_once) == 1 and leaf.live_children == 0
        assert pool.counters["forked"] == 0  # the fork failed: the leaf is fresh
        await trio.sleep(0.01)
        assert worker.mempool.reserved_mb(leaf.id) == 100
        assert worker.mempool.ledger.used_mb == 100 + zygote.meta.limits.mem_mb
        assert ledger_balances(worker)
        await leaf.destroy(released("test"))
        await zygote.destroy(released("test"))
        await trio.sleep(0.01)
        assert worker.mempool.ledger.used_mb == 0


async def test_a_cancelled_acquire_gives_its_memory_back(worker_dir, clock):
    async with sim_worker(worker_dir, faults=[SlowCreate(extra_s=10)]) as (worker, pool):
        with trio.move_on_after(1):
            await acquirer(worker).acquire(SandboxKind.LEAF, SandboxMeta(), leaf_limits=LEAF)
        await trio.sleep(0.01)
        assert worker.mempool.ledger.used_mb == 0 and pool.sandboxes() == []


async def test_an_installer_gets_the_installer_limits_and_too_big_reserves_nothing(
    worker_dir, clock
):
    async with sim_worker(worker_dir, "packages.install_mem_mb=256") as (worker, _pool):
        get = acquirer(worker)
        limits = get.limits(SandboxKind.INSTALLER)
        assert (limits.mem_mb, limits.procs) == (256, 64)
        with pytest.raises(MemoryExhausted):
            await get.acquire(
                SandboxKind.LEAF, SandboxMeta(), leaf_limits=SandboxLimits(mem_mb=1 << 20)
            )
        assert worker.mempool.ledger.used_mb == 0


async def test_a_leaf_waits_for_its_zygote_only_within_one_memory_wait(worker_dir, clock):
    """The memory waits of one acquisition never stack: a leaf whose zygote
    is not ready (e.g. still waiting for memory to be built) waits only for
    what is left of ``memory.reserve_timeout_s`` after its own reservation,
    then starts fresh on that same reservation."""
    async with sim_worker(worker_dir, "memory.reserve_timeout_s=5") as (worker, pool):
        leased = []

        class NeverReady:
            async def __aenter__(self):
                leased.append(trio.current_time())
                await trio.sleep_forever()  # a zygote build stuck waiting for memory

            async def __aexit__(self, *exc):
                return False

        start = trio.current_time()
        with trio.fail_after(60):  # virtual time
            leaf = await acquirer(worker).acquire(
                SandboxKind.LEAF, SandboxMeta(), leaf_limits=LEAF, fork_from=NeverReady
            )
        waited = trio.current_time() - start
        assert leased and 5 <= waited < 6  # the lease got the budget, not a budget of its own
        assert pool.counters["forked"] == 0 and leaf.state is SandboxState.RUNNING
        await trio.sleep(0.01)  # the memory pool applies the bind
        assert worker.mempool.reserved_mb(leaf.id) == 100 and ledger_balances(worker)
        await leaf.destroy(released("test"))
