"""The actor tests' clock does not jump while a worker thread runs."""

from __future__ import annotations

import time

import pytest
import trio

from .thread_aware_clock import thread_aware_clock


@pytest.fixture
def clock(monkeypatch):
    return thread_aware_clock(monkeypatch)


async def test_virtual_time_waits_for_a_slow_thread(clock):
    jumped: list[float] = []

    async def timer() -> None:
        await trio.sleep(10)
        jumped.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer)
        start = trio.current_time()
        await trio.to_thread.run_sync(time.sleep, 0.2)  # ten thresholds of real time
        assert trio.current_time() == start and not jumped
        await trio.sleep(20)  # no thread: time jumps as usual
    assert jumped == [start + 10]
