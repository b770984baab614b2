"""What a sandbox sends back is bounded (limits.max_response_bytes,
max_response_headers, max_response_header_bytes): beyond any of them the call
is 502 ``bad_response`` (cause ``bad_response``), the sandbox is destroyed,
the worker's memory stays flat, and the function serves the next call.

Through a real worker on real sandboxes: ordinary handlers and apps that
answer too much, and function code that replaces the runtime's socket with a
server of its own that lies (a gigabyte body, an endless head)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .hostile_kit import raw_server
from .test_http_api import assert_json_error, serving, write_fn

pytestmark = pytest.mark.root

MiB = 1 << 20

BIG = """
def f(event):
    return "x" * event
"""

MANY_HEADERS = """
def app(environ, start_response):
    n = int(environ["QUERY_STRING"])
    start_response("200 OK", [(f"x-h{i}", "v") for i in range(n)])
    return [b"ok"]
"""

BIG_HEADER = """
def app(environ, start_response):
    start_response("200 OK", [("x-big", "v" * int(environ["QUERY_STRING"]))])
    return [b"ok"]
"""

GIGABYTE = """
    conn.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: %d\\r\\n\\r\\n" % (1 << 30))
    chunk = b"x" * (1 << 20)
    for _ in range(1024):
        conn.sendall(chunk)
"""

ENDLESS_HEAD = """
    conn.sendall(b"HTTP/1.1 200 OK\\r\\n")
    line = b"x-endless: " + b"v" * 1000 + b"\\r\\n"
    for _ in range(1 << 20):
        conn.sendall(line)
"""

CHUNKED = """
    conn.sendall(b"HTTP/1.1 200 OK\\r\\ntransfer-encoding: chunked\\r\\n\\r\\n")
    for _ in range(1 << 14):
        conn.sendall(b"100000\\r\\n" + b"x" * (1 << 20) + b"\\r\\n")
"""


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def refused(client: httpx.AsyncClient, target: str, json: object = None) -> str:
    """The 502 bad_response for ``target``; the reason its cause gives."""
    response = await client.post(target, json=json)
    body = assert_json_error(response, 502, "bad_response")
    assert body["cause"]["code"] == "bad_response", body
    return str(body["cause"]["detail"]["reason"])


async def still_serves(client: httpx.AsyncClient) -> None:
    response = await client.post("/run/echo", json={"n": 1})
    assert response.status_code == 200 and response.json() == {"n": 1}


async def test_a_body_beyond_the_limit_is_a_bad_response(worker_dir: Path) -> None:
    async with serving(worker_dir) as served, served.client() as client:
        write_fn(served, "echo", "def f(event):\n    return event\n")
        write_fn(served, "big", BIG)
        # Within the default 6 MiB the whole body arrives...
        response = await client.post("/run/big", json=5 * MiB)
        assert response.status_code == 200 and len(response.content) == 5 * MiB + 2
        # ...beyond it, the worker refuses it (and reads no more of it).
        reason = await refused(client, "/run/big", 7 * MiB)
        assert "limits.max_response_bytes" in reason and str(6 * MiB) in reason
        assert (await client.post("/run/big", json=3)).json() == "xxx"  # a new sandbox
        await still_serves(client)


async def test_a_body_of_exactly_the_limit_passes_one_byte_more_does_not(
    worker_dir: Path,
) -> None:
    async with serving(worker_dir, "limits.max_response_bytes=1000") as served:
        async with served.client() as client:
            write_fn(served, "echo", "def f(event):\n    return event\n")
            write_fn(served, "big", BIG)
            response = await client.post("/run/big", json=998)  # '"' + 998 x + '"'
            assert response.status_code == 200 and len(response.content) == 1000
            reason = await refused(client, "/run/big", 999)
            assert "response body of 1001 bytes, more than 1000" in reason
            await still_serves(client)


async def test_header_count_and_size_are_bounded(worker_dir: Path) -> None:
    limits = ("limits.max_response_headers=20", "limits.max_response_header_bytes=4096")
    async with serving(worker_dir, *limits) as served, served.client() as client:
        write_fn(served, "echo", "def f(event):\n    return event\n")
        write_fn(served, "many", MANY_HEADERS)
        write_fn(served, "bighead", BIG_HEADER)
        # Exactly the limit passes (the runtime's own Content-Length, the
        # framing the worker consumes, is not one of the function's headers),
        # one more is refused.
        response = await client.post("/run/many?20")
        assert response.status_code == 200, response.text
        assert sum(name.startswith("x-h") for name in response.headers) == 20
        reason = await refused(client, "/run/many?21")
        assert "limits.max_response_headers" in reason and "21 response header lines" in reason
        assert (await client.post("/run/bighead?1000")).status_code == 200
        reason = await refused(client, "/run/bighead?8000")
        assert "limits.max_response_header_bytes" in reason
        await still_serves(client)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (GIGABYTE, "limits.max_response_bytes"),
        (ENDLESS_HEAD, "limits.max_response_header_bytes"),
        (CHUNKED, "transfer-encoding"),
    ],
    ids=["gigabyte", "endless-head", "chunked"],
)
async def test_a_lying_server_in_the_sandbox_cannot_grow_the_worker(
    worker_dir: Path, answer: str, reason: str
) -> None:
    async with serving(worker_dir) as served, served.client() as client:
        write_fn(served, "echo", "def f(event):\n    return event\n")
        write_fn(served, "liar", raw_server(answer))
        await still_serves(client)
        before = rss_bytes()
        for _ in range(3):
            assert reason in await refused(client, "/run/liar")
        grown = rss_bytes() - before
        assert grown < 16 * MiB, f"the worker grew by {grown / MiB:.1f} MiB"
        await still_serves(client)


STATUS_APP = """
def app(environ, start_response):
    start_response(environ["QUERY_STRING"] + " Whatever", [])
    return [b"body"]
"""

RAW_STATUS = """
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nupgrade: h2c\\r\\n\\r\\n")
"""


async def test_only_final_statuses_come_back(worker_dir: Path) -> None:
    """A 1xx would switch or confuse the worker's own connection to its client
    (hypercorn failed and dropped it); nothing is defined beyond 599.  An
    app's is a 500 bad_result (its sandbox lives on), a lying server's a 502."""
    async with serving(worker_dir) as served, served.client() as client:
        write_fn(served, "echo", "def f(event):\n    return event\n")
        write_fn(served, "status", STATUS_APP)
        write_fn(served, "liar", raw_server(RAW_STATUS))
        for status in ("100", "101", "199", "600", "999"):
            response = await client.post(f"/run/status?{status}")
            body = assert_json_error(response, 500, "bad_result")
            assert "200-599" in body["message"], body
        for status in ("200", "204", "404", "599"):
            assert (await client.post(f"/run/status?{status}")).status_code == int(status)
        assert "not a response's (200-599)" in await refused(client, "/run/liar")
        await still_serves(client)
