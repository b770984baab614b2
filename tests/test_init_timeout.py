"""The init phase of a real leaf: the function's import has a limit of its own.

A leaf starts in two phases: the sandbox starts (its runtime listens, within
``sandbox.ready_timeout_s``: the sandbox's failure if exceeded) and then the
function's code is imported (within the function's ``limits.init_s``: the
function's failure if exceeded).  Whatever goes wrong in the second phase is
answered once and never retried as if the sandbox were at fault; the
worker's per-function ``sandbox_starts`` counts every sandbox asked of the
pool, so the tests see that only one was.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from .test_http_api import Served, assert_json_error, serving, write_fn

pytestmark = pytest.mark.root

ECHO = """
    def f(event):
        return event
"""


def sleepy_import(seconds: float) -> str:
    return f"""
    import time
    time.sleep({seconds})

    def f(event):
        return event
    """


async def stats_of(served: Served, name: str) -> dict[str, Any]:
    async with served.admin_client() as admin:
        return (await admin.get("/stats")).json()["functions"][name]


async def sandboxes(served: Served) -> list[dict[str, Any]]:
    async with served.admin_client() as admin:
        return (await admin.get("/sandboxes")).json()


async def timed_post(served: Served, name: str) -> tuple[Any, float]:
    async with served.client() as client:
        start = time.monotonic()
        response = await client.post(f"/run/{name}", json={"x": 1})
        return response, time.monotonic() - start


async def test_slow_import_is_one_504_init_timeout_then_the_function_cools_down(worker_dir):
    with trio.fail_after(60):
        async with serving(worker_dir, "functions.failure_cooldown_s=30") as served:
            write_fn(served, "slow", sleepy_import(3), "limits:\n  init_s: 1\n")
            response, elapsed = await timed_post(served, "slow")
            body = assert_json_error(response, 504, "init_timeout")
            assert "init limit of 1 s (limits.init_s)" in body["message"]
            assert body["init_s"] == 1.0
            assert 1 <= elapsed < 3  # once: no retry, no wait for the 3 s import
            stats = await stats_of(served, "slow")
            assert (stats["sandbox_starts"], stats["init_timeouts"]) == (1, 1)
            assert [sb for sb in await sandboxes(served) if sb["kind"] == "leaf"] == []
            # The next call does not burn another init_s: the function cools down.
            response, elapsed = await timed_post(served, "slow")
            body = assert_json_error(response, 503, "function_failing")
            assert "limits.init_s" in body["message"] and elapsed < 1
            assert 0 < float(response.headers["retry-after"]) <= 30
            assert (await stats_of(served, "slow"))["sandbox_starts"] == 1
            [zygote] = await sandboxes(served)
            assert zygote["children"] == 0  # the child that never started is not counted


async def test_import_within_init_s_works_even_beyond_ready_timeout(worker_dir):
    # The import takes longer than the sandbox's own start limit: it is the
    # function's time (init_s), not the sandbox's (ready_timeout_s).
    with trio.fail_after(60):
        async with serving(worker_dir, "sandbox.ready_timeout_s=1") as served:
            write_fn(served, "model", sleepy_import(2), "limits:\n  init_s: 5\n")
            response, elapsed = await timed_post(served, "model")
            assert response.status_code == 200, response.text
            assert response.json() == {"x": 1} and 2 <= elapsed < 5
            stats = await stats_of(served, "model")
            assert (stats["sandbox_starts"], stats["cold_starts"]) == (1, 1)
            response, elapsed = await timed_post(served, "model")
            assert response.status_code == 200 and elapsed < 1  # warm: imported once


async def test_a_slow_import_does_not_hold_up_forks_of_other_functions(worker_dir):
    with trio.fail_after(60):
        async with serving(worker_dir) as served:
            write_fn(served, "warmup", ECHO)
            write_fn(served, "slow", sleepy_import(4), "limits:\n  init_s: 10\n")
            write_fn(served, "quick", ECHO)
            assert (await timed_post(served, "warmup"))[0].status_code == 200  # zygote built
            results: dict[str, tuple[Any, float]] = {}

            async def one(name: str) -> None:
                results[name] = await timed_post(served, name)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, "slow")
                await trio.sleep(0.5)  # "slow" is importing in a child of the zygote
                nursery.start_soon(one, "quick")
            assert results["slow"][0].status_code == 200 and results["slow"][1] >= 4
            assert results["quick"][0].status_code == 200
            assert results["quick"][1] < 2.5  # not after the other's import
            by_function = {sb["function"]: sb for sb in await sandboxes(served)}
            assert {"slow", "quick"} <= set(by_function)


async def test_init_s_above_the_worker_maximum_is_a_bad_function(worker_dir):
    with trio.fail_after(60):
        async with serving(worker_dir, "limits.max_init_s=100") as served:
            write_fn(served, "greedy", ECHO, "limits:\n  init_s: 101\n")
            response, _ = await timed_post(served, "greedy")
            body = assert_json_error(response, 500, "bad_function")
            assert "limits.init_s 101" in body["message"]
            assert "exceeds the worker maximum 100" in body["message"]
            assert "(limits.max_init_s)" in body["message"]


async def test_an_import_error_is_answered_by_one_sandbox_never_retried(worker_dir):
    with trio.fail_after(60):
        async with serving(worker_dir) as served:
            write_fn(served, "broken", "raise RuntimeError('no model file')\n")
            for _ in range(2):
                response, elapsed = await timed_post(served, "broken")
                body = assert_json_error(response, 500, "handler_import_failed")
                assert "no model file" in body["message"] and elapsed < 5
                assert body["cause"]["code"] == "import_error"
                assert "RuntimeError: no model file" in body["cause"]["detail"]["traceback"]
            stats = await stats_of(served, "broken")
            # one sandbox, kept: it answers every call with the import's traceback
            assert (stats["sandbox_starts"], stats["sandbox_failures"]) == (1, 0)


@pytest.mark.parametrize("start", ["fresh", "forked"])
async def test_a_death_during_the_import_is_a_502_not_retried(worker_dir, start):
    cache = "import_cache.enabled=" + ("false" if start == "fresh" else "true")
    with trio.fail_after(60):
        async with serving(worker_dir, cache) as served:
            write_fn(served, "dies", "import os\nos._exit(7)\n")
            response, elapsed = await timed_post(served, "dies")
            body = assert_json_error(response, 502, "sandbox_died")
            assert "while importing the function's code" in body["message"] and elapsed < 5
            # a forked leaf's exit status goes to its zygote, which forwards it
            assert body["cause"] == {"code": "exit", "detail": {"exit_code": 7}}
            assert "exit (exit_code=7)" in body["message"]
            stats = await stats_of(served, "dies")
            assert (stats["sandbox_starts"], stats["sandbox_failures"]) == (1, 1)
            if start == "forked":
                [zygote] = await sandboxes(served)  # alive, and the child is not counted
                assert (zygote["kind"], zygote["children"]) == ("zygote", 0)


async def test_an_import_beyond_the_memory_limit_is_diagnosed(worker_dir):
    with trio.fail_after(60):
        async with serving(worker_dir) as served:
            model = "WEIGHTS = b'x' * (256 << 20)\n\ndef f(event):\n    return len(WEIGHTS)\n"
            write_fn(served, "big", model, "limits:\n  mem_mb: 64\n")
            response, _ = await timed_post(served, "big")
            body = assert_json_error(response, 502, "sandbox_died")
            assert "oom (limit_mb=64)" in body["message"]
            assert body["cause"] == {"code": "oom", "detail": {"limit_mb": 64}}
            assert (await stats_of(served, "big"))["sandbox_starts"] == 1
