"""Overload at 20x capacity against a real worker (``olactors serve`` in a
subprocess, so its RSS is its own): beyond capacity the only answers are 429
and 503, the worker's memory stays bounded, and it serves normally at once
when the load drops.

Capacity is defined by the function and the worker's limits: a handler that
sleeps :data:`HANDLER_S`, at most :data:`MAX_INSTANCES` instances, so at most
``MAX_INSTANCES / HANDLER_S`` calls a second (20), with :data:`QUEUE_DEPTH`
calls allowed to wait.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from .load_tools import (
    OK,
    LoadRecord,
    RawClient,
    cpu_s,
    open_loop,
    raw_timed_call,
    rss_mb,
    serve_process,
    timed_call,
)
from .test_http_api import serving, write_fn

pytestmark = pytest.mark.root

HANDLER_S = 0.1
MAX_INSTANCES = 2
QUEUE_DEPTH = 4
CAPACITY = MAX_INSTANCES / HANDLER_S  # calls a second
OVERLOAD = 20
LOAD_S = 10.0
RUNTIME_S = 2.0
# The longest a call may take: its runtime limit, a full queue ahead of it, and slack.
DEADLINE_S = RUNTIME_S + QUEUE_DEPTH * HANDLER_S + 5.0
RSS_GROWTH_MB = 200
# Beyond capacity a call is refused as the queue or the function's state says.
# The client's connections, and so the calls in flight at once (none waits in the client).
CONNECTIONS = MAX_IN_FLIGHT = 128
REFUSALS = {"429 queue_full", "503 function_failing", "503 memory_exhausted"}

SLOW = f"""
import time

def f(event):
    time.sleep({HANDLER_S})
    return {{"id": event["id"]}}
"""


async def test_overload_twenty_times_capacity(tmp_path: Path, processes: list) -> None:
    worker_dir = tmp_path / "w"
    settings = (
        f"functions.max_instances={MAX_INSTANCES}",
        f"queue.max_depth={QUEUE_DEPTH}",
        "sandbox.cgroup_pool_size=4",
    )
    with serve_process(worker_dir, tmp_path / "serve.log", processes, *settings) as served:
        write_fn(worker_dir / "registry", "slow", SLOW, f"limits:\n  runtime_s: {RUNTIME_S}\n")
        record = LoadRecord()
        rss = {"start": 0.0, "max": 0.0}
        async with served.client() as client:
            for i in range(3):  # warm: the function actor, its code, a sandbox
                assert (await timed_call(client, "slow", {"id": -i}, 60)).label == OK
        rss["start"] = rss["max"] = rss_mb(served.proc.pid)

        async def sample_rss(done: trio.Event) -> None:
            while not done.is_set():
                rss["max"] = max(rss["max"], rss_mb(served.proc.pid))
                await trio.sleep(0.1)

        # httpx cannot drive 400 calls/s from one process here: a lean keep-alive client.
        raw = RawClient(served.public, CONNECTIONS, backlog=MAX_IN_FLIGHT)

        async def one(i: int) -> None:
            record.add(await raw_timed_call(raw, "slow", {"id": i}, DEADLINE_S))

        done = trio.Event()
        started = trio.current_time()
        cpu_start = cpu_s(served.proc.pid)
        with trio.fail_after(LOAD_S + DEADLINE_S + 30):
            async with trio.open_nursery() as nursery:
                await nursery.start(raw.run)
                nursery.start_soon(sample_rss, done)
                await open_loop(OVERLOAD * CAPACITY, LOAD_S, one, MAX_IN_FLIGHT, record)
                done.set()
                raw.close()
        load_s = trio.current_time() - started
        worker_cpu = (cpu_s(served.proc.pid) - cpu_start) / load_s

        # Load dropped: the next calls are served as if nothing happened.
        recovery = LoadRecord()
        async with served.client() as client:
            for i in range(10):
                recovery.add(await timed_call(client, "slow", {"id": 10**6 + i}, DEADLINE_S))
        rss["end"] = rss_mb(served.proc.pid)

    labels = record.by_label()
    offered = (len(record.outcomes) + record.capped) / LOAD_S
    print(
        f"\noverload: capacity {CAPACITY:.0f}/s, offered {offered:.0f}/s "
        f"({offered / CAPACITY:.1f}x) for {LOAD_S:g} s (all answered after {load_s:.1f} s)\n"
        f"  {record.summary()}\n"
        f"  served {labels[OK] / LOAD_S:.1f}/s; refusals p99 "
        f"{record.latency_ms(0.99, '429 queue_full'):.0f} ms\n"
        f"  worker RSS start {rss['start']:.1f} MB, max {rss['max']:.1f} MB, "
        f"end {rss['end']:.1f} MB; worker CPU {100 * worker_cpu:.0f}% of a core\n"
        f"  recovery: {recovery.summary()}"
    )
    # Offered: every call due, sent or refused by the client's own in-flight cap
    # (the worker was that far behind); only calls the client itself was late for are not.
    assert offered >= 0.75 * OVERLOAD * CAPACITY, "the client did not drive the overload"
    assert labels[OK] > 0, "nothing was served under overload"
    assert set(labels) <= {OK} | REFUSALS, labels
    assert labels["429 queue_full"] > len(record.outcomes) / 2, labels
    # Successes stay near capacity (the queue is bounded, nothing is served out of thin air).
    assert labels[OK] <= CAPACITY * (LOAD_S + DEADLINE_S) + QUEUE_DEPTH, labels
    assert rss["max"] - rss["start"] < RSS_GROWTH_MB, rss
    assert recovery.by_label() == {OK: 10}, recovery.by_label()
    assert recovery.latency_ms(1.0) < 1000, recovery.summary()
    assert served.proc.returncode == 0, served.log.read_text()[-3000:]


async def test_a_call_waits_in_the_queue_at_most_its_runtime_limit(worker_dir: Path) -> None:
    """One instance, a handler taking most of its 1 s runtime limit, and ten calls
    at once: those that would wait longer than the runtime limit for the
    instance get 429 queue_full (naming the limit) instead of waiting on."""
    write_fn(
        worker_dir / "registry",
        "busy",
        "import time\n\ndef f(event):\n    time.sleep(0.6)\n    return {'id': event['id']}\n",
        "limits:\n  runtime_s: 1\n",
    )
    record = LoadRecord()
    async with serving(worker_dir, "functions.max_instances=1") as served:
        async with served.client() as client:
            assert (await timed_call(client, "busy", {"id": -1}, 60)).label == OK

            async def one(i: int) -> None:
                record.add(await timed_call(client, "busy", {"id": i}, 30))

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
    labels = record.by_label()
    assert labels[OK] >= 1 and labels["429 queue_full"] >= 5, labels
    assert set(labels) == {OK, "429 queue_full"}, labels
    assert "runtime limit of 1 s" in record.examples()["429 queue_full"]
    # Queued at most 1 s, then the sandbox's call itself (0.6 s), with slack for a loaded host.
    assert record.latency_ms(1.0) < 4000, record.summary()
