"""Call records on a real worker (root, real sandboxes): a failing call's
error body and header carry its cause, the admin ``/debug`` endpoints serve
its record, output and explanation, ``olactors logs`` and ``olactors why``
print them, records survive a worker restart, and retention drops the oldest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import run_cli
from .test_http_api import ECHO, serving, write_fn

pytestmark = pytest.mark.root

FAILING = """
    import sys

    def f(event):
        print("to stdout", event)
        print("to stderr", event, file=sys.stderr)
        raise ValueError("bad input " + str(event))
"""

RECORD_FIELDS = {
    "request_id",
    "function",
    "version",
    "status",
    "cause",
    "blocked_syscalls",
    "started_at",
    "duration_ms",
    "queue_ms",
    "cold",
    "cold_reason",
    "sandbox",
    "cpu_ms",
    "memory_peak_mb",
    "memory_limit_mb",
    "stdout",
    "stderr",
    "owner",
}


async def record_of(admin: httpx.AsyncClient, name: str, request_id: str) -> dict[str, Any]:
    """The record, once the recorder has written it (batched, off the request path)."""
    with trio.fail_after(20):
        while True:
            r = await admin.get(f"/debug/{name}/{request_id}")
            if r.status_code == 200:
                return dict(r.json())
            assert r.status_code == 404 and r.json()["error"] == "record_not_found", r.text
            await trio.sleep(0.05)


async def cli(*args: str) -> tuple[int, str, str]:
    done = await trio.to_thread.run_sync(lambda: run_cli(*args))
    return done.returncode, done.stdout, done.stderr


async def test_a_failing_call_is_explained_everywhere(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "failing", FAILING)
    write_fn(worker_dir / "registry", "echo", ECHO)
    path = str(worker_dir)
    async with serving(worker_dir) as served:
        async with served.client() as client, served.admin_client() as admin:
            r = await client.post("/run/failing", json=7, headers={"X-Request-Id": "lb-1.a_B"})
            assert r.status_code == 500, r.text
            assert r.headers["x-request-id"] == "lb-1.a_B"
            body = r.json()
            assert body["error"] == "handler_exception" and body["request_id"] == "lb-1.a_B"
            assert body["cause"]["code"] == "handler_exception"
            assert body["cause"]["detail"]["type"] == "ValueError"
            assert r.headers["x-olactors-cause"] == "handler_exception"
            ok = await client.post("/run/echo", json=1, headers={"X-Request-Id": "lb-1.a_B"})
            assert ok.status_code == 200 and "x-olactors-cause" not in ok.headers
            assert ok.headers["x-request-id"] == "lb-1.a_B"  # unique per function only
            again = await client.post("/run/failing", json=8, headers={"X-Request-Id": "lb-1.a_B"})
            assert again.headers["x-request-id"] != "lb-1.a_B"  # taken for this function
            bad = await client.post("/run/echo", json=1, headers={"X-Request-Id": "no spaces"})
            assert bad.headers["x-request-id"] != "no spaces"

            record = await record_of(admin, "failing", "lb-1.a_B")
            assert set(record) == RECORD_FIELDS
            assert record["status"] == 500 and record["function"] == "failing"
            assert record["cause"] == body["cause"]
            assert record["started_at"].endswith("Z") and record["duration_ms"] > 0
            assert record["cold"] is True and record["cold_reason"] == "first"
            assert record["version"] and record["sandbox"]
            assert record["memory_limit_mb"] and record["queue_ms"] >= 0
            assert "to stdout 7" in record["stdout"] and "to stderr 7" in record["stderr"]
            assert record["blocked_syscalls"] == []

            r = await admin.get("/debug/failing/lb-1.a_B/stdout")
            assert r.headers["content-type"].startswith("text/plain")
            assert "to stdout 7" in r.text
            r = await admin.get("/debug/failing/lb-1.a_B/stderr")
            assert "to stderr 7" in r.text and "to stdout" not in r.text
            r = await admin.get("/debug/failing/lb-1.a_B/error")
            assert r.text.startswith("The handler raised ValueError: bad input 7"), r.text

            await record_of(admin, "failing", again.headers["x-request-id"])
            await record_of(admin, "echo", "lb-1.a_B")
            listed = (await admin.get("/debug/failing")).json()
            assert [x["request_id"] for x in listed["records"]] == [
                again.headers["x-request-id"],
                "lb-1.a_B",
            ]
            assert "stdout" not in listed["records"][0]
            errors = (await admin.get("/debug/echo?errors=1")).json()
            assert errors == {"function": "echo", "records": []}
            r = await admin.get("/debug/echo?limit=x")
            assert r.status_code == 400 and r.json()["error"] == "bad_parameter"
            r = await admin.get("/debug/ghost")
            assert r.status_code == 404 and r.json()["error"] == "function_not_found"
            r = await admin.get("/debug/echo/nope")
            assert r.status_code == 404 and r.json()["error"] == "record_not_found"
            r = await admin.get("/debug/echo/nope/other")
            assert r.status_code == 404 and r.json()["error"] == "not_found"
            stats = (await admin.get("/stats")).json()["records"]
            assert stats["written"] >= 4 and stats["dropped"] == stats["failed"] == 0

            code, out, err = await cli("logs", "failing", "--path", path)
            assert code == 0, err
            lines = out.splitlines()
            assert len(lines) == 2 and " lb-1.a_B 500 " in lines[0]
            assert "cold(first) handler_exception" in lines[0]
            code, out, err = await cli("logs", "failing", "--json", "--errors", "--path", path)
            assert [json.loads(line)["request_id"] for line in out.splitlines()][0] == "lb-1.a_B"
            code, out, err = await cli("logs", "failing", "--request", "lb-1.a_B", "--path", path)
            assert code == 0 and "to stdout 7" in out
            assert "why: The handler raised ValueError" in out
            code, out, err = await cli("why", "failing", "lb-1.a_B", "--path", path)
            assert code == 0 and out.startswith("The handler raised ValueError: bad input 7")
            code, out, err = await cli("why", "failing", "nope", "--path", path)
            assert code == 2 and "no record of request 'nope'" in err

    # A restart keeps the records, and their ids stay taken.
    async with serving(worker_dir) as served:
        async with served.client() as client, served.admin_client() as admin:
            assert (await record_of(admin, "failing", "lb-1.a_B"))["status"] == 500
            r = await client.post("/run/failing", json=9, headers={"X-Request-Id": "lb-1.a_B"})
            assert r.headers["x-request-id"] != "lb-1.a_B"


async def test_retention_drops_the_oldest(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "echo", ECHO)
    async with serving(worker_dir) as served:
        async with served.client() as client, served.admin_client() as admin:
            ids = []
            for n in range(5):
                r = await client.post("/run/echo", json=n)
                assert r.status_code == 200
                ids.append(r.headers["x-request-id"])
            await record_of(admin, "echo", ids[-1])
    # Retention runs at start and then every minute; keep three per function.
    async with serving(worker_dir, "debug.keep_per_function=3") as served:
        async with served.admin_client() as admin:
            with trio.fail_after(20):
                while len((await admin.get("/debug/echo")).json()["records"]) != 3:
                    await trio.sleep(0.05)
            listed = (await admin.get("/debug/echo")).json()["records"]
            assert [x["request_id"] for x in listed] == ids[:1:-1]
            r = await admin.get(f"/debug/echo/{ids[0]}")
            assert r.status_code == 404 and r.json()["error"] == "record_not_found"


async def test_logs_follow_prints_new_calls(worker_dir: Path) -> None:
    import signal
    import subprocess
    import sys

    from .conftest import REPO

    write_fn(worker_dir / "registry", "echo", ECHO)
    async with serving(worker_dir) as served, served.client() as client:
        first = await client.post("/run/echo", json=0, headers={"X-Request-Id": "before"})
        assert first.status_code == 200
        async with served.admin_client() as admin:
            await record_of(admin, "echo", "before")
        args = [sys.executable, "-m", "olactors.cli", "logs", "echo", "--follow"]
        process = await trio.lowlevel.open_process(
            [*args, "--path", str(worker_dir)], stdout=subprocess.PIPE, cwd=REPO
        )
        assert process.stdout is not None
        try:
            seen = b""
            with trio.fail_after(30):
                while b" before 200 " not in seen:
                    seen += await process.stdout.receive_some()
                r = await client.post("/run/echo", json=1, headers={"X-Request-Id": "after"})
                assert r.status_code == 200
                while b" after 200 " not in seen:
                    seen += await process.stdout.receive_some()
            assert seen.count(b" before 200 ") == 1  # each call once
        finally:
            process.send_signal(signal.SIGINT)
            with trio.fail_after(10):
                assert await process.wait() == 0
