"""The actor runtime against the simulated sandbox pool, in virtual time.

Every test drives the real actors (manager, functions, supervised instances,
import cache, memory pool, evictor, code puller) through ``Worker.invoke``;
only the sandboxes are simulated (olactors.sock.simulated), and trio's
autojump MockClock makes every timeout instant and exact.
"""

from __future__ import annotations

import os
import random
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from olactors._config import build_config
from olactors._errors import (
    FunctionFailing,
    FunctionNotFound,
    HandlerTimeout,
    InitTimeout,
    MethodNotAllowed,
    PackageInstallFailed,
    QueueFull,
    SandboxDied,
    ShuttingDown,
)
from olactors.packages import Pin
from olactors.sock import Invocation, InvocationResult, SandboxState
from olactors.sock.simulated import (
    CRASH_DURING_CALL,
    CrashDuringCall,
    Hang,
    SimulatedBehaviour,
    SlowInit,
    constant,
    echo,
    open_simulated_pool,
)
from olactors.worker import open_worker

from .conftest import write_function
from .thread_aware_clock import thread_aware_clock


@pytest.fixture
def clock(monkeypatch):
    """Virtual time that jumps ahead only after 20 ms of real idleness and never
    while a worker thread runs: the code puller snapshots code in threads, and
    an autojump then would leap over every timer while a thread copies a file."""
    return thread_aware_clock(monkeypatch)


BASE = [
    "registry.cache_s=1.0",
    "functions.idle_timeout_s=60",
    "functions.pause_after_s=0.5",
    "functions.max_instances=4",
    "functions.restart_intensity=2",
    "functions.restart_period_s=10",
    "functions.failure_cooldown_s=5",
    "limits.zygote_mem_mb=64",
    "memory.pool_mb=4096",
    "memory.free_goal_mb=0",
]


def sleepy(seconds: float):
    async def handler(sandbox, inv: Invocation) -> InvocationResult:
        await trio.sleep(seconds)
        return InvocationResult(200, (), inv.body or b"null")

    return handler


def by_function(**handlers):
    """A handler dispatching on the function name (the sandbox's label)."""

    async def handler(sandbox, inv):
        return await handlers.get(sandbox.meta.label, echo)(sandbox, inv)

    return handler


@asynccontextmanager
async def sim_worker(worker_dir: Path, *overrides: str, faults=(), handler=None, seed=1):
    behaviour = SimulatedBehaviour(rng=random.Random(seed), faults=list(faults))
    if handler is not None:
        behaviour.handler = handler
    config = build_config(None, [*BASE, *overrides])
    async with open_simulated_pool(behaviour) as pool:
        async with open_worker(config, worker_dir, pool=pool) as worker:
            yield worker, pool


def fn(worker_dir: Path, name: str, ol_yaml: str | None = None) -> Path:
    path = write_function(worker_dir / "registry", name, "def f(event):\n    return event\n")
    if ol_yaml is not None:
        (path / "ol.yaml").write_text(ol_yaml)
    return path


async def call(worker, name: str, body: bytes = b"1", method: str = "POST"):
    return await worker.invoke(name, Invocation(method=method, body=body), "req")


def leaves(pool):
    return [sb for sb in pool.sandboxes() if sb.is_leaf]


async def test_cold_then_warm_call_forked_from_the_root_zygote(worker_dir, clock):
    fn(worker_dir, "echo")
    async with sim_worker(worker_dir) as (worker, pool):
        first = await call(worker, "echo", b'{"a": 1}')
        assert (first.status, first.body) == (200, b'{"a": 1}')
        assert (await call(worker, "echo")).body == b"1"
        m = worker.metrics.function("echo")
        assert (m.cold_starts, m.warm_starts, m.invocations) == (1, 1, 2)
        assert pool.counters["forked"] == 1  # the leaf came from the zygote
        zygotes = [sb for sb in pool.sandboxes() if not sb.is_leaf]
        assert len(zygotes) == 1 and zygotes[0].live_children == 1


async def test_idle_sandbox_is_paused_and_unpaused_for_the_next_call(worker_dir, clock):
    fn(worker_dir, "echo")
    async with sim_worker(worker_dir) as (worker, pool):
        await call(worker, "echo")
        await trio.sleep(1.0)
        [leaf] = leaves(pool)
        assert leaf.state is SandboxState.PAUSED
        await call(worker, "echo")
        assert leaf.state is SandboxState.RUNNING
        assert worker.metrics.function("echo").warm_starts == 1


async def test_full_queue_answers_429_at_once(worker_dir, clock):
    fn(worker_dir, "slow")
    outcomes = []
    async with sim_worker(
        worker_dir, "queue.max_depth=2", "functions.max_instances=1", handler=sleepy(1.0)
    ) as (worker, _):

        async def one():
            try:
                await call(worker, "slow")
                outcomes.append("ok")
            except QueueFull as exc:
                outcomes.append((trio.current_time(), exc.status))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            await trio.sleep(0.5)  # the first call is running
            start = trio.current_time()
            for _ in range(9):
                nursery.start_soon(one)
                await trio.sleep(0.01)
    rejected = [o for o in outcomes if o != "ok"]
    # one running, one in the actor's hand, two queued; the rest rejected at once
    assert outcomes.count("ok") == 4
    assert len(rejected) == 6 and all(s == 429 for _, s in rejected)
    assert all(t - start < 0.1 for t, _ in rejected)  # at once, not after waiting


async def test_scales_out_for_slow_calls_within_max_instances(worker_dir, clock):
    fn(worker_dir, "slow")
    async with sim_worker(worker_dir, handler=sleepy(2.0)) as (worker, pool):
        await call(worker, "slow")  # learn the duration
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, len(leaves(pool)))
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as callers:
                for _ in range(12):
                    callers.start_soon(call, worker, "slow")
            nursery.cancel_scope.cancel()
        assert peak == 4  # functions.max_instances


async def test_idle_function_releases_everything(worker_dir, clock):
    fn(worker_dir, "echo")
    async with sim_worker(worker_dir, "functions.idle_timeout_s=30") as (worker, pool):
        await call(worker, "echo")
        assert (worker_dir / "run" / "code" / "echo").exists()
        await trio.sleep(29)
        assert len(await worker.functions()) == 1
        await trio.sleep(2)
        assert await worker.functions() == []
        assert leaves(pool) == []
        assert not (worker_dir / "run" / "code" / "echo").exists()
        assert worker.metrics.function("echo").invocations == 1  # accounting survives
        assert (await call(worker, "echo")).status == 200  # and it comes back on demand


async def test_a_call_while_the_idle_function_stops_runs_code_that_stays(worker_dir, clock):
    """A call that arrives while an idled-out function is still stopping (its
    sandboxes being destroyed) starts the function again. The new incarnation
    waits for the old one's stop, which deletes the old one's code snapshots,
    so it never runs from a snapshot deleted under it (in CI, forked leaves
    found /handler emptied: ModuleNotFoundError for f)."""
    fn(worker_dir, "echo")

    async def code_stays(sandbox, inv: Invocation) -> InvocationResult:
        await trio.sleep(5)  # past the old incarnation's stop
        there = os.path.isfile(os.path.join(sandbox.code_dir, "f.py"))
        return InvocationResult(200 if there else 500, (), b"ok" if there else b"code gone")

    behaviour = SimulatedBehaviour(
        rng=random.Random(1), handler=code_stays, destroy_s=constant(2.0)
    )
    config = build_config(None, [*BASE, "functions.idle_timeout_s=30"])
    async with open_simulated_pool(behaviour) as pool:
        async with open_worker(config, worker_dir, pool=pool) as worker:
            assert (await call(worker, "echo")).status == 200
            await trio.sleep(31)  # idled out: its sandbox takes 2 s to destroy
            assert leaves(pool), "the old incarnation is still stopping"
            answer = await call(worker, "echo")
            assert (answer.status, answer.body) == (200, b"ok")
            assert (worker_dir / "run" / "code" / "echo").exists()


async def test_unknown_function_is_404_and_leaves_no_actor(worker_dir, clock):
    async with sim_worker(worker_dir) as (worker, _):
        with pytest.raises(FunctionNotFound):
            await call(worker, "nope")
        await trio.sleep(0.1)
        assert await worker.functions() == []
        assert "nope" not in worker.metrics.functions and worker.metrics.not_found == 1


async def test_method_filter(worker_dir, clock):
    fn(worker_dir, "getter", "triggers:\n  http:\n    - method: GET\n")
    async with sim_worker(worker_dir) as (worker, _):
        assert (await call(worker, "getter", b"", method="GET")).status == 200
        with pytest.raises(MethodNotAllowed) as info:
            await call(worker, "getter", method="POST")
        assert info.value.status == 405 and info.value.allowed == ("GET",)


async def test_crash_mid_call_is_502_then_a_fresh_sandbox_serves(worker_dir, clock):
    fn(worker_dir, "echo")
    crash = CrashDuringCall(times=1)
    async with sim_worker(worker_dir, faults=[crash]) as (worker, pool):
        with pytest.raises(SandboxDied) as info:
            await call(worker, "echo")
        assert info.value.status == 502 and info.value.cause == CRASH_DURING_CALL
        assert info.value.details()["cause"] == CRASH_DURING_CALL.as_json()
        assert (await call(worker, "echo")).status == 200
        assert worker.metrics.function("echo").sandbox_failures == 1
        assert pool.counters["created"] == 3  # zygote, the crashed leaf, its replacement


async def test_restart_intensity_escalates_to_function_failing(worker_dir, clock):
    fn(worker_dir, "crashy")
    async with sim_worker(worker_dir, faults=[CrashDuringCall()]) as (worker, pool):
        for _ in range(3):  # restart_intensity=2: the third failure escalates
            with pytest.raises(SandboxDied):
                await call(worker, "crashy")
        created = pool.counters["created"]
        with pytest.raises(FunctionFailing) as info:
            await call(worker, "crashy")
        assert info.value.status == 503 and 0 < info.value.retry_after_s <= 5
        assert "crash" in info.value.message
        assert pool.counters["created"] == created  # no sandbox restarted in a loop
        assert worker.metrics.escalations == 1
        await trio.sleep(5)  # after the cool-down it tries again
        with pytest.raises(SandboxDied):
            await call(worker, "crashy")


async def test_runtime_limit_gives_504_and_destroys_the_sandbox(worker_dir, clock):
    fn(worker_dir, "stuck", "limits:\n  runtime_s: 2\n")
    hang = Hang(times=1, match=lambda sb: sb.calls >= 2)  # its second call hangs
    async with sim_worker(worker_dir, faults=[hang]) as (worker, pool):
        await worker.invoke("stuck", Invocation(method="GET", path="/warm"), "warm-up")
        start = trio.current_time()
        with pytest.raises(HandlerTimeout) as info:
            await call(worker, "stuck")
        assert info.value.status == 504
        assert trio.current_time() - start == pytest.approx(2, abs=0.1)
        await trio.sleep(0.01)
        assert leaves(pool) == []
        assert (await call(worker, "stuck")).status == 200  # not counted as a failure
        assert worker.metrics.function("stuck").sandbox_failures == 0


def labelled(name: str):
    return lambda sb: sb.meta.label == name


async def test_init_timeout_is_answered_once_and_escalates_at_once(worker_dir, clock):
    fn(worker_dir, "heavy", "limits:\n  init_s: 3\n")
    slow = SlowInit(import_s=4, match=labelled("heavy"))
    async with sim_worker(worker_dir, faults=[slow]) as (worker, pool):
        start = trio.current_time()
        with pytest.raises(InitTimeout) as info:
            await call(worker, "heavy")
        assert (info.value.status, info.value.code) == (504, "init_timeout")
        assert "init limit of 3 s (limits.init_s)" in info.value.message
        # tried once: a retry would take another 3 s (virtual time may jump a
        # timer ahead while a worker thread snapshots the code)
        assert 3 <= trio.current_time() - start < 6
        m = worker.metrics.function("heavy")
        assert (m.sandbox_starts, m.init_timeouts, m.cold_starts) == (1, 1, 0)
        assert leaves(pool) == []
        [zygote] = pool.sandboxes()
        assert zygote.live_children == 0  # the child that never started is not counted
        # Restarting cannot fix it: the first one escalates (restart_intensity=2 is
        # never reached by failures init_s apart), and calls meanwhile cost nothing.
        with pytest.raises(FunctionFailing) as failing:
            await call(worker, "heavy")
        assert "limits.init_s" in failing.value.message
        assert worker.metrics.escalations == 1
        assert m.sandbox_starts == 1
        await trio.sleep(5)  # functions.failure_cooldown_s: then it tries again, once
        with pytest.raises(InitTimeout):
            await call(worker, "heavy")
        with pytest.raises(FunctionFailing):
            await call(worker, "heavy")
        assert (m.sandbox_starts, m.init_timeouts, worker.metrics.escalations) == (2, 2, 2)


async def test_init_timeouts_do_not_scale_the_function_out(worker_dir, clock):
    fn(worker_dir, "heavy", "limits:\n  init_s: 3\n")
    slow = SlowInit(import_s=4, match=labelled("heavy"))
    async with sim_worker(worker_dir, faults=[slow]) as (worker, _):
        with pytest.raises(InitTimeout):
            await call(worker, "heavy")
        await trio.sleep(5)  # the cool-down
        outcomes = []

        async def one():
            try:
                await call(worker, "heavy")
            except (InitTimeout, FunctionFailing) as exc:
                outcomes.append(exc.code)

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one)
                await trio.sleep(0.2)
        # The 3 s the first call took were no handler's time: one instance tries
        # (not functions.max_instances, each spending init_s), the rest cool down.
        assert sorted(outcomes) == ["function_failing"] * 5 + ["init_timeout"]
        assert worker.metrics.function("heavy").sandbox_starts == 2


async def test_an_installer_whose_start_times_out_is_a_failed_install(worker_dir, tmp_path, clock):
    slow = SlowInit(import_s=999, match=lambda sb: sb.meta.label.startswith("installer"))
    async with sim_worker(worker_dir, faults=[slow]) as (worker, pool):
        puller = worker.package_puller
        puller.pip_dir = tmp_path  # as if pip were copied for installers
        with pytest.raises(PackageInstallFailed) as info:
            await puller._run_installer(Pin("alpha", "1.0"), tmp_path / "staging")
        assert info.value.status == 500 and "the installer did not start" in info.value.message
        assert "limits.init_s" in info.value.message
        assert pool.sandboxes() == [] and (await worker.mempool.snapshot()).used_mb == 0


async def test_init_within_its_limit_serves_and_does_not_hold_the_zygote(worker_dir, clock):
    fn(worker_dir, "heavy", "limits:\n  init_s: 10\n")
    fn(worker_dir, "light")
    slow = SlowInit(import_s=8, match=labelled("heavy"))
    async with sim_worker(worker_dir, faults=[slow]) as (worker, pool):
        await call(worker, "light")  # the zygote exists
        finished = {}

        async def timed(name):
            start = trio.current_time()
            assert (await call(worker, name)).status == 200
            finished[name] = trio.current_time() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(timed, "heavy")
            await trio.sleep(1)
            nursery.start_soon(timed, "light")  # forks while "heavy" still imports
            await trio.sleep(0.01)
            assert len(leaves(pool)) == 1  # only "light" so far
            fn(worker_dir, "light2")
            nursery.start_soon(timed, "light2")
        assert 8 <= finished["heavy"] < 10
        assert finished["light2"] < 5  # the zygote's lock is not held during an import
        assert worker.metrics.function("heavy").init_timeouts == 0
        assert pool.counters["forked"] == 3


async def test_code_update_goes_to_new_instances(worker_dir, clock):
    path = fn(worker_dir, "app")
    async with sim_worker(worker_dir) as (worker, pool):
        await call(worker, "app")
        [old_leaf] = leaves(pool)
        (path / "f.py").write_text("def f(event):\n    return 2\n")
        await trio.sleep(1.1)  # registry.cache_s
        await call(worker, "app")
        await trio.sleep(0.1)  # the old instance stops after its call
        [new_leaf] = leaves(pool)
        assert new_leaf is not old_leaf and old_leaf.state is SandboxState.DEAD
        [status] = await worker.functions()
        versions = list((worker_dir / "run" / "code" / "app").iterdir())
        assert [v.name for v in versions] == [status["version"]]  # old snapshot released


async def test_reuse_sandbox_false_destroys_after_every_call(worker_dir, clock):
    fn(worker_dir, "once", "reuse_sandbox: false\n")
    async with sim_worker(worker_dir) as (worker, pool):
        for _ in range(3):
            await call(worker, "once")
            await trio.sleep(0.01)  # destroyed right after answering
            assert leaves(pool) == []
        assert worker.metrics.function("once").cold_starts == 3


async def test_import_cache_disabled_starts_fresh(worker_dir, clock):
    fn(worker_dir, "echo")
    async with sim_worker(worker_dir, "import_cache.enabled=false") as (worker, pool):
        await call(worker, "echo")
        assert pool.counters["forked"] == 0
        assert [sb.is_leaf for sb in pool.sandboxes()] == [True]


async def test_zygote_tree_forks_down_package_free_nodes(worker_dir, tmp_path, clock):
    tree = tmp_path / "tree.yaml"
    tree.write_text(
        "root:\n  name: root\n  children:\n"
        "    - name: a\n      imports: [json]\n      children:\n"
        "        - name: b\n          imports: [decimal]\n"
    )
    fn(worker_dir, "echo")
    async with sim_worker(worker_dir, f"import_cache.tree={tree}") as (worker, pool):
        await call(worker, "echo")
        by_label = {sb.raw.meta.label: sb for sb in pool.sandboxes()}
        assert set(by_label) == {"zygote:root", "zygote:a", "zygote:b", "echo"}
        assert by_label["echo"].parent is by_label["zygote:b"]
        assert by_label["zygote:b"].parent is by_label["zygote:a"]
        assert by_label["zygote:b"].raw.meta.imports == ("decimal",)
        await trio.sleep(2)  # unused zygotes pause; the one with a child stays referenced
        assert by_label["zygote:root"].state is SandboxState.PAUSED


async def test_memory_pressure_evicts_paused_sandboxes_lru(worker_dir, clock):
    for name in ("a", "b", "c"):
        fn(worker_dir, name)
    # zygote 64 + two leaves of 128 fit in 330 MB; a third leaf does not.
    async with sim_worker(worker_dir, "memory.pool_mb=330") as (worker, pool):
        await call(worker, "a")
        await call(worker, "b")
        await trio.sleep(1)  # both paused
        await call(worker, "c")  # must evict "a" (least recently used)
        labels = sorted(sb.raw.meta.label for sb in leaves(pool))
        assert labels == ["b", "c"]
        assert worker.metrics.evictions == 1
        snap = await worker.mempool.snapshot()
        assert snap.used_mb == 64 + 2 * 128 <= snap.total_mb
        assert (await call(worker, "a")).status == 200  # evicted "b" now
        assert worker.metrics.evictions == 2


async def test_shutdown_drains_in_flight_calls_and_refuses_new_ones(worker_dir, clock):
    fn(worker_dir, "slow")
    results = []
    async with sim_worker(worker_dir, handler=sleepy(3.0)) as (worker, pool):

        async def one():
            results.append((await call(worker, "slow")).status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            await trio.sleep(0.5)
            worker.begin_shutdown()
            with pytest.raises(ShuttingDown):
                await call(worker, "slow")
    assert results == [200]
    assert pool.sandboxes() == []
