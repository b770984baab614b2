"""Typed causes through a real worker and real sandboxes (root), for the
causes tests/test_death_causes.py does not cover: the function's own code
failing (``import_error``, ``handler_exception``, ``init_timeout``), a
sandbox that never starts (``startup_failed``), and the ends the worker
decides (``evicted``, ``code_updated``, ``worker_shutdown``), seen on the
pool's ``SandboxDestroyed`` events.  Every error body carries ``cause`` and
the ``X-Olactors-Cause`` header beside the unchanged ``error`` code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from olactors._causes import CauseCode
from olactors._errors import SandboxError
from olactors.sock import SandboxDestroyed, SandboxMeta

from .conftest import write_function
from .test_http_api import FAST_CONFIG, Served, assert_json_error, write_fn

pytestmark = pytest.mark.root


@asynccontextmanager
async def serving_on_own_pool(
    worker_dir: Path, *overrides: str
) -> AsyncIterator[tuple[Served, list[SandboxDestroyed]]]:
    """A served worker on a pool the test opens, and the pool's destroyed
    events as they come (also those of the worker's shutdown)."""
    from olactors.serve import serve
    from olactors.sock import open_sock_pool
    from olactors.worker_dir import init_worker_dir

    config = init_worker_dir(worker_dir, ["server.port=0", *FAST_CONFIG, *overrides])
    destroyed: list[SandboxDestroyed] = []
    async with open_sock_pool(config, worker_dir) as pool:
        unlisten = pool.listen(
            lambda event: destroyed.append(event) if isinstance(event, SandboxDestroyed) else None
        )
        stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                start = partial(serve, config, worker_dir, shutdown=stop, pool=pool)
                endpoints = await nursery.start(start)
                try:
                    yield (
                        Served(endpoints["public"], endpoints["admin"], worker_dir, stop),
                        destroyed,
                    )
                finally:
                    stop.set()
        finally:
            unlisten()


def caused(response: Any, status: int, error: str, cause: str) -> dict[str, Any]:
    body = assert_json_error(response, status, error)
    assert body["cause"]["code"] == cause, body
    assert response.headers["x-olactors-cause"] == cause
    return dict(body["cause"]["detail"])


async def test_the_functions_own_failures_name_their_cause(worker_dir):
    with trio.fail_after(90):
        async with serving_on_own_pool(worker_dir) as (served, _destroyed):
            write_fn(served, "broken", "import no_such_module\n\ndef f(event):\n    return 1\n")
            write_fn(served, "raises", "def f(event):\n    raise ValueError('bad input')\n")
            write_fn(
                served,
                "slow",
                "import time\ntime.sleep(3)\n\ndef f(event):\n    return 1\n",
                "limits:\n  init_s: 1\n",
            )
            async with served.client() as client:
                broken = await client.post("/run/broken", json=1)
                raises = await client.post("/run/raises", json=1)
                slow = await client.post("/run/slow", json=1)
            detail = caused(broken, 500, "handler_import_failed", "import_error")
            assert "no_such_module" in detail["traceback"]
            detail = caused(raises, 500, "handler_exception", "handler_exception")
            assert detail["type"] == "ValueError" and detail["message"] == "bad input"
            assert "raise ValueError" in detail["traceback"]
            assert caused(slow, 504, "init_timeout", "init_timeout") == {"limit_s": 1.0}


async def test_a_sandbox_that_never_starts_is_startup_failed(pool, tmp_path):
    """The runtime never reports (here its interpreter is /usr/bin/false,
    which exits at once): ``startup_failed``, with what it printed."""
    code = write_function(tmp_path, "echo", "def f(event):\n    return event\n")
    pool.python = "/usr/bin/false"
    with pytest.raises(SandboxError) as info:
        await pool.create(None, True, str(code), None, SandboxMeta())
    cause = info.value.cause
    assert cause is not None and cause.code is CauseCode.STARTUP_FAILED, cause
    assert "output" in cause.detail and cause.counts_against_function
    assert pool.sandboxes() == []


async def test_the_worker_names_why_it_ended_a_sandbox(worker_dir):
    """Eviction, a code update and the shutdown each end a sandbox with their
    own cause, none of them counted against the function."""
    overrides = (
        "import_cache.enabled=false",
        "memory.pool_mb=256",
        "memory.free_goal_mb=0",
        "limits.mem_mb=128",
        "functions.pause_after_s=0.1",
        "registry.cache_s=0",
    )
    echo = "def f(event):\n    return {'v': VERSION}\nVERSION = %d\n"
    with trio.fail_after(120):
        async with serving_on_own_pool(worker_dir, *overrides) as (served, destroyed):
            for name in ("a", "b", "c"):
                write_fn(served, name, echo % 1)
            async with served.client() as client:
                for name in ("a", "b"):
                    assert (await client.post(f"/run/{name}", json=1)).status_code == 200
                await trio.sleep(0.5)  # both pause: the pool is full of paused sandboxes
                assert (await client.post("/run/c", json=1)).status_code == 200
                evicted = [e for e in destroyed if e.cause.code is CauseCode.EVICTED]
                assert len(evicted) == 1, [e.cause for e in destroyed]
                assert not evicted[0].cause.counts_against_function

                write_fn(served, "c", echo % 2)
                response = await client.post("/run/c", json=1)
                assert response.status_code == 200 and response.json() == {"v": 2}
                with trio.fail_after(10):
                    while not any(e.cause.code is CauseCode.CODE_UPDATED for e in destroyed):
                        await trio.sleep(0.05)
            before_shutdown = len(destroyed)
        ended = destroyed[before_shutdown:]
        assert ended and all(e.cause.code is CauseCode.WORKER_SHUTDOWN for e in ended), [
            e.cause for e in ended
        ]
