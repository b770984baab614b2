"""A minimal HTTP/1.1 client for a leaf's unix socket (one keep-alive connection).

Both ends are ours (see runtime/server.py), so this speaks exactly the subset
the runtime serves: Content-Length bodies, no chunking, keep-alive.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

import trio

from ._api import Invocation, InvocationResult

MAX_RESPONSE_HEADER = 65536
PATH_SAFE = "/:@!$&'()*+,;=-._~"
QUERY_SAFE = PATH_SAFE + "?%"


class ProtocolError(Exception):
    """The sandbox's answer was not valid HTTP or the connection closed early."""


class BadResponse(ProtocolError):
    """The sandbox answered, but malformed (bad status line or length) or
    oversized: its own fault (cause ``bad_response``), not a death."""


class LeafClient:
    def __init__(self, connect: Callable[[], Awaitable[trio.SocketStream]]) -> None:
        self._connect = connect
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()

    async def request(self, inv: Invocation) -> InvocationResult:
        if self._stream is None:
            self._stream = await self._connect()
            self._buf.clear()
        # The path arrives decoded; the runtime decodes the target again, so
        # quote it back (its own bytes via surrogateescape): a "%20", "%2F",
        # non-ASCII or CR/LF in a client's path can never change the request.
        path = quote(inv.path or "/", safe=PATH_SAFE, errors="surrogateescape")
        query = quote(inv.query, safe=QUERY_SAFE, errors="surrogateescape")
        target = path + (f"?{query}" if query else "")
        head = [f"{inv.method} {target} HTTP/1.1\r\nhost: sandbox\r\n"]
        for name, value in inv.headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "host"):
                head.append(f"{name}: {value}\r\n")
        head.append(f"content-length: {len(inv.body)}\r\n\r\n")
        await self._stream.send_all("".join(head).encode("latin-1") + inv.body)
        return await self._read_response()

    async def _fill(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise ProtocolError("sandbox closed the connection before answering")
        self._buf += chunk

    async def _read_response(self) -> InvocationResult:
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_RESPONSE_HEADER:
                raise BadResponse("response header too large")
            await self._fill()
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise BadResponse(f"bad status line {lines[0][:200]!r}") from None
        headers = []
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise BadResponse(f"bad content-length {value[:50]!r}") from None
                if length < 0:
                    raise BadResponse(f"bad content-length {length}")
            else:
                headers.append((name, value))
        while len(self._buf) < length:
            await self._fill()
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return InvocationResult(status, tuple(headers), body)

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()
