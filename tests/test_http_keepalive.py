"""Keep-alive after an early answer (issue 11, defect 1).

The public server answers some requests without reading their body: 413 for
a body over ``limits.max_body_bytes``, 405, 400 for a bad name, 404.  The
next request on the same keep-alive connection must get its answer: either
the connection is reused (the worker read and dropped the rest of the body,
within a bound) or the first answer said ``Connection: close`` and the
connection was closed, so the client reconnects.  Never a hang.

Each exchange runs on a real worker (``serving``) over a raw TCP stream and
through ``httpx.Client`` (one pooled connection), every step bounded by
``trio.fail_after``.  Bodies are megabytes on purpose: the hang needed the
server to receive body chunks after the app had stopped reading them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from .test_http_api import ECHO, serving, write_fn

pytestmark = pytest.mark.root

LIMIT = 4 << 20  # limits.max_body_bytes for these tests
WITHIN = 3 << 20  # a body the worker may read and drop to keep the connection
TOO_LARGE = 6 << 20  # a body over the limit
CHUNK = 64 << 10
STEP_S = 20  # every exchange is bounded by this


@dataclass
class Early:
    """One request the worker answers without reading its body."""

    label: str
    method: str
    target: str
    size: int
    status: int
    code: str
    chunked: bool = False
    expect_continue: bool = False


EARLY = [
    Early("413 declared", "POST", "/run/echo", TOO_LARGE, 413, "body_too_large"),
    Early("413 chunked", "POST", "/run/echo", TOO_LARGE, 413, "body_too_large", chunked=True),
    Early("405", "POST", "/status", WITHIN, 405, "method_not_allowed"),
    Early("400 bad name", "POST", "/run/.hidden", WITHIN, 400, "bad_function_name"),
    Early("404", "POST", "/nosuch", WITHIN, 404, "not_found"),
    Early("404 chunked", "POST", "/nosuch", WITHIN, 404, "not_found", chunked=True),
    Early("405 expect", "POST", "/status", WITHIN, 405, "method_not_allowed", expect_continue=True),
    Early(
        "413 expect", "POST", "/run/echo", TOO_LARGE, 413, "body_too_large", expect_continue=True
    ),
]


# ------------------------------------------------------------ a raw client
@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


@dataclass
class RawConnection:
    """One TCP connection speaking HTTP/1.1 by hand (responses carry Content-Length)."""

    stream: trio.SocketStream
    buffer: bytearray = field(default_factory=bytearray)

    async def read_response(self) -> RawResponse:
        """The next final response (1xx ones are skipped)."""
        while True:
            head = await self._read_until(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status >= 200:
                break
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            await self._receive()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return RawResponse(status, headers, body)

    async def read_eof(self) -> None:
        """Wait until the server closes the connection (nothing else may arrive)."""
        while await self._receive_some():
            pass
        assert not self.buffer, f"bytes after a Connection: close answer: {bytes(self.buffer)!r}"

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            await self._receive()
        head, _, rest = bytes(self.buffer).partition(marker)
        self.buffer[:] = rest
        return head

    async def _receive(self) -> None:
        if not await self._receive_some():
            raise ConnectionError(f"connection closed; unparsed: {bytes(self.buffer)[:200]!r}")

    async def _receive_some(self) -> bytes:
        try:
            data = await self.stream.receive_some(CHUNK)
        except trio.BrokenResourceError:  # a reset after the answer counts as closed
            data = b""
        self.buffer += data
        return data


def body_chunks(size: int) -> Iterator[bytes]:
    for start in range(0, size, CHUNK):
        yield b"x" * min(CHUNK, size - start)


def request_head(early: Early) -> bytes:
    lines = [f"{early.method} {early.target} HTTP/1.1", "Host: test"]
    lines.append("Transfer-Encoding: chunked" if early.chunked else f"Content-Length: {early.size}")
    if early.expect_continue:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send_body(stream: trio.SocketStream, early: Early) -> None:
    """The body (framed as ``early`` says); a server that closed mid-body ends it quietly."""
    try:
        for chunk in body_chunks(early.size):
            if early.chunked:
                chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
            await stream.send_all(chunk)
        if early.chunked:
            await stream.send_all(b"0\r\n\r\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def early_then_call(public: str, early: Early) -> None:
    """``early`` then a normal call on the same connection (or a fresh one after close)."""
    url = httpx.URL(public)
    conn = RawConnection(await trio.open_tcp_stream(url.host, url.port))
    try:
        with trio.fail_after(STEP_S):
            await conn.stream.send_all(request_head(early))
            if early.expect_continue:
                interim = await conn._read_until(b"\r\n\r\n")
                assert interim.startswith(b"HTTP/1.1 100"), interim
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_body, conn.stream, early)  # a client reading as it sends
                first = await conn.read_response()
        assert first.status == early.status, (early.label, first)
        assert json.loads(first.body)["error"] == early.code
        if first.closes:
            with trio.fail_after(STEP_S):
                await conn.read_eof()
            await conn.stream.aclose()
            conn = RawConnection(await trio.open_tcp_stream(url.host, url.port))
        payload = json.dumps({"after": early.label}).encode()
        with trio.fail_after(STEP_S):
            await conn.stream.send_all(
                b"POST /run/echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            second = await conn.read_response()
        assert second.status == 200, (early.label, first, second)
        assert json.loads(second.body) == {"after": early.label}
    finally:
        await conn.stream.aclose()


def httpx_early_then_call(public: str, early: Early) -> list[int]:
    """The same through one pooled httpx.Client connection (sync, run in a thread)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(STEP_S)
    with httpx.Client(base_url=public, limits=limits, timeout=timeout) as client:
        headers = {"Expect": "100-continue"} if early.expect_continue else {}
        content = body_chunks(early.size) if early.chunked else b"x" * early.size
        first = client.request(early.method, early.target, content=content, headers=headers)
        assert first.status_code == early.status, (early.label, first.text)
        assert first.json()["error"] == early.code
        statuses = [first.status_code]
        for n in range(2):  # the connection after the early answer, then once more
            second = client.post("/run/echo", json={"after": early.label, "n": n})
            assert second.status_code == 200, (early.label, second.text)
            assert second.json() == {"after": early.label, "n": n}
            statuses.append(second.status_code)
        return statuses


# ------------------------------------------------------------------- tests
@pytest.fixture
async def public(worker_dir: Path):
    write_fn(worker_dir / "registry", "echo", ECHO)
    async with serving(worker_dir, f"limits.max_body_bytes={LIMIT}") as served:
        yield served.public


async def test_raw_connection_survives_early_answers(public: str) -> None:
    for early in EARLY:
        await early_then_call(public, early)


async def test_httpx_client_survives_early_answers(public: str) -> None:
    for early in EARLY:
        with trio.fail_after(3 * STEP_S):
            statuses = await trio.to_thread.run_sync(httpx_early_then_call, public, early)
        assert statuses == [early.status, 200, 200]


async def test_reused_connection_after_small_early_answers(public: str) -> None:
    """Bodies within the limit are read and dropped: the same connection serves on."""
    url = httpx.URL(public)
    conn = RawConnection(await trio.open_tcp_stream(url.host, url.port))
    try:
        for early in EARLY:
            if early.size > LIMIT:
                continue
            with trio.fail_after(STEP_S):
                await conn.stream.send_all(request_head(early))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_body, conn.stream, early)
                    response = await conn.read_response()
            assert response.status == early.status and not response.closes, (early, response)
        with trio.fail_after(STEP_S):
            await conn.stream.send_all(b"GET /status HTTP/1.1\r\nHost: test\r\n\r\n")
            assert (await conn.read_response()).status == 200
    finally:
        await conn.stream.aclose()


async def test_a_body_that_stalls_is_not_waited_for_long(public: str) -> None:
    """A client that stops sending its body mid-way gets the early answer after the
    discard window, with ``Connection: close``, and the connection is closed."""
    from olactors.http._keepalive import DISCARD_WINDOW_S

    url = httpx.URL(public)
    conn = RawConnection(await trio.open_tcp_stream(url.host, url.port))
    try:
        started = trio.current_time()
        with trio.fail_after(STEP_S):
            await conn.stream.send_all(
                b"POST /status HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
            )
            response = await conn.read_response()
            waited = trio.current_time() - started
            await conn.read_eof()
        assert response.status == 405 and response.closes, response
        assert DISCARD_WINDOW_S - 0.1 <= waited < DISCARD_WINDOW_S + 2, waited
    finally:
        await conn.stream.aclose()
