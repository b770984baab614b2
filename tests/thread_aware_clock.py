"""Virtual time for actor tests whose code runs work in ``trio.to_thread``.

trio's autojumping MockClock jumps to the next deadline once every task has
been blocked for its threshold of real time; a task waiting for a worker
thread counts as blocked, so on a loaded machine a thread that copies a file
for longer than the threshold let virtual time leap over every timer
(timeouts fired that the code under test would never see). This clock does
not jump while any ``trio.to_thread.run_sync`` call is running: the run
loop just waits again, and the thread's end wakes it.

MockClock cannot be subclassed; the run loop calls its ``_autojump`` when
idle, which is wrapped on the instance (checked to exist, so a trio that
renames it fails here rather than silently jumping again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing


def thread_aware_clock(
    monkeypatch: pytest.MonkeyPatch, threshold: float = 0.02
) -> trio.testing.MockClock:
    """A clock that autojumps after ``threshold`` s of real idleness with no
    worker thread running (``trio.to_thread.run_sync`` counted while patched)."""
    clock = trio.testing.MockClock(autojump_threshold=threshold)
    running = 0
    autojump = clock._autojump  # what trio's run loop calls when idle

    def autojump_unless_a_thread_runs() -> None:
        if running == 0:
            autojump()

    monkeypatch.setattr(clock, "_autojump", autojump_unless_a_thread_runs)
    run_sync = trio.to_thread.run_sync

    async def counted(sync_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal running
        running += 1
        try:
            return await run_sync(sync_fn, *args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(trio.to_thread, "run_sync", counted)
    return clock
