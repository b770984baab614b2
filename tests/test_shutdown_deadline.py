"""One shutdown deadline (issue 11, defect 6).

From the moment shutdown is requested, in-flight HTTP requests, queued calls
and the instances' stop share one deadline, ``server.shutdown_timeout_s``
away; then what is left is cancelled and every sandbox destroyed.  Before,
hypercorn's grace, the worker's drain and the instances' stop each had the
full timeout, one after the other.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import cgroup_dirs_named
from .test_http_api import FAST_CONFIG, write_fn
from .test_http_load import SLEEPER

pytestmark = pytest.mark.root

TIMEOUT_S = 8.0  # large enough that two full timeouts in a row exceed the bound
BOUND_S = TIMEOUT_S * 1.5 + 2  # serve returns within this of the request


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def queue_depth(admin: httpx.AsyncClient, name: str) -> int:
    functions = (await admin.get("/functions")).json()
    return sum(f["queue_depth"] for f in functions if f["name"] == name)


async def test_calls_in_flight_and_queued_share_one_deadline(worker_dir: Path) -> None:
    from olactors.serve import serve
    from olactors.sock import worker_id
    from olactors.worker_dir import init_worker_dir

    write_fn(worker_dir / "registry", "sleeper", SLEEPER)
    config = init_worker_dir(
        worker_dir,
        [
            "server.port=0",
            *FAST_CONFIG,
            f"server.shutdown_timeout_s={TIMEOUT_S}",
            "functions.max_instances=2",
            "limits.runtime_s=120",
        ],
    )
    stop = trio.Event()
    outcomes: list[str] = []

    async def call(public: str) -> None:
        async with httpx.AsyncClient(base_url=public, timeout=60) as client:
            try:
                r = await client.post("/run/sleeper", json={"sleep": 100})
                outcomes.append(str(r.status_code))
            except httpx.TransportError:
                outcomes.append("closed")

    with trio.fail_after(120):
        async with trio.open_nursery() as callers:
            async with trio.open_nursery() as server:
                endpoints = await server.start(partial(serve, config, worker_dir, shutdown=stop))
                public, admin_path = endpoints["public"], endpoints["admin"]
                transport = httpx.AsyncHTTPTransport(uds=admin_path)
                async with httpx.AsyncClient(transport=transport, base_url="http://a") as admin:
                    for _ in range(5):  # one or two running, the rest queued
                        callers.start_soon(call, public)
                    pids: list[int] = []
                    while not pids or await queue_depth(admin, "sleeper") < 3:
                        await trio.sleep(0.1)
                        pids = await leaf_pids_now(admin, "sleeper")
                requested = trio.current_time()
                stop.set()
            took = trio.current_time() - requested
            with trio.fail_after(5):  # every caller has its answer by now (or very soon)
                while len(outcomes) < 5:
                    await trio.sleep(0.05)
    assert took < BOUND_S, f"serve took {took:.1f} s to stop (deadline {TIMEOUT_S} s)"
    assert set(outcomes) <= {"503", "closed"}, outcomes
    assert not [pid for pid in pids if alive(pid)]
    assert not (worker_dir / "admin.sock").exists()
    assert not cgroup_dirs_named(f"olactors-{worker_id(worker_dir.resolve())}")


async def leaf_pids_now(admin: httpx.AsyncClient, function: str) -> list[int]:
    sandboxes = (await admin.get("/sandboxes")).json()
    return [
        pid
        for sb in sandboxes
        if sb["function"] == function and sb["state"] == "running"
        for pid in sb["pids"]
    ]


async def test_idle_keepalive_connections_do_not_hold_shutdown(worker_dir: Path) -> None:
    """Idle keep-alive connections (one after an early 413) are closed at once."""
    from olactors.serve import serve
    from olactors.worker_dir import init_worker_dir

    timeout = 20.0
    config = init_worker_dir(
        worker_dir,
        [
            "server.port=0",
            *FAST_CONFIG,
            f"server.shutdown_timeout_s={timeout}",
            "limits.max_body_bytes=1024",
        ],
    )
    stop = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as server:
            endpoints = await server.start(partial(serve, config, worker_dir, shutdown=stop))
            url = httpx.URL(endpoints["public"])
            idle = []
            for first in (
                b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n",
                b"POST /run/x HTTP/1.1\r\nHost: t\r\nContent-Length: 4000000\r\n\r\n"
                + b"x" * 4000000,
            ):
                stream = await trio.open_tcp_stream(url.host, url.port)
                idle.append(stream)
                async with trio.open_nursery() as sending:
                    sending.start_soon(send_quietly, stream, first)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += await stream.receive_some(65536)
                    sending.cancel_scope.cancel()
            requested = trio.current_time()
            stop.set()
        took = trio.current_time() - requested
        for stream in idle:
            await stream.aclose()
    assert took < 2, f"idle connections held the shutdown for {took:.1f} s"


async def send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    """Send ``data``; a server that answered early and closed ends it quietly."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
