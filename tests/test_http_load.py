"""End-to-end behaviour under load, failure and shutdown, over real HTTP.

Every test serves a real worker (SOCK sandboxes) on port 0; request loops
are bounded in count and time and target 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import cgroup_dirs_named
from .test_http_api import ECHO, alive, serving, write_fn

pytestmark = pytest.mark.root

SLEEPER = """
    import time

    def f(event):
        time.sleep((event or {}).get("sleep", 0))
        return {"slept": (event or {}).get("sleep", 0)}
"""


async def test_code_update_is_served_within_cache_period(worker_dir: Path) -> None:
    cache_s = 1.0
    registry = worker_dir / "registry"
    write_fn(registry, "versioned", "def f(event):\n    return 1\n")
    async with serving(worker_dir, f"registry.cache_s={cache_s}") as served:
        async with served.client() as client:
            assert (await client.post("/run/versioned")).json() == 1
            (registry / "versioned" / "f.py").write_text("def f(event):\n    return 2\n")
            changed = trio.current_time()
            while True:
                r = await client.post("/run/versioned")
                assert r.status_code == 200, r.text
                if r.json() == 2:
                    break
                assert trio.current_time() - changed < cache_s + 1.0, "old code served too long"
                await trio.sleep(0.05)
            # Once the new version answered, the old one never comes back.
            for _ in range(20):
                assert (await client.post("/run/versioned")).json() == 2


async def test_sixteen_clients_for_ten_seconds(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "echo", ECHO)
    statuses: Counter[int] = Counter()
    wrong = []
    async with serving(worker_dir) as served:
        deadline = trio.current_time() + 10.0

        async def client_loop(i: int) -> None:
            async with served.client() as client:
                n = 0
                while trio.current_time() < deadline:
                    event = {"client": i, "n": n}
                    r = await client.post("/run/echo", json=event)
                    statuses[r.status_code] += 1
                    if r.status_code == 200 and r.json() != event:
                        wrong.append((event, r.text))
                    n += 1

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(client_loop, i)
    assert not wrong
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 16 * 10  # at least one call per client per second


async def test_hundred_distinct_functions(worker_dir: Path) -> None:
    registry = worker_dir / "registry"
    names = [f"fn-{i:03d}" for i in range(100)]
    for name in names:
        write_fn(
            registry, name, f"def f(event):\n    return {{'name': {name!r}, 'event': event}}\n"
        )
    results: dict[str, tuple[int, str]] = {}
    async with serving(worker_dir, "memory.pool_mb=2048") as served:
        limiter = trio.CapacityLimiter(8)

        async def call(client: httpx.AsyncClient, name: str) -> None:
            async with limiter:
                r = await client.post(f"/run/{name}", json=name)
                results[name] = (r.status_code, r.text)

        async with served.client(limits=httpx.Limits(max_connections=8)) as client:
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(call, client, name)
        async with served.admin_client() as admin:
            stats = (await admin.get("/stats")).json()
    assert len(results) == 100
    for name in names:
        status, text = results[name]
        assert status == 200, (name, text)
        assert json.loads(text) == {"name": name, "event": name}
    assert len(stats["functions"]) == 100


async def test_flood_gets_backpressure_not_errors(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "slow", SLEEPER)
    statuses: Counter[int] = Counter()
    retry_after = set()
    async with serving(
        worker_dir, "queue.max_depth=4", "functions.max_instances=1", "queue.retry_after_s=2"
    ) as served:
        async with served.client() as client:
            assert (await client.post("/run/slow", json={})).status_code == 200  # warm

        async def one(client: httpx.AsyncClient) -> None:
            r = await client.post("/run/slow", json={"sleep": 0.2})
            statuses[r.status_code] += 1
            if r.status_code == 429:
                assert r.json()["error"] == "queue_full"
                retry_after.add(r.headers["retry-after"])

        async with served.client(limits=httpx.Limits(max_connections=50)) as client:
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(one, client)
    assert statuses[429] > 0, statuses
    assert statuses[200] > 0, statuses
    assert set(statuses) <= {200, 429}, statuses
    assert retry_after == {"2"}


async def leaf_pids(served, function: str, timeout: float = 10.0) -> list[int]:
    async with served.admin_client() as admin:
        with trio.fail_after(timeout):
            while True:
                sandboxes = (await admin.get("/sandboxes")).json()
                pids = [
                    pid
                    for sb in sandboxes
                    if sb["function"] == function and sb["state"] == "running"
                    for pid in sb["pids"]
                ]
                if pids:
                    return pids
                await trio.sleep(0.02)


async def test_sandbox_killed_mid_request(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "victim", SLEEPER)
    async with serving(worker_dir) as served, served.client() as client:
        assert (await client.post("/run/victim", json={})).status_code == 200
        outcome = {}

        async def long_call() -> None:
            outcome["r"] = await client.post("/run/victim", json={"sleep": 5})

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_call)
            await trio.sleep(0.5)  # the handler is now sleeping in the sandbox
            pids = await leaf_pids(served, "victim")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        r = outcome["r"]
        assert time.monotonic() - started < 4.5, "the call waited for the dead handler"
        assert r.status_code == 502, r.text
        assert r.json()["error"] == "sandbox_died"
        assert r.json()["request_id"] == r.headers["x-request-id"]
        r = await client.post("/run/victim", json={"sleep": 0})
        assert r.status_code == 200, r.text
        assert not [pid for pid in pids if alive(pid)]


async def test_graceful_shutdown_under_load(worker_dir: Path) -> None:
    from olactors.sock import worker_id

    write_fn(worker_dir / "registry", "slow", SLEEPER)
    statuses: Counter[str] = Counter()
    pids: list[int] = []
    stop_requested = trio.Event()
    async with serving(worker_dir, "server.shutdown_timeout_s=5") as served:
        async with served.client() as client:
            assert (await client.post("/run/slow", json={})).status_code == 200

        async def client_loop() -> None:
            async with served.client() as client:
                while not stop_requested.is_set():
                    try:
                        r = await client.post("/run/slow", json={"sleep": 0.3})
                        statuses[str(r.status_code)] += 1
                    except httpx.TransportError:
                        statuses["connection_error"] += 1
                        assert stop_requested.is_set()
                        return
                # Calls made after the stop are refused cleanly or not accepted at all.
                try:
                    r = await client.post("/run/slow", json={"sleep": 0})
                    statuses[f"after:{r.status_code}"] += 1
                except httpx.TransportError:
                    statuses["after:connection_error"] += 1

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(client_loop)
            await trio.sleep(1.5)
            pids.extend(await leaf_pids(served, "slow"))
            stop_requested.set()
            served.stop.set()
    assert statuses["200"] > 0, statuses
    # In-flight calls finish; calls arriving during the shutdown get 503 or no connection.
    codes = {key.removeprefix("after:") for key in statuses}
    assert codes <= {"200", "503", "connection_error"}, statuses
    assert not [pid for pid in pids if alive(pid)]
    assert not (worker_dir / "admin.sock").exists()
    assert not (worker_dir / "run" / "endpoints.json").exists()
    assert not cgroup_dirs_named(f"olactors-{worker_id(worker_dir.resolve())}")
