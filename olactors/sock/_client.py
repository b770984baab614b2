"""A minimal HTTP/1.1 client for a leaf's unix socket (one keep-alive connection).

Both ends are ours (see runtime/server.py), so this speaks exactly the subset
the runtime serves: Content-Length bodies, no chunking, keep-alive.  But the
other end runs function code, which may replace the runtime's socket with its
own server: every answer is read within :class:`ResponseLimits` as it arrives
(a head larger than its limit, too many header lines, a Content-Length beyond
the body limit or any Transfer-Encoding is :class:`BadResponse` before more
is read), so a sandbox can never make the worker buffer more than the limits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import trio

from .._config import Section
from ._api import Invocation, InvocationResult

READ_SIZE = 65536
MIN_STATUS, MAX_STATUS = 200, 599
PATH_SAFE = "/:@!$&'()*+,;=-._~"
QUERY_SAFE = PATH_SAFE + "?%"


class ProtocolError(Exception):
    """The sandbox's answer was not valid HTTP or the connection closed early."""


class BadResponse(ProtocolError):
    """The sandbox answered, but malformed (bad status line or length) or
    oversized: its own fault (cause ``bad_response``), not a death."""


@dataclass(frozen=True, slots=True)
class ResponseLimits:
    """What a sandbox may send back (``limits.max_response_*``)."""

    max_bytes: int = 6 << 20  # the body
    max_headers: int = 100  # header lines
    max_header_bytes: int = 65536  # status line and headers, CRLFs included

    @classmethod
    def of(cls, limits: Section) -> ResponseLimits:
        """From the worker config's ``limits`` section."""
        return cls(
            int(limits.max_response_bytes),
            int(limits.max_response_headers),
            int(limits.max_response_header_bytes),
        )


class LeafClient:
    def __init__(
        self,
        connect: Callable[[], Awaitable[trio.SocketStream]],
        limits: ResponseLimits = ResponseLimits(),
    ) -> None:
        self._connect = connect
        self._limits = limits
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

    async def _fill(self, most: int) -> None:
        """Read at most ``most`` more bytes (at least one) into the buffer."""
        assert self._stream is not None
        chunk = await self._stream.receive_some(max(1, min(READ_SIZE, most)))
        if not chunk:
            raise ProtocolError("sandbox closed the connection before answering")
        self._buf += chunk

    async def _read_head(self) -> int:
        """Where the head in the buffer ends (its CRLFCRLF), read within the limit."""
        limit = self._limits.max_header_bytes
        searched = 0
        while (end := self._buf.find(b"\r\n\r\n", searched)) < 0:
            if len(self._buf) >= limit:
                raise BadResponse(
                    f"response head larger than {limit} bytes (limits.max_response_header_bytes)"
                )
            searched = max(0, len(self._buf) - 3)
            await self._fill(limit - len(self._buf))
        if end + 4 > limit:
            raise BadResponse(
                f"response head larger than {limit} bytes (limits.max_response_header_bytes)"
            )
        return end

    async def _read_response(self) -> InvocationResult:
        end = await self._read_head()
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        # The function's header lines: the Content-Length the runtime frames
        # every answer with is the worker's to consume, never relayed, so a
        # function may send exactly max_response_headers of its own.  (The
        # head's byte limit already bounds how many lines there can be.)
        counted = sum(
            1 for line in lines[1:] if line.partition(":")[0].strip().lower() != "content-length"
        )
        if counted > self._limits.max_headers:
            raise BadResponse(
                f"{counted} response header lines, more than "
                f"{self._limits.max_headers} (limits.max_response_headers)"
            )
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise BadResponse(f"bad status line {lines[0][:200]!r}") from None
        if not MIN_STATUS <= status <= MAX_STATUS:
            # 1xx are interim (a 101 would switch the worker's own connection
            # to its client); nothing is defined beyond 599.
            raise BadResponse(f"status {status} is not a response's (200-599)")
        headers = []
        length: int | None = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                try:
                    given = int(value)
                except ValueError:
                    raise BadResponse(f"bad content-length {value[:50]!r}") from None
                if given < 0 or (length is not None and given != length):
                    raise BadResponse(f"bad content-length {value[:50]!r}")
                length = given
            elif name == "transfer-encoding":
                raise BadResponse("a transfer-encoding in a sandbox's response")
            else:
                headers.append((name, value))
        length = length or 0
        if length > self._limits.max_bytes:
            raise BadResponse(
                f"response body of {length} bytes, more than {self._limits.max_bytes} "
                "(limits.max_response_bytes)"
            )
        while len(self._buf) < length:
            await self._fill(length - len(self._buf))
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return InvocationResult(status, tuple(headers), body)

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()
