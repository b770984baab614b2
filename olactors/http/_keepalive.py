"""One HTTP exchange on a keep-alive connection, answered early or not, never left hanging.

An app may answer before it has read the request body (413, 405, 400, 404).
Under quart-trio and hypercorn's h11 protocol that used to hang the
connection: hypercorn, seeing the answer complete while the client was still
sending, closed the connection from inside the app's last ``send`` after
handing the app ``http.disconnect``; quart-trio's message reader took that
disconnect as "client gone" and cancelled the app's task group, which
cancelled hypercorn's close half way (at ``send_eof``'s checkpoint).  The
socket stayed open, nobody read the app's receive queue any more, and
hypercorn's reader blocked forever putting body chunks into it: the next
request on the connection was never read, and shutdown waited for that task
until its deadline.

:class:`KeepAliveConnection` is the app's ASGI HTTP connection instead:

* It counts the body as it arrives.  Before the answer goes out, the rest of
  an unread body is read and dropped (quart keeps at most the app's
  ``MAX_CONTENT_LENGTH`` of it), within a bound: at most that many bytes in
  all and :data:`DISCARD_WINDOW_S` of waiting.  A body that ends within the
  bound leaves the connection reusable (h11 sees both sides done).
* Otherwise (a declared length over the bound, a chunked body that grew past
  it, or a client too slow) the answer carries ``Connection: close`` and
  hypercorn closes the connection after it; the client reconnects.
* Once the answer is being sent, an ``http.disconnect`` no longer cancels
  the exchange: sending ends by itself (hypercorn shields its writes and
  turns a dead peer into a closed stream), and hypercorn's own bookkeeping
  after the last byte (close, or recycle and arm the idle timer) must run to
  the end.  Before that, a disconnect cancels the app as before.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio
from quart import Response
from quart_trio.asgi import TrioASGIHTTPConnection

if TYPE_CHECKING:
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
    from quart.wrappers import Request

#: How long an early answer waits for the rest of a body it will not use, at most.
DISCARD_WINDOW_S = 2.0


class BodyProgress:
    """How much of one request body has arrived, and whether all of it has."""

    __slots__ = ("declared", "received", "complete", "_arrived")

    def __init__(self, declared: int | None) -> None:
        self.declared = declared  # Content-Length, None when chunked
        self.received = 0
        self.complete = False
        #: Set on the next chunk; made only while an early answer waits for one
        #: (almost every body is complete before its answer: no event at all).
        self._arrived: trio.Event | None = None

    def add(self, chunk: bytes, more: bool) -> None:
        self.received += len(chunk)
        if not more:
            self.complete = True
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    async def finished_within(self, budget: float) -> bool:
        """Wait (at most :data:`DISCARD_WINDOW_S`) for the body to end within ``budget``
        bytes; True if it did, False if the connection cannot be kept for it."""
        if self.complete:
            return True
        if self.declared is not None and self.declared > budget:
            return False
        with trio.move_on_after(DISCARD_WINDOW_S):
            while not self.complete:
                if self.received > budget:
                    return False
                self._arrived = trio.Event()
                await self._arrived.wait()
        return self.complete


class KeepAliveConnection(TrioASGIHTTPConnection):
    """quart-trio's HTTP connection, minus the keep-alive hang (see the module docstring)."""

    def __init__(self, app: Any, scope: Any) -> None:
        super().__init__(app, scope)
        self.body: BodyProgress | None = None
        self.responding = False

    def progress(self, request: Request) -> BodyProgress:
        """The body's progress (made by whichever of the two tasks runs first)."""
        if self.body is None:
            self.body = BodyProgress(request.content_length)
        return self.body

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        body = self.progress(request)
        while True:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                request.body.append(chunk)
                if not more:
                    request.body.set_complete()
                body.add(chunk, more)
            elif message["type"] == "http.disconnect":
                break
        if not self.responding:
            nursery.cancel_scope.cancel()

    async def handle_request(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, send: ASGISendCallable
    ) -> None:
        response = await self.app.handle_request(request)
        budget = self.app.config["MAX_CONTENT_LENGTH"]
        if not await self.progress(request).finished_within(budget or math.inf):
            response.headers["Connection"] = "close"
        timeout = self.app.config["RESPONSE_TIMEOUT"]
        if isinstance(response, Response) and response.timeout is not Ellipsis:
            timeout = response.timeout
        self.responding = True
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await self._send_response(send, response)
        nursery.cancel_scope.cancel()
