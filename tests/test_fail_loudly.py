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

import contextlib
import errno
import logging
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from olactors._causes import Cause, CauseCode, released
from olactors._config import build_config
from olactors._errors import ConfigError, SandboxError, ZygoteUnsuitable
from olactors._metrics import Metrics
from olactors.actors import mempool as mempool_module
from olactors.actors.evictor import run_evictor
from olactors.actors.mempool import run_mempool
from olactors.sock import (
    EventHub,
    SafeSandbox,
    SandboxCallUsage,
    SandboxCreated,
    SandboxDestroyed,
    SandboxMeta,
    SandboxState,
    SandboxUsage,
    open_sock_pool,
    seccomp,
)
from olactors.sock._safe import ReleaseFailed, destroy_all
from olactors.sock._sock import first_hierarchy_pids
from olactors.sock._suitability import InspectionFailed, unfit_to_fork
from olactors.sock.simulated import (
    ReleaseFails,
    SimulatedBehaviour,
    SimulatedPool,
    constant,
    open_simulated_pool,
)
from olactors.worker import open_worker

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
                await sb.destroy(released("done"))
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


# ------------------------------------------------ 3. zygote suitability check
def _spawn(code: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    return child


def test_a_live_process_gets_a_verdict(tmp_path):
    path = tmp_path / "written"
    child = _spawn(f"import sys; f = open({str(path)!r}, 'w'); sys.stdin.read()")
    try:
        deadline = time.monotonic() + 10
        wanted = f"a file open for writing ({path})"
        problems: list[str] = []
        while not any(wanted in p for p in problems):  # once the child opened it
            assert time.monotonic() < deadline, problems
            problems = unfit_to_fork(child.pid, ignore_fds={0, 1, 2})
    finally:
        child.communicate(b"")


def test_an_exited_process_is_no_verdict():
    """Before: a reaped process gave a "problem" (a permanent verdict on the
    package); a zombie gave none (fit).  Either way the build must fail."""
    child = _spawn("pass")
    child.wait()
    with pytest.raises(InspectionFailed) as reaped:
        unfit_to_fork(child.pid)
    assert reaped.value.exited
    zombie = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{zombie.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        with pytest.raises(InspectionFailed) as dead:
            unfit_to_fork(zombie.pid)
        assert dead.value.exited and isinstance(dead.value, SandboxError)
        assert not isinstance(dead.value, ZygoteUnsuitable)
    finally:
        zombie.wait()


def fake_proc(tmp_path: Path, fds: dict[int, str]) -> Path:
    """A /proc-like tree for pid 7: one thread, root "/", fd entries linking
    to ``fds`` targets (created by the caller), read-only fdinfo."""
    proc = tmp_path / "proc"
    (proc / "7" / "task" / "7").mkdir(parents=True)
    (proc / "7" / "fd").mkdir()
    (proc / "7" / "fdinfo").mkdir()
    (proc / "7" / "net").mkdir()
    (proc / "7" / "root").symlink_to("/")
    for fd, target in fds.items():
        (proc / "7" / "fd" / str(fd)).symlink_to(target)
        (proc / "7" / "fdinfo" / str(fd)).write_text("pos:\t0\nflags:\t0100000\n")
    for table in ("tcp", "unix"):  # no tcp6: as on a host without IPv6
        (proc / "7" / "net" / table).write_text("header\n")
    return proc


def test_an_fd_closed_meanwhile_is_skipped(tmp_path):
    data = tmp_path / "data"
    data.write_text("x")
    proc = fake_proc(tmp_path, {3: str(data), 4: str(tmp_path / "closed")})
    assert unfit_to_fork(7, proc_root=str(proc)) == []


@pytest.mark.parametrize("broken", ["fd entry", "fdinfo", "net table"])
def test_an_unreadable_proc_entry_is_never_fit(tmp_path, broken):
    """Before: each of these OSErrors read as "nothing wrong" (fit)."""
    data = tmp_path / "data"
    data.write_text("x")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    proc = fake_proc(tmp_path, {3: str(data), 4: str(tmp_path / "sock")})
    entries = proc / "7"
    if broken == "fd entry":
        (entries / "fd" / "5").symlink_to(entries / "fd" / "5")  # ELOOP, not ENOENT
    elif broken == "fdinfo":
        (entries / "fdinfo" / "3").unlink()
        (entries / "fdinfo" / "3").mkdir()  # EISDIR
    else:
        (entries / "net" / "unix").unlink()
        (entries / "net" / "unix").mkdir()
    try:
        with pytest.raises(InspectionFailed) as failed:
            unfit_to_fork(7, proc_root=str(proc))
    finally:
        listener.close()
    assert not failed.value.exited
    assert isinstance(failed.value.error, OSError) and failed.value.error.errno != errno.ENOENT


# --------------------------------------------------- 4. seccomp programs
@pytest.mark.parametrize("program", [b"", None, b"\0" * 12])
def test_a_missing_empty_or_malformed_program_is_refused(program):
    with pytest.raises(ConfigError, match="leaf program"):
        seccomp.check_program("leaf", program)


def empty_leaf_program(monkeypatch) -> None:
    real = seccomp.compile_profile

    def compile_profile(kind, path=None):
        return b"" if kind == "leaf" else real(kind, path)

    monkeypatch.setattr(seccomp, "compile_profile", compile_profile)


def test_compile_profiles_refuses_an_empty_program(monkeypatch):
    assert set(seccomp.compile_profiles()) == {"leaf", "zygote"}
    empty_leaf_program(monkeypatch)
    with pytest.raises(ConfigError, match="leaf program is empty"):
        seccomp.compile_profiles()


@pytest.mark.root
async def test_the_pool_refuses_to_start_with_an_empty_leaf_program(worker_dir, monkeypatch):
    """Before: the pool started, and a fresh leaf was spawned with no filter."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    empty_leaf_program(monkeypatch)
    config = build_config(None, ["sandbox.cgroup_pool_size=0"])
    with trio.fail_after(60), pytest.raises(ConfigError, match="leaf program is empty"):
        async with open_sock_pool(config, worker_dir):
            pass


@pytest.mark.root
async def test_a_zygote_refuses_to_start_without_its_leaves_filter(pool):
    """Before: the zygote started and forked every leaf without a filter."""
    pool.bpf = {**pool.bpf, "leaf": b""}
    with trio.fail_after(60), pytest.raises(SandboxError, match="no leaf seccomp program"):
        await pool.create(None, False, None, None, SandboxMeta(label="zygote"))
    assert pool.sandboxes() == []


# ------------------------------------------------- 5. failed sandbox releases
class RawWithFailingRelease:
    """A raw sandbox whose ``release`` raises ``failures`` in turn, then succeeds."""

    def __init__(self, sid: str, failures: list[Exception], is_leaf: bool = True) -> None:
        self.id = sid
        self.is_leaf = is_leaf
        self.meta = LEAF
        self.failures = failures
        self.releases = 0

    async def invoke(self, request):
        raise AssertionError("not called")

    async def freeze(self) -> None:
        pass

    async def thaw(self) -> None:
        pass

    async def release(self, cause: Cause) -> None:
        self.releases += 1
        if self.failures:
            raise self.failures.pop(0)

    def usage(self) -> SandboxUsage:
        return SandboxUsage()

    def call_usage(self) -> SandboxCallUsage:
        return SandboxCallUsage()

    async def diagnose(self, error):
        return Cause.of(CauseCode.UNKNOWN, error="diagnosed")


def still_running(sid: str) -> ReleaseFailed:
    return ReleaseFailed(sid, ("process 1 still running after kill",), processes_gone=False)


def destroyed_events(events) -> list[SandboxDestroyed]:
    out = []
    while True:
        try:
            event = events.receive_nowait()
        except trio.WouldBlock:
            return out
        if isinstance(event, SandboxDestroyed):
            out.append(event)


async def test_a_release_that_leaves_processes_is_not_reported_destroyed(caplog):
    """Before: SandboxDestroyed came all the same (the memory pool then freed
    memory that processes still used), and only a log line told otherwise."""
    hub = EventHub()
    events = hub.subscribe()
    sb = SafeSandbox(RawWithFailingRelease("a", [still_running("a")]), hub, None)
    with caplog.at_level(logging.ERROR, logger="olactors.sandbox"):
        await sb.destroy(released("evicted"))
    assert sb.state is SandboxState.DEAD and not sb.released
    assert sb.release_pending and "still running" in str(sb.release_failure)
    assert destroyed_events(events) == []
    assert hub.release_failures == 1 and set(hub.unreleased) == {"a"}
    assert any("stays reserved" in r.getMessage() for r in caplog.records)
    await sb.destroy(released("again"))  # idempotent: no release attempt while it is pending
    assert sb.raw.releases == 1
    await sb.died()  # the pool saw its process exit at last: retried
    assert sb.released and not sb.release_pending
    assert destroyed_events(events) == [SandboxDestroyed(sb, released("evicted"))]
    assert hub.unreleased == {} and hub.release_failures == 1


async def test_leftovers_with_the_processes_gone_are_released_and_named():
    hub = EventHub()
    events = hub.subscribe()
    leftover = ReleaseFailed("a", ("root or dir: busy",), processes_gone=True)
    sb = SafeSandbox(RawWithFailingRelease("a", [leftover]), hub, None)
    await sb.destroy(released("done"))
    assert sb.released and not sb.release_pending
    assert destroyed_events(events) == [
        SandboxDestroyed(sb, released("done"), ("root or dir: busy",))
    ]
    assert hub.release_failures == 1 and hub.unreleased == {}


async def test_an_unexpected_release_error_keeps_the_sandbox_unreleased():
    hub = EventHub()
    sb = SafeSandbox(RawWithFailingRelease("a", [OSError("EIO")]), hub, None)
    await sb.destroy(released("done"))
    assert sb.release_pending and not sb.released
    assert await sb.retry_release()


async def test_a_zygote_waits_for_its_unreleased_child():
    hub = EventHub()
    zygote = SafeSandbox(RawWithFailingRelease("z", [], is_leaf=False), hub, None)
    zygote.child_added()
    child = SafeSandbox(RawWithFailingRelease("c", [still_running("c")]), hub, zygote)
    await zygote.destroy(released("bye"))
    await child.destroy(released("bye"))
    assert not zygote.released and zygote.settled and child.settled
    assert await child.retry_release()
    assert zygote.released


class Interrupted(BaseException):
    """Not an Exception: goes through every handler, like KeyboardInterrupt."""


async def test_a_release_cut_short_is_completed_by_the_next_destroy():
    """Before: a closing pool looped forever on such a sandbox (dead, not
    released, and every later destroy a no-op)."""
    sb = SafeSandbox(RawWithFailingRelease("a", [Interrupted()]), EventHub(), None)
    with pytest.raises(Interrupted):
        await sb.destroy(released("x"))
    assert not sb.released and not sb.release_pending
    with trio.fail_after(5):
        assert await destroy_all({"a": sb}, "closing") == []
    assert sb.released and sb.raw.releases == 2


async def test_the_simulated_pool_keeps_memory_of_an_unreleased_sandbox(autojump_clock, caplog):
    fault = ReleaseFails(times=1)
    with trio.fail_after(60):
        async with open_simulated_pool(behaviour(faults=[fault])) as pool:
            async with trio.open_nursery() as nursery:
                mem = await nursery.start(run_mempool, 1000, 5.0, pool)
                events = pool.subscribe()
                res = await mem.reserve(300, "test")
                sb = await fresh(pool)
                await mem.bind(res, sb)
                await sb.destroy(released("done"))
                assert pool.fired(fault) == 1
                assert pool.sandboxes() == [sb] and sb.state is SandboxState.DEAD
                assert (await mem.snapshot()).used_mb == 300  # its process may still use it
                assert pool.sandbox_anomalies()["unreleased"] == 1
                assert destroyed_events(events) == []
                pool.kill(sb)
                await trio.sleep(1)
                assert pool.sandboxes() == [] and sb.released
                assert (await mem.snapshot()).used_mb == 0
                assert destroyed_events(events) == [SandboxDestroyed(sb, released("done"))]
                nursery.cancel_scope.cancel()


async def test_a_closing_simulated_pool_gives_up_on_a_release_that_keeps_failing(
    autojump_clock, caplog
):
    """Before: the closing pool looped forever on a sandbox it could not release."""
    with trio.fail_after(60), caplog.at_level(logging.ERROR):
        async with open_simulated_pool(behaviour(faults=[ReleaseFails()])) as pool:
            zygote = await pool.create(None, False, None, None, SandboxMeta(label="z"))
            leaf = await pool.create(zygote, True, None, None, LEAF)
    assert leaf.release_pending and not zygote.released
    assert pool.sandbox_anomalies()["release_failures"] == 2  # the destroy, then one retry
    assert any("could not be released" in r.getMessage() for r in caplog.records)


def sock_config():
    return build_config(None, ["sandbox.cgroup_pool_size=0", "sandbox.kill_timeout_s=0.5"])


async def next_destroyed(events) -> SandboxDestroyed:
    async for event in events:
        if isinstance(event, SandboxDestroyed):
            return event
    raise AssertionError("event channel closed")


@pytest.mark.root
async def test_a_sandbox_whose_processes_survive_release_keeps_its_memory(worker_dir, caplog):
    """The kill step fails (the cgroup is not emptied): the sandbox is not
    reported destroyed and its memory stays reserved until its process exits;
    then the pool's watcher retries the release and all is given back."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with trio.fail_after(60):
        async with open_sock_pool(sock_config(), worker_dir) as pool, trio.open_nursery() as n:
            mem = await n.start(run_mempool, 1000, 5.0, pool)
            events = pool.subscribe(100)
            res = await mem.reserve(128, "test")
            sb = await pool.create(None, False, None, None, SandboxMeta(label="zygote"))
            await mem.bind(res, sb)
            cgroups = pool._cgroups
            kept = []

            async def does_not_empty(cgroup, *, reuse: bool = True) -> None:
                kept.append(cgroup)

            cgroups.release = does_not_empty
            try:
                with caplog.at_level(logging.ERROR):
                    await sb.destroy(released("test"))
                assert sb.state is SandboxState.DEAD and sb.release_pending
                assert os.path.exists(f"/proc/{sb.raw.pid}")  # really still running
                assert pool.sandboxes() == [sb]
                assert (await mem.snapshot()).used_mb == 128
                assert pool.sandbox_anomalies() == {
                    "dropped_subscribers": 0,
                    "listener_errors": 0,
                    "release_failures": 1,
                    "unreleased": 1,
                    "watchdog_restarts": 0,
                    "egress_rules_restored": 0,
                }
                assert destroyed_events(events) == []
            finally:
                del cgroups.release
                for cgroup in kept:  # the kill works at last
                    await cgroups.release(cgroup, reuse=False)
            event = await next_destroyed(events)
            assert event.sandbox is sb and event.leftovers == ()
            assert pool.sandboxes() == [] and sb.released
            assert (await mem.snapshot()).used_mb == 0
            assert pool.sandbox_anomalies()["unreleased"] == 0
            n.cancel_scope.cancel()


@pytest.mark.root
async def test_a_failed_unmount_is_named_in_the_event(pool):
    root = None
    try:
        events = pool.subscribe(100)
        sb = await pool.create(None, False, None, None, SandboxMeta(label="zygote"))
        root = sb.raw.root

        def busy() -> None:
            raise OSError(errno.EBUSY, "simulated busy mount")

        root.unmount = busy
        with trio.fail_after(60):
            await sb.destroy(released("test"))
        [event] = destroyed_events(events)
        assert sb.released and event.sandbox is sb
        assert len(event.leftovers) == 1 and "busy mount" in event.leftovers[0]
        assert pool.sandbox_anomalies()["release_failures"] == 1
        assert pool.sandbox_anomalies()["unreleased"] == 0
    finally:
        if root is not None:
            del root.unmount
            root.unmount()


async def test_the_worker_stats_show_every_anomaly(worker_dir):
    """/stats shows what would otherwise go unseen: failed and pending
    releases, listener errors, dropped subscribers, evictor resyncs.  Real time:
    the worker waits on threads (its state dir, records), and an autojump clock
    would jump to the deadline whenever one of them is slow on a busy machine."""
    config = build_config(None, ["memory.pool_mb=1024", "memory.free_goal_mb=0"])
    with trio.fail_after(60):
        async with open_simulated_pool(behaviour(faults=[ReleaseFails(times=1)])) as pool:
            async with open_worker(config, worker_dir, pool=pool) as worker:
                sb = await fresh(pool)
                await sb.destroy(released("test"))
                stats = await worker.stats()
                assert stats["sandbox_anomalies"] == {
                    "dropped_subscribers": 0,
                    "listener_errors": 0,
                    "release_failures": 1,
                    "unreleased": 1,
                }
                assert stats["sandboxes"] == {"leaf_dead": 1}
                assert stats["evictions"]["resyncs"] == 0
                pool.kill(sb)
                await trio.sleep(1)
                stats = await worker.stats()
                assert stats["sandbox_anomalies"]["unreleased"] == 0
                assert stats["sandboxes"] == {}


@pytest.mark.root
def test_serve_refuses_to_start_with_an_empty_leaf_program(tmp_path):
    """The worker refuses to start, with a clear message and no traceback."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    script = (
        "import sys\n"
        "from olactors.sock import seccomp\n"
        "real = seccomp.compile_profile\n"
        "seccomp.compile_profile = lambda kind, path=None: "
        "b'' if kind == 'leaf' else real(kind, path)\n"
        "from olactors.cli import main\n"
        f"sys.exit(main(['serve', '--path', {str(tmp_path / 'worker')!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "olactors serve: seccomp: the leaf program is empty" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.root
async def test_a_failed_start_that_leaves_a_process_is_counted_and_listed(worker_dir, tmp_path):
    """A create cancelled during the function's import, and the kill fails:
    no SafeSandbox exists to report it, so the pool does."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    code = tmp_path / "slow"
    code.mkdir()
    (code / "f.py").write_text("import time\ntime.sleep(60)\n\ndef f(event):\n    return event\n")
    kept = []
    async with open_sock_pool(sock_config(), worker_dir) as pool:
        cgroups = pool._cgroups

        async def does_not_empty(cgroup, *, reuse: bool = True) -> None:
            kept.append(cgroup)

        cgroups.release = does_not_empty
        pids: list[int] = []
        try:
            with trio.fail_after(60):
                with trio.move_on_after(3):  # the import takes a minute
                    await pool.create(None, True, str(code), None, SandboxMeta(label="slow"))
                assert len(kept) == 1
                pids = first_hierarchy_pids(kept[0])
                assert pids  # still running
                assert pool.sandbox_anomalies()["release_failures"] == 1
                assert pool.sandbox_anomalies()["unreleased"] == 1
                assert pool.sandboxes() == []
        finally:
            del cgroups.release
            for cgroup in kept:
                await cgroups.release(cgroup, reuse=False)
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
