"""Real SOCK sandboxes: create, invoke, pause, fork, destroy, events, death."""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio

from olactors._causes import Cause, CauseCode, released
from olactors._errors import SandboxDead, SandboxError, SandboxStateError, UnknownNetworkMode
from olactors.sock import (
    Invocation,
    SandboxChildExited,
    SandboxCreated,
    SandboxDestroyed,
    SandboxForked,
    SandboxMeta,
    SandboxPaused,
    SandboxState,
    SandboxUnpaused,
)

from .conftest import write_function

pytestmark = pytest.mark.root

ECHO = """
import os, socket
def f(event):
    if event == "boom":
        raise ValueError("asked to fail")
    return {"event": event, "host": socket.gethostname(), "pid": os.getpid()}
"""


def body(result) -> dict:
    return json.loads(result.body)


async def call(sb, event) -> dict:
    result = await sb.invoke(Invocation(body=json.dumps(event).encode()))
    assert result.status == 200, result
    return body(result)


@pytest.fixture
def echo(tmp_path):
    return str(write_function(tmp_path, "echo", ECHO))


async def test_fresh_create_invoke_and_handler_error(pool, echo):
    sb = await pool.create(None, True, echo, None, SandboxMeta())
    assert sb.state is SandboxState.RUNNING
    assert (await call(sb, {"x": 1}))["event"] == {"x": 1}
    failed = await sb.invoke(Invocation(body=b'"boom"'))
    assert failed.status == 500
    error = body(failed)
    assert error["error"] == "handler_exception"
    assert "asked to fail" in error["traceback"]
    # the sandbox survives a handler exception
    assert (await call(sb, 2))["event"] == 2
    bad = await sb.invoke(Invocation(body=b"{not json"))
    assert bad.status == 400 and body(bad)["error"] == "bad_json"
    await sb.destroy(released("test done"))
    assert sb.state is SandboxState.DEAD


async def test_handler_import_error_is_reported(pool, tmp_path):
    code = write_function(tmp_path, "broken", "import does_not_exist\n")
    sb = await pool.create(None, True, str(code), None, SandboxMeta())
    result = await sb.invoke(Invocation(body=b"1"))
    assert result.status == 500
    assert body(result)["error"] == "handler_import_failed"
    assert "does_not_exist" in body(result)["message"]
    await sb.destroy(released("done"))


async def test_pause_refuses_and_blocks_then_unpause(pool, echo):
    sb = await pool.create(None, True, echo, None, SandboxMeta())
    await call(sb, 0)
    await sb.pause()
    assert sb.state is SandboxState.PAUSED
    with pytest.raises(SandboxStateError):
        await sb.invoke(Invocation(body=b"1"))
    # A raw request to the frozen process gets no answer while frozen...
    stream = await sb.raw.connect()
    await stream.send_all(b"POST / HTTP/1.1\r\ncontent-length: 1\r\n\r\n7")
    with trio.move_on_after(0.3) as scope:
        await stream.receive_some(1000)
    assert scope.cancelled_caught, "a frozen sandbox answered"
    # ...and the answer arrives once thawed.
    await sb.unpause()
    with trio.fail_after(5):
        answer = await stream.receive_some(1000)
    assert answer.startswith(b"HTTP/1.1 200")
    await stream.aclose()
    assert sb.state is SandboxState.RUNNING
    assert (await call(sb, 3))["event"] == 3
    await sb.destroy(released("done"))


async def test_fork_twenty_children_from_one_zygote(pool, echo):
    zygote = await pool.create(None, False, None, None, SandboxMeta())
    children = []
    for _ in range(20):
        children.append(await pool.create(zygote, True, echo, None, SandboxMeta()))
    assert zygote.live_children == 20
    answers = [await call(c, i) for i, c in enumerate(children)]
    assert [a["event"] for a in answers] == list(range(20))
    assert all(a["pid"] == 1 for a in answers)  # each is init of its own PID namespace
    assert len({a["host"] for a in answers}) == 20
    host_pids = {c.raw.pid for c in children}
    assert len(host_pids) == 20 and zygote.raw.pid not in host_pids
    for c in children:
        await c.destroy(released("done"))
    assert zygote.live_children == 0
    await zygote.destroy(released("done"))


async def test_destroy_parent_before_children(pool, echo):
    events = pool.subscribe(1000)
    zygote = await pool.create(None, False, None, None, SandboxMeta())
    kids = [await pool.create(zygote, True, echo, None, SandboxMeta()) for _ in range(2)]
    await zygote.destroy(released("parent first"))
    assert zygote.state is SandboxState.DEAD
    assert not zygote.released, "zygote released while children live"
    with pytest.raises(SandboxDead):
        await pool.create(zygote, True, echo, None, SandboxMeta())
    assert (await call(kids[0], "still here"))["event"] == "still here"
    await kids[0].destroy(released("done"))
    assert not zygote.released
    assert (await call(kids[1], 1))["event"] == 1
    await kids[1].destroy(released("done"))
    assert zygote.released
    seen = []
    while True:
        try:
            seen.append(events.receive_nowait())
        except trio.WouldBlock:
            break
    kinds = [(type(e).__name__, getattr(e, "sandbox", getattr(e, "child", None)).id) for e in seen]
    destroyed_zygote = kinds.index(("SandboxDestroyed", zygote.id))
    assert destroyed_zygote > kinds.index(("SandboxDestroyed", kids[1].id))
    assert sum(isinstance(e, SandboxChildExited) for e in seen) == 2
    assert sum(isinstance(e, SandboxForked) for e in seen) == 2


async def test_destroy_twice_and_calls_after_destroy(pool, echo):
    sb = await pool.create(None, True, echo, None, SandboxMeta())
    await sb.destroy(released("first"))
    await sb.destroy(released("second"))
    assert sb.death_cause == released("first")
    for op in (sb.pause, sb.unpause):
        with pytest.raises(SandboxDead):
            await op()
    with pytest.raises(SandboxDead):
        await sb.invoke(Invocation(body=b"1"))
    assert await sb.destroy_if_paused(released("x")) is False


async def test_destroy_if_paused(pool, echo):
    sb = await pool.create(None, True, echo, None, SandboxMeta())
    assert await sb.destroy_if_paused(released("not paused")) is False
    assert sb.state is SandboxState.RUNNING
    await sb.pause()
    assert await sb.destroy_if_paused(released("evicted")) is True
    assert sb.state is SandboxState.DEAD and sb.death_cause == released("evicted")


async def test_events_in_order(pool, echo):
    events = pool.subscribe(100)
    sb = await pool.create(None, True, echo, None, SandboxMeta())
    await sb.pause()
    await sb.unpause()
    await sb.destroy(released("bye"))
    got = [events.receive_nowait() for _ in range(4)]
    assert [type(e) for e in got] == [
        SandboxCreated,
        SandboxPaused,
        SandboxUnpaused,
        SandboxDestroyed,
    ]
    assert got[-1].cause == released("bye")


@pytest.mark.parametrize("forked", [False, True], ids=["fresh", "forked"])
async def test_killed_process_is_detected(pool, echo, forked):
    parent = await pool.create(None, False, None, None, SandboxMeta()) if forked else None
    events = pool.subscribe(100)
    sb = await pool.create(parent, True, echo, None, SandboxMeta())
    await call(sb, 1)
    os.kill(sb.raw.pid, signal.SIGKILL)
    with trio.fail_after(5):
        while True:
            event = await events.receive()
            if isinstance(event, SandboxDestroyed) and event.sandbox is sb:
                break
    assert sb.state is SandboxState.DEAD
    # A forked leaf's status comes from its zygote, which reaps it.
    assert sb.death_cause == Cause.of(CauseCode.SIGNAL, signal="SIGKILL", sender="other")
    with pytest.raises(SandboxDead):
        await sb.invoke(Invocation(body=b"1"))
    if parent is not None:
        assert parent.live_children == 0
        await parent.destroy(released("done"))


async def test_kill_mid_request_fails_that_call_only(pool, tmp_path):
    code = write_function(
        tmp_path, "slow", "import time\ndef f(e):\n    time.sleep(e)\n    return e\n"
    )
    sb = await pool.create(None, True, str(code), None, SandboxMeta())

    async def kill_soon():
        await trio.sleep(0.2)
        os.kill(sb.raw.pid, signal.SIGKILL)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_soon)
        with pytest.raises(SandboxError) as info:
            await sb.invoke(Invocation(body=b"5"))
    assert info.value.cause == Cause.of(CauseCode.SIGNAL, signal="SIGKILL", sender="other")
    again = await pool.create(None, True, str(code), None, SandboxMeta())
    assert (await again.invoke(Invocation(body=b"0"))).status == 200
    await again.destroy(released("done"))


async def test_cancelled_invoke_destroys_sandbox(pool, tmp_path):
    code = write_function(
        tmp_path, "slow", "import time\ndef f(e):\n    time.sleep(e)\n    return e\n"
    )
    sb = await pool.create(None, True, str(code), None, SandboxMeta())
    with trio.move_on_after(0.2):
        await sb.invoke(Invocation(body=b"10"))
    assert sb.state is SandboxState.DEAD
    assert sb.death_cause == Cause.of(CauseCode.SIGNAL, signal="SIGKILL", sender="worker")


async def test_create_failures_are_clear_and_leave_nothing(pool, tmp_path, echo):
    with pytest.raises(SandboxError, match="does not exist"):
        await pool.create(None, True, str(tmp_path / "missing"), None, SandboxMeta())
    with pytest.raises(SandboxError, match="cannot fork from leaf"):
        leaf = await pool.create(None, True, echo, None, SandboxMeta())
        await pool.create(leaf, True, echo, None, SandboxMeta())
    await leaf.destroy(released("done"))
    zygote = await pool.create(None, False, None, None, SandboxMeta())
    with pytest.raises(UnknownNetworkMode, match="use egress") as refused:
        await pool.create(zygote, True, echo, None, SandboxMeta(network="host"))
    assert refused.value.network == "host"
    await zygote.pause()
    with pytest.raises(SandboxStateError, match="paused"):
        await pool.create(zygote, True, echo, None, SandboxMeta())
    await zygote.destroy(released("done"))
    # A zygote asked to pre-import a missing module dies before ready: clear error with its log.
    with pytest.raises(SandboxError, match="no_such_module"):
        await pool.create(None, False, None, None, SandboxMeta(imports=("no_such_module",)))
    assert pool.sandboxes() == []
    assert list((pool.run_dir).iterdir()) == []


async def test_usage_reports_memory_and_cpu(pool, tmp_path):
    code = write_function(
        tmp_path,
        "busy",
        "import time\nkeep=[]\ndef f(e):\n    keep.append(bytearray(e << 20))\n"
        "    t=time.process_time()\n    while time.process_time()-t < 0.2: pass\n    return 1\n",
    )
    sb = await pool.create(None, True, str(code), None, SandboxMeta())
    await sb.invoke(Invocation(body=b"40"))
    usage = sb.usage()
    assert usage.memory_bytes >= 40 << 20
    assert usage.cpu_ns >= 100_000_000
    assert usage.oom_kills == 0
    await sb.destroy(released("done"))


async def test_zygote_keeps_a_spare_and_survives_its_death(pool, echo):
    from olactors.sock._sock import first_hierarchy_pids

    zygote = await pool.create(None, False, None, None, SandboxMeta())
    first = await pool.create(zygote, True, echo, None, SandboxMeta())
    # The zygote's cgroup holds the zygote and exactly one pre-forked spare.
    with trio.fail_after(5):
        while len(members := first_hierarchy_pids(zygote.raw.cgroup)) < 2:
            await trio.sleep(0.01)
    assert len(members) == 2 and zygote.raw.pid in members
    spare = next(p for p in members if p != zygote.raw.pid)
    assert spare != first.raw.pid
    os.kill(spare, signal.SIGKILL)
    # With its spare gone the zygote clones directly: forks keep working.
    second = await pool.create(zygote, True, echo, None, SandboxMeta())
    assert (await call(second, "after spare death"))["event"] == "after spare death"
    assert zygote.state is SandboxState.RUNNING
    for sb in (first, second, zygote):
        await sb.destroy(released("done"))


async def test_worker_never_follows_a_swapped_socket(pool, echo, tmp_path):
    """A sandbox can replace /host/ol.sock; the worker must not connect elsewhere."""
    import socket

    decoy_path = tmp_path / "decoy.sock"
    decoy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    decoy.bind(str(decoy_path))
    decoy.listen(1)
    decoy.setblocking(False)
    try:
        sb = await pool.create(None, True, echo, None, SandboxMeta())
        ol_sock = sb.raw.scratch / "ol.sock"
        os.unlink(ol_sock)
        os.symlink(decoy_path, ol_sock)
        with pytest.raises(SandboxError, match="not a socket"):
            await sb.invoke(Invocation(body=b"1"))
        with pytest.raises(BlockingIOError):
            decoy.accept()  # nothing ever connected to the decoy
        assert sb.state is SandboxState.DEAD
    finally:
        decoy.close()


async def test_zygote_at_its_pids_limit_refuses_forks_and_lives(pool, echo):
    from olactors.sock import SandboxLimits

    zygote = await pool.create(None, False, None, None, SandboxMeta(limits=SandboxLimits(procs=1)))
    with pytest.raises(SandboxError, match="refused the fork"):
        await pool.create(zygote, True, echo, None, SandboxMeta())
    await trio.sleep(0.1)
    assert zygote.state is SandboxState.RUNNING
    assert "no spare child" in zygote.raw.log_tail()
    await zygote.destroy(released("done"))
