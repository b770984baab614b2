"""Per-call output capture with real sandboxes (issue 12, section 3).

Every writer reaches the call's capture (print, logging, a C-level write to
fd 1, buffered C stdio, a child process), stdout and stderr apart, in fresh
and forked leaves; concurrent calls on two sandboxes never mix; a call that
prints 1 GiB is cut at ``debug.max_output_bytes`` with the dropped bytes
counted while the worker's memory stays flat; a sandbox that dies mid-call
keeps what it printed; output outside calls lands in the sandbox's log.
"""

from __future__ import annotations

import json

import pytest
import trio

from olactors._causes import CauseCode
from olactors._errors import SandboxDead
from olactors.sock import Invocation, SandboxMeta

from .conftest import write_function

pytestmark = pytest.mark.root

WRITERS = """
import ctypes, logging, os, subprocess, sys

libc = ctypes.CDLL(None)

def f(event):
    print("from print")
    print("print to stderr", file=sys.stderr)
    logging.warning("from logging")
    os.write(1, b"from os.write\\n")
    os.write(2, b"os.write to fd 2\\n")
    libc.write(1, b"from libc write\\n", 16)
    libc.printf(b"from C stdio\\n")
    subprocess.run([sys.executable, "-I", "-S", "-c", "print('from a child')"], check=True)
    subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; sys.stderr.write('child stderr\\\\n')"],
        check=True,
    )
    return "done"
"""


async def leaf(pool, code, kind: str):
    """A leaf of ``kind``: ``fresh``, or ``forked`` from a new zygote."""
    if kind == "fresh":
        return await pool.create(None, True, str(code), None, SandboxMeta())
    zygote = await pool.create(None, False, None, None, SandboxMeta())
    return await pool.create(zygote, True, str(code), None, SandboxMeta())


async def call(sb, event=None):
    body = b"" if event is None else json.dumps(event).encode()
    result = await sb.invoke(Invocation(body=body))
    assert result.status == 200, result
    return result


@pytest.mark.parametrize("kind", ["fresh", "forked"])
async def test_every_writer_is_captured_and_streams_kept_apart(pool, tmp_path, kind):
    sb = await leaf(pool, write_function(tmp_path, "writers", WRITERS), kind)
    output = (await call(sb)).output
    stdout = output.stdout.data.decode()
    stderr = output.stderr.data.decode()
    for line in (
        "from print",
        "from os.write",
        "from libc write",
        "from C stdio",
        "from a child",
    ):
        assert line in stdout.splitlines(), (line, stdout)
    for line in (
        "print to stderr",
        "WARNING:root:from logging",
        "os.write to fd 2",
        "child stderr",
    ):
        assert line in stderr.splitlines(), (line, stderr)
    assert "stderr" not in stdout and "from print" not in stderr
    assert output.stdout.dropped == output.stderr.dropped == 0
    # The next call starts empty.
    again = (await call(sb)).output
    assert again.stdout.data.decode().count("from print") == 1


CHATTY = """
import os, time

def f(event):
    for i in range(200):
        os.write(1, f"{event} {i}\\n".encode())
        if i % 20 == 0:
            time.sleep(0.005)
    return event
"""


async def test_concurrent_calls_on_two_sandboxes_never_mix(pool, tmp_path):
    code = write_function(tmp_path, "chatty", CHATTY)
    a = await pool.create(None, True, str(code), None, SandboxMeta())
    b = await pool.create(None, True, str(code), None, SandboxMeta())
    results = {}

    async def run(sb, name):
        results[name] = await call(sb, name)

    for _ in range(3):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, a, "alpha")
            nursery.start_soon(run, b, "beta")
        for name in ("alpha", "beta"):
            lines = results[name].output.stdout.data.decode().splitlines()
            assert lines == [f"{name} {i}" for i in range(200)]


GIGABYTE = """
import os

def f(event):
    chunk = b"x" * (1 << 20)
    left = 1 << 30
    while left:
        left -= os.write(1, chunk[: min(left, len(chunk))])
    os.write(2, b"done\\n")
    return "printed"
"""


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_gigabyte_is_cut_and_memory_stays_flat(pool, tmp_path):
    limit = pool.config.debug.max_output_bytes
    sb = await pool.create(
        None, True, str(write_function(tmp_path, "gb", GIGABYTE)), None, SandboxMeta()
    )
    before = rss_kib()
    peak = before
    done = trio.Event()

    async def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kib())
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        result = await call(sb)
        done.set()
    out = result.output.stdout
    assert out.data == b"x" * limit
    assert out.dropped == (1 << 30) - limit
    assert f"output cut here, {out.dropped} more bytes dropped" in out.text()
    assert result.output.stderr.data == b"done\n"
    assert peak - before < 50 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"


DIES = """
import os, sys

def f(event):
    print("last words")
    sys.stderr.write("on stderr too\\n")
    os._exit(3)
"""


@pytest.mark.parametrize("kind", ["fresh", "forked"])
async def test_output_of_a_sandbox_that_dies_mid_call_is_kept(pool, tmp_path, kind):
    sb = await leaf(pool, write_function(tmp_path, "dies", DIES), kind)
    with pytest.raises(SandboxDead) as caught:
        await sb.invoke(Invocation(body=b"1"))
    assert caught.value.output.stdout.data == b"last words\n"
    assert caught.value.output.stderr.data == b"on stderr too\n"


SLOW = """
import time

def f(event):
    print("before the limit")
    time.sleep(30)
"""


async def test_output_of_a_call_stopped_at_its_runtime_limit_is_kept(pool, tmp_path):
    sb = await leaf(pool, write_function(tmp_path, "slow", SLOW), "fresh")
    with pytest.raises(SandboxDead) as caught:
        await sb.invoke(Invocation(body=b"1"), limit_s=0.5)
    assert caught.value.cause.code is CauseCode.TIMEOUT
    assert caught.value.output.stdout.data == b"before the limit\n"


BACKGROUND = """
import sys, threading, time

print("printed at import")
sys.stderr.write("stderr at import\\n")

def later():
    time.sleep(0.2)
    print("printed by a thread between calls")

def f(event):
    if event == "start":
        threading.Thread(target=later).start()
    print(f"call {event}")
    return event
"""


@pytest.mark.parametrize("kind", ["fresh", "forked"])
async def test_output_outside_calls_goes_to_the_log(pool, tmp_path, kind):
    sb = await leaf(pool, write_function(tmp_path, "background", BACKGROUND), kind)
    first = (await call(sb, "start")).output
    assert first.stdout.data == b"call start\n"
    await trio.sleep(0.5)
    second = (await call(sb, "next")).output
    assert second.stdout.data == b"call next\n"
    assert first.stderr.data == second.stderr.data == b""
    log = sb.raw.log_tail()
    for line in ("printed at import", "stderr at import", "printed by a thread between calls"):
        assert line in log.splitlines(), (line, log)
    assert "call start" not in log and "call next" not in log


MOUNTS = """
import ctypes

def f(event):
    libc = ctypes.CDLL(None, use_errno=True)
    print("mount returned", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
    return event
"""


@pytest.mark.parametrize("kind", ["fresh", "forked"])
async def test_the_output_names_the_syscalls_the_call_had_blocked(pool, tmp_path, kind):
    sb = await leaf(pool, write_function(tmp_path, "mounts", MOUNTS), kind)
    output = (await call(sb, 1)).output
    assert output.stdout.data == b"mount returned -1\n"
    assert output.blocked_syscalls == ("mount",)
