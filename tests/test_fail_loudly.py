"""Issue 11, defect 5: nothing may fail silently.

Each test fails on the code before its fix:

1. a pool-event listener that raises once stays (logged, counted), so the
   memory pool keeps giving memory back;
2. an evictor that falls behind the pool's events resubscribes and rebuilds
   its view instead of ending quietly;
3. the zygote suitability check never reads an unreadable /proc entry as "fit";
4. a sandbox is never started without its seccomp filter;
5. a failed sandbox release is visible (event, counter, log), keeps the memory
   reserved while the processes may live, and is retried.

Unit tests run on the simulated pool and on fakes (virtual time); what only
the kernel decides runs on real sandboxes (root).
"""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

from olactors._metrics import Metrics
from olactors.actors import mempool as mempool_module
from olactors.actors.evictor import run_evictor
from olactors.actors.mempool import run_mempool
from olactors.sock import (
    EventHub,
    SandboxCreated,
    SandboxMeta,
    SandboxState,
)
from olactors.sock.simulated import (
    SimulatedBehaviour,
    SimulatedPool,
    constant,
    open_simulated_pool,
)

LEAF = SandboxMeta(label="leaf")


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def behaviour(**overrides) -> SimulatedBehaviour:
    return SimulatedBehaviour(rng=random.Random(1), create_s=constant(0.5), **overrides)


async def fresh(pool: SimulatedPool):
    return await pool.create(None, True, None, None, LEAF)


# ------------------------------------------------- 1. listeners that raise
async def test_a_listener_that_raises_stays_and_is_logged_and_counted(caplog):
    hub = EventHub()
    seen: list[object] = []
    others: list[object] = []

    def flaky(event: object) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("listener bug")

    hub.listen(flaky)
    hub.listen(others.append)
    events = hub.subscribe()
    first, second = SandboxCreated(object(), None), SandboxCreated(object(), None)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="olactors.sandbox"):
        hub.emit(first)
    hub.emit(second)
    assert seen == [first, second]  # kept: it got the next event too
    assert others == [first, second]  # the failure did not stop the others
    assert [events.receive_nowait(), events.receive_nowait()] == [first, second]
    assert hub.listener_errors == 1
    [record] = [r for r in caplog.records if "listener" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError  # with traceback


async def test_memory_is_still_returned_after_the_mempool_listener_raised_once(
    autojump_clock, monkeypatch
):
    """The memory pool's release listener failing once (a bug late in a
    release) must not stop every later release: memory would never come back."""
    original = mempool_module.MemPool.sandbox_released
    calls = 0

    def fails_once(self, sandbox_id: str) -> None:
        nonlocal calls
        calls += 1
        original(self, sandbox_id)
        if calls == 1:
            raise RuntimeError("bug after the release")

    monkeypatch.setattr(mempool_module.MemPool, "sandbox_released", fails_once)
    with trio.fail_after(60):
        async with open_simulated_pool(behaviour()) as pool, trio.open_nursery() as nursery:
            mem = await nursery.start(run_mempool, 1000, 5.0, pool)
            for _ in range(3):
                res = await mem.reserve(400, "test")
                sb = await fresh(pool)
                await mem.bind(res, sb)
                await sb.destroy("done")
                assert (await mem.snapshot()).used_mb == 0
            assert pool.sandbox_anomalies()["listener_errors"] == 1
            nursery.cancel_scope.cancel()


# --------------------------------------------- 2. an evictor that falls behind
async def test_an_evictor_that_falls_behind_resubscribes_and_resyncs(autojump_clock, caplog):
    """Eight sandboxes are created and paused in one scheduling batch, more
    events than the evictor's buffer of 2: the pool closes its channel.  The
    evictor must still know them all and evict them when memory is needed."""
    with trio.fail_after(60):
        async with open_simulated_pool(behaviour()) as pool, trio.open_nursery() as nursery:
            mem = await nursery.start(run_mempool, 1000, 5.0, pool)
            metrics = Metrics()
            evictor = await nursery.start(
                lambda task_status: run_evictor(
                    mem,
                    metrics,
                    pool,
                    buffer=2,
                    free_goal_mb=0,
                    interval_s=1.0,
                    max_concurrent=8,
                    task_status=task_status,
                )
            )

            async def paused_sandbox() -> None:
                res = await mem.reserve(100, "test")
                sb = await fresh(pool)
                await mem.bind(res, sb)
                await sb.pause()

            with caplog.at_level(logging.WARNING):
                async with trio.open_nursery() as batch:
                    for _ in range(8):
                        batch.start_soon(paused_sandbox)
                assert pool.sandbox_anomalies()["dropped_subscribers"] >= 1
                # 800 MB are held by paused sandboxes: 500 more needs 3 evicted.
                await mem.reserve(500, "needs eviction")
            assert evictor.resyncs >= 1
            assert any("resubscribed" in r.getMessage() for r in caplog.records)
            assert metrics.evictions == 3
            assert sum(sb.state is SandboxState.PAUSED for sb in pool.sandboxes()) == 5
            nursery.cancel_scope.cancel()


async def test_the_evictor_stops_following_only_when_the_pool_closes(autojump_clock):
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with open_simulated_pool(behaviour()) as pool:
                mem = await nursery.start(run_mempool, 1000, 5.0, pool)
                evictor = await nursery.start(
                    lambda task_status: run_evictor(
                        mem,
                        Metrics(),
                        pool,
                        free_goal_mb=0,
                        interval_s=1.0,
                        max_concurrent=8,
                        task_status=task_status,
                    )
                )
                await fresh(pool)
            await trio.sleep(1)  # the pool closed its events: no resubscription
            assert evictor.resyncs == 0
            with pytest.raises(trio.ClosedResourceError):
                pool.subscribe()
            nursery.cancel_scope.cancel()
