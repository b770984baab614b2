"""WSGI and ASGI adapters for leaves (stdlib only).

Imported by ``server.py`` only for leaves that serve a WSGI or ASGI app (entry
selection and JSON handlers are in ``server.load_entry``).  Each adapter turns
a request (``method``, ``target``, ``headers`` with lower-case names as latin-1
strings, ``body``) into ``(status, reason, headers, body)``, where a None
reason means the standard phrase.  Exceptions out of the app propagate to the
server, which answers a 500 ``handler_exception``; ``BadResult`` (the app broke
its protocol: bad status, headers or body) is answered as ``bad_result``.

The worker sends ``x-olactors-script-name: /run/<name>`` (raw, still
percent-encoded) with each request; it is removed from the headers the app
sees (the last one wins) and becomes WSGI's ``SCRIPT_NAME`` / ASGI's
``root_path``.  Following the ASGI spec, ASGI's ``path`` and ``raw_path`` are
the full path *including* ``root_path``; WSGI's ``PATH_INFO`` excludes
``SCRIPT_NAME``.  Paths are percent-decoded: latin-1 for WSGI (PEP 3333),
UTF-8 for ASGI.

An app may not set ``x-olactors-error`` (the marker of the runtime's own
errors) nor the framing headers ``content-length``, ``transfer-encoding``,
``connection`` and ``keep-alive``: they are dropped from its response, which
the server frames with its own Content-Length.

WSGI: a PEP 3333 environ; ``start_response`` accepts ``exc_info`` (the status
and headers may be replaced until a non-empty body chunk exists, as the
headers are not "sent" before that), ``write()`` and iterables with
``close()`` (always called).  The app's own reason phrase is kept.

ASGI: an HTTP scope (ASGI 3.0); ``receive()`` returns the whole body as one
``http.request``, then blocks until the response is complete and returns
``http.disconnect`` (so a disconnect listener never cuts a response short).
Apps run on one persistent asyncio event loop, created on first use; the
response is sent when the app returns (so after any background work it does in
the same call).  There is no lifespan protocol: no ``lifespan.startup`` /
``lifespan.shutdown`` events are ever sent, so apps must not rely on them.
An exception after the response is complete is logged to stderr and the
response is served.
"""

from __future__ import annotations

import io
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio  # imported on first use: most functions are not ASGI apps

SCRIPT_NAME_HEADER = "x-olactors-script-name"
#: The statuses of a final response: 1xx are interim (101 would switch the
#: worker's own connection to the client), and nothing is defined beyond 599.
MIN_STATUS, MAX_STATUS = 200, 599
#: Headers an app may not set: the runtime's error marker and the framing ones.
_DROPPED_RESPONSE_HEADERS = frozenset(
    ("x-olactors-error", "content-length", "transfer-encoding", "connection", "keep-alive")
)
_HEX = b"0123456789abcdefABCDEF"
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class BadResult(Exception):
    """The app broke its protocol (bad status, headers or body); served as ``bad_result``."""


def _app_headers(pairs: list) -> list:
    return [(n, v) for n, v in pairs if n.lower() not in _DROPPED_RESPONSE_HEADERS]


def _check_header(name: str, value: str) -> None:
    if not name or not _TOKEN_CHARS.issuperset(name):
        raise BadResult(f"invalid response header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise BadResult(f"invalid value for response header {name!r}: {value!r}")


# ---------------------------------------------------------------- requests
def _unquote(raw: bytes) -> bytes:
    """Percent-decode ``raw`` (invalid escapes are kept as they are)."""
    if b"%" not in raw:
        return raw
    parts = raw.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            out.append(int(part[:2], 16))
            out += part[2:]
        else:
            out += b"%"
            out += part
    return bytes(out)


def _split_request(request) -> tuple:
    """(script name, raw path, query, headers without the script-name header)."""
    script_name = ""
    headers = []
    for name, value in request.headers:
        if name == SCRIPT_NAME_HEADER:
            script_name = value
        else:
            headers.append((name, value))
    path, _, query = request.target.partition("?")
    return script_name, path, query, headers


# -------------------------------------------------------------------- WSGI
def wsgi_environ(request) -> dict:
    script_name, path, query, headers = _split_request(request)
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": _unquote(script_name.encode("latin-1")).decode("latin-1"),
        "PATH_INFO": _unquote(path.encode("latin-1")).decode("latin-1"),
        "QUERY_STRING": query,
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": str(len(request.body)),
        "SERVER_NAME": "sandbox",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name != "content-length":
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _wsgi_status(status: object) -> tuple:
    if not isinstance(status, str):
        raise BadResult(f"the WSGI status must be a str, not {type(status).__name__}")
    code, _, phrase = status.partition(" ")
    if len(code) != 3 or not code.isdigit() or not MIN_STATUS <= int(code) <= MAX_STATUS:
        raise BadResult(f"invalid WSGI status {status!r} (a response's status is 200-599)")
    phrase = phrase.strip()
    if not phrase.isprintable():
        raise BadResult(f"invalid WSGI status {status!r}")
    try:
        phrase.encode("latin-1")
    except UnicodeError:
        raise BadResult(f"the WSGI status is not latin-1: {status!r}") from None
    return int(code), phrase or None


def _wsgi_headers(headers: object) -> list:
    if not isinstance(headers, (list, tuple)):
        raise BadResult(f"WSGI response headers must be a list, not {type(headers).__name__}")
    checked = []
    for pair in headers:
        if not (
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            raise BadResult(f"a WSGI response header must be a (str, str) tuple, not {pair!r}")
        name, value = pair
        _check_header(name, value)
        try:
            value.encode("latin-1")
        except UnicodeError:
            raise BadResult(f"response header {name!r} is not latin-1: {value!r}") from None
        checked.append((name, value))
    return checked


def _bytes_chunk(data: object) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadResult(f"WSGI body chunks must be bytes, not {type(data).__name__}")
    return bytes(data)


def run_wsgi(app, request) -> tuple:
    """Call the WSGI ``app`` for ``request``; the collected response."""
    state: dict = {"status": None, "headers": None, "sent": False}
    chunks: list = []

    def write(data) -> None:
        if state["status"] is None:
            raise BadResult("write() called before start_response()")
        data = _bytes_chunk(data)
        if data:
            state["sent"] = True
            chunks.append(data)

    def start_response(status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if state["sent"]:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif state["status"] is not None:
            raise BadResult("start_response() called twice without exc_info")
        state["status"] = _wsgi_status(status)
        state["headers"] = _wsgi_headers(headers)
        return write

    result = app(wsgi_environ(request), start_response)
    try:
        for data in result:
            data = _bytes_chunk(data)
            if data:
                if state["status"] is None:
                    raise BadResult("the WSGI app produced a body before start_response()")
                state["sent"] = True
                chunks.append(data)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if state["status"] is None:
        raise BadResult("the WSGI app returned without calling start_response()")
    status, phrase = state["status"]
    return status, phrase, _app_headers(state["headers"]), b"".join(chunks)


# -------------------------------------------------------------------- ASGI
def asgi_scope(request) -> dict:
    script_name, path, query, headers = _split_request(request)
    raw_path = (script_name + path).encode("latin-1")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": _unquote(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "query_string": query.encode("latin-1"),
        "root_path": _unquote(script_name.encode("latin-1")).decode("utf-8", "replace"),
        "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
        "server": ("sandbox", 80),
        "client": None,
    }


class AsgiRunner:
    """Calls an ASGI app on one persistent event loop, created on first use."""

    def __init__(self, app) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, request) -> tuple:
        """The collected response; raises what the app raised before completing it."""
        if self.loop is None:
            import asyncio

            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        error, response = self.loop.run_until_complete(self._run(request))
        if error is not None:
            # Raised here, outside the loop: even SystemExit or KeyboardInterrupt
            # from the app leave the loop usable for the next request.
            raise error
        if response["status"] is None:
            raise BadResult("the ASGI app returned without starting a response")
        if not response["complete"]:
            raise BadResult("the ASGI app returned without completing its response")
        return response["status"], None, response["headers"], b"".join(response["body"])

    async def _run(self, request) -> tuple:
        """``(exception or None, response)``: every exception is caught in here."""
        import asyncio

        scope = asgi_scope(request)
        complete = asyncio.Event()
        pending = [{"type": "http.request", "body": request.body, "more_body": False}]
        response: dict = {"status": None, "headers": None, "body": [], "complete": False}

        async def receive() -> dict:
            if pending:
                return pending.pop()
            await complete.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            kind = message.get("type")
            if response["complete"]:
                raise BadResult(f"ASGI message {kind!r} sent after the response completed")
            if kind == "http.response.start":
                if response["status"] is not None:
                    raise BadResult("http.response.start sent twice")
                response["headers"] = self._headers(message.get("headers", ()))
                status = message.get("status")
                if type(status) is not int or not MIN_STATUS <= status <= MAX_STATUS:
                    raise BadResult(f"invalid ASGI status {status!r} (200-599)")
                response["status"] = status
            elif kind == "http.response.body":
                if response["status"] is None:
                    raise BadResult("http.response.body sent before http.response.start")
                body = message.get("body", b"")
                if not isinstance(body, (bytes, bytearray, memoryview)):
                    raise BadResult(f"ASGI body must be bytes, not {type(body).__name__}")
                response["body"].append(bytes(body))
                if not message.get("more_body", False):
                    response["complete"] = True
                    complete.set()
            else:
                raise BadResult(f"unexpected ASGI message type {kind!r}")

        try:
            await self.app(scope, receive, send)
        except BaseException as exc:  # noqa: BLE001 - the sandbox survives app errors
            if not response["complete"]:
                return exc, response
            # The response was complete (e.g. a background task failed after it):
            # serve it, and log the error as a server would.
            import traceback

            traceback.print_exc()
        return None, response

    @staticmethod
    def _headers(pairs) -> list:
        headers = []
        for pair in pairs:
            try:
                name, value = pair
                name, value = bytes(name).decode("latin-1"), bytes(value).decode("latin-1")
            except (TypeError, ValueError):
                raise BadResult(f"an ASGI header must be a pair of bytes, not {pair!r}") from None
            _check_header(name, value)
            headers.append((name, value))
        return _app_headers(headers)
