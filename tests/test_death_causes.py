"""Why did my function die: each death of a real leaf has its typed cause
(root, real sandboxes), seen in the HTTP error body's ``cause`` beside the
unchanged ``error`` code, for fresh leaves and for leaves forked from a
zygote (whose exit status only the zygote can reap: it forwards it).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import trio

from olactors._causes import Cause, CauseCode
from olactors._errors import SandboxDead
from olactors.sock import Invocation, SandboxDestroyed, SandboxMeta

from .test_http_api import Served, assert_json_error, serving, write_fn

HANDLER = """\
import os, time

def f(event):
    what = event["do"]
    if what == "exit":
        os._exit(3)
    if what == "segv":
        # a real fault: a signal sent with kill() to a PID namespace's init
        # (every leaf is pid 1) without a handler is ignored
        import ctypes
        ctypes.string_at(0)
    if what == "hog":
        chunks = []
        while True:
            chunks.append(bytearray(16 << 20))
    if what in ("forkbomb", "forkbomb-dies"):
        while True:
            try:
                pid = os.fork()
            except OSError:
                if what == "forkbomb-dies":
                    os._exit(1)
                raise
            if pid == 0:
                time.sleep(30)
                os._exit(0)
    if what == "spin":
        while True:
            pass
    return "ok"
"""
LIMITS = "limits:\n  mem_mb: 64\n  procs: 16\n  runtime_s: 1\n"


def cache(start: str) -> str:
    return "import_cache.enabled=" + ("false" if start == "fresh" else "true")


async def died(served: Served, do: str, status: int = 502, code: str = "sandbox_died") -> Any:
    async with served.client() as client:
        response = await client.post("/run/dies", json={"do": do})
    body = assert_json_error(response, status, code)
    return body["cause"]


@pytest.mark.parametrize("start", ["fresh", "forked"])
async def test_exit_and_signal_are_told_apart(worker_dir, start):
    with trio.fail_after(90):
        async with serving(worker_dir, cache(start)) as served:
            write_fn(served, "dies", HANDLER, LIMITS)
            assert await died(served, "exit") == {"code": "exit", "detail": {"exit_code": 3}}
            assert await died(served, "segv") == {
                "code": "signal",
                "detail": {"signal": "SIGSEGV", "sender": "other"},
            }


@pytest.mark.parametrize("start", ["fresh", "forked"])
async def test_limits_name_themselves(worker_dir, start):
    with trio.fail_after(90):
        async with serving(worker_dir, cache(start)) as served:
            write_fn(served, "dies", HANDLER, LIMITS)
            assert await died(served, "hog") == {"code": "oom", "detail": {"limit_mb": 64}}
            cause = await died(served, "spin", 504, "timeout")
            assert cause == {"code": "timeout", "detail": {"limit_s": 1}}


@pytest.mark.parametrize("start", ["fresh", "forked"])
async def test_a_fork_bomb_is_the_pids_limit(worker_dir, start):
    with trio.fail_after(90):
        async with serving(worker_dir, cache(start)) as served:
            write_fn(served, "dies", HANDLER, LIMITS)
            # os.fork fails at the limit (BlockingIOError): a handler that lets
            # it out raised; one that exits on it died of the pids limit
            async with served.client() as client:
                response = await client.post("/run/dies", json={"do": "forkbomb"})
            body = assert_json_error(response, 500, "handler_exception")
            assert body["cause"]["code"] == "handler_exception"
            assert body["cause"]["detail"]["type"] == "BlockingIOError"
            assert "os.fork()" in body["cause"]["detail"]["traceback"]
            assert await died(served, "forkbomb-dies") == {
                "code": "pids_limit",
                "detail": {"limit": 16},
            }


GARBAGE = """\
import os, socket, threading

def f(event):
    return "ok"

# At import (the runtime already listens): replace its socket with one that
# answers garbage, so the worker's first connection reaches that one.
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind("/host/garbage.sock")
listener.listen(1)
os.rename("/host/garbage.sock", "/host/ol.sock")

def _garbage():
    while True:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"NOT HTTP AT ALL\\r\\n\\r\\n")

threading.Thread(target=_garbage, daemon=True).start()
"""


async def test_a_garbage_answer_is_a_bad_response(pool, tmp_path):
    from .conftest import write_function

    code = write_function(tmp_path, "garbage", GARBAGE)
    sb = await pool.create(None, True, str(code), None, SandboxMeta())
    with pytest.raises(SandboxDead) as info:
        await sb.invoke(Invocation(body=b"1"))
    cause = info.value.cause
    assert cause.code is CauseCode.BAD_RESPONSE and "bad status line" in cause.detail["reason"]
    assert sb.death_cause == cause
    assert not Cause.of(CauseCode.EVICTED).counts_against_function
    assert cause.counts_against_function


async def test_a_forked_leaf_dies_with_its_zygote(pool, tmp_path):
    from .conftest import write_function

    code = write_function(tmp_path, "echo", "def f(event):\n    return event\n")
    zygote = await pool.create(None, False, None, None, SandboxMeta())
    leaf = await pool.create(zygote, True, str(code), None, SandboxMeta())
    assert (await leaf.invoke(Invocation(body=b"1"))).status == 200
    events = pool.subscribe(100)
    os.kill(zygote.raw.pid, signal.SIGKILL)
    with trio.fail_after(10):
        async for event in events:
            if isinstance(event, SandboxDestroyed) and event.sandbox is zygote:
                break
    assert leaf.death_cause == Cause.of(CauseCode.ZYGOTE_DIED, zygote=zygote.id)
    assert not leaf.death_cause.counts_against_function
    assert zygote.death_cause == Cause.of(CauseCode.SIGNAL, signal="SIGKILL", sender="other")


async def test_a_zygote_killed_while_its_child_is_paused_is_seen_dead(pool, tmp_path):
    """On cgroup v1 a killed zygote with a frozen child cannot finish exiting
    (as its PID namespace's init it waits for the frozen one), so its pidfd
    never fires.  The next fork finds its socket refusing: the pool then
    destroys the zygote's descendants (thawing and killing the frozen one),
    the zygote's exit completes, and everything is released."""
    from .conftest import write_function

    code = write_function(tmp_path, "echo", "def f(event):\n    return event\n")
    zygote = await pool.create(None, False, None, None, SandboxMeta())
    leaf = await pool.create(zygote, True, str(code), None, SandboxMeta())
    assert (await leaf.invoke(Invocation(body=b"1"))).status == 200
    await leaf.pause()
    events = pool.subscribe(100)
    os.kill(zygote.raw.pid, signal.SIGKILL)
    await trio.sleep(0.3)
    assert zygote.death_cause is None  # the kernel cannot finish it: nothing told the pool
    with pytest.raises(Exception) as info:
        await pool.create(zygote, True, str(code), None, SandboxMeta())
    assert getattr(info.value, "cause", None) == Cause.of(CauseCode.ZYGOTE_DIED, zygote=zygote.id)
    with trio.fail_after(10):
        async for event in events:
            if isinstance(event, SandboxDestroyed) and event.sandbox is zygote:
                break
    assert leaf.death_cause == Cause.of(CauseCode.ZYGOTE_DIED, zygote=zygote.id)
    assert zygote.death_cause is not None and zygote.death_cause.code is CauseCode.SIGNAL
    assert pool.sandboxes() == []
