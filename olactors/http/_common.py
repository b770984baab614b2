"""What the public and admin apps share: raw-path dispatch, JSON errors, request ids.

Both apps are :class:`RawRoutedApp` instances: quart-trio apps whose every
request goes to one ``route`` coroutine that decides from the *raw* request
path (``scope["raw_path"]``, never the percent-decoded one), so ``%2F`` in a
name can never become a path separator and ``..`` is never normalised away.

Every response carries ``X-Request-Id``: the client's own (e.g. set by a
load balancer) when it matches ``[A-Za-z0-9._-]{1,64}``, else a fresh uuid4
hex; for a call of a function the worker also refuses an id already used for
that function (:meth:`olactors.worker.Worker.claim_request_id`), since the id
is the key of the call's record.  Errors are JSON
``{"error": code, "message": ..., "request_id": ...}``; an
:class:`~olactors._errors.OlactorsError` keeps its ``code`` and ``status``, and
any other exception becomes ``500 internal`` (logged with its traceback in the
worker log, never sent to the client).  An error with a cause (the call
reached a sandbox) adds ``"cause": {"code", "detail"}`` to the body and the
header ``X-Olactors-Cause: <code>``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import trio
from quart import Response
from quart.globals import request_ctx
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .._access import Unauthorized
from .._balancer import REFUSED_HEADER, Overloaded
from .._causes import Cause
from .._errors import (
    BadFunctionName,
    BodyTooLarge,
    FunctionFailing,
    MethodNotAllowed,
    OlactorsError,
    QueueFull,
)
from .._names import validate_function_name
from ..records import new_request_id, valid_request_id
from ._keepalive import KeepAliveConnection

log = logging.getLogger("olactors.http")
access_log = logging.getLogger("olactors.access")

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_RAW = REQUEST_ID_HEADER.lower().encode()  # as ASGI servers name it
CAUSE_HEADER = "X-Olactors-Cause"

#: Headers that describe one connection, not the message (RFC 9110 7.6.1),
#: plus the framing and expectation headers the worker handles itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    }
)
#: Header prefix reserved for the worker's own signalling; never forwarded either way.
INTERNAL_PREFIX = "x-olactors-"


class NotFound(OlactorsError):
    """No endpoint at this path (the request never reached a function)."""

    code = "not_found"
    status = 404


class BadParameter(OlactorsError):
    """A query parameter or request body is malformed (e.g. ``?limit=`` that is
    not a number, a JSON body without a required field)."""

    code = "bad_parameter"
    status = 400


class RequestTimedOut(OlactorsError):
    """The client did not send its body in time."""

    code = "request_timeout"
    status = 408


@dataclass(slots=True)
class RequestInfo:
    """Per-request facts the access log needs, filled in while routing."""

    request_id: str
    method: str
    target: str  # the function name once known, else the raw path
    client_request_id: str | None = None  # the client's X-Request-Id, if it sent a valid one
    #: Logged at DEBUG, not INFO (a load balancer's health checks, every second).
    quiet: bool = False


Route = Callable[[TrioRequest, RequestInfo], Awaitable[Response]]


def json_response(obj: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
    body = json.dumps(obj, default=str).encode()
    return Response(
        body, status=status, headers=Headers(list(headers)), content_type="application/json"
    )


def error_body(code: str, message: str, request_id: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, "request_id": request_id, **extra}


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def cause_headers(cause: Cause | None) -> list[tuple[str, str]]:
    """``X-Olactors-Cause: <code>`` for an answer with a cause, else nothing."""
    return [] if cause is None else [(CAUSE_HEADER, cause.code.value)]


def error_response(exc: OlactorsError, request_id: str) -> Response:
    """The JSON answer for ``exc``, with Retry-After (429, 503 function_failing,
    503 overloaded), Allow (405), WWW-Authenticate (401), X-Olactors-Cause (an
    error with a cause) or X-Olactors-Refused (overloaded)."""
    headers = cause_headers(exc.cause)
    if isinstance(exc, QueueFull | FunctionFailing | Overloaded):
        headers.append(("Retry-After", retry_after(exc.retry_after_s)))
    if isinstance(exc, Overloaded):
        headers.append((REFUSED_HEADER, exc.reason.value))
    if isinstance(exc, MethodNotAllowed) and exc.allowed:
        headers.append(("Allow", ", ".join(exc.allowed)))
    if isinstance(exc, Unauthorized):
        headers.append(("WWW-Authenticate", "Bearer"))
    return json_response(
        error_body(exc.code, exc.message, request_id, **exc.details()), exc.status, headers
    )


def parse_name(raw: bytes) -> str:
    """A function name taken verbatim from a raw path segment (no percent-decoding).

    Any ``%`` is refused outright: an encoded name (``a%2Fb``, ``%2e%2e``) must
    never be decoded into something else.  The rest of the rules are
    :func:`olactors._names.validate_function_name`'s.
    """
    name = raw.decode("latin-1")
    if "%" in name:
        raise BadFunctionName(f"bad function name {name!r}: percent-encoding is not allowed")
    if not name:
        raise BadFunctionName("missing function name")
    validate_function_name(name)
    return name


def require_method(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise MethodNotAllowed(f"method {method} not allowed here", allowed=allowed)


async def read_body(request: TrioRequest, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes.

    A declared Content-Length is checked before anything is read; a chunked
    body is counted while it arrives (quart stops buffering past the limit).
    """
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body of {request.content_length} bytes exceeds {limit}")
    try:
        return await request.get_data(cache=False, as_text=False, parse_form_data=False)
    except RequestEntityTooLarge:
        raise BodyTooLarge(f"request body exceeds {limit} bytes") from None
    except HTTPException as exc:
        if exc.code == 408:
            raise RequestTimedOut("timed out reading the request body") from None
        raise


def _relayable(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    drop = set(HOP_BY_HOP)
    for name, value in pairs:
        if name == "connection":
            drop.update(token.strip().lower() for token in value.split(","))
    return [
        (name, value)
        for name, value in pairs
        if name not in drop and not name.startswith(INTERNAL_PREFIX)
    ]


def forwarded_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """The client's headers minus hop-by-hop ones (and those Connection names)
    and minus the worker's reserved ``x-olactors-*`` headers."""
    pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw_headers]
    return tuple(_relayable(pairs))


def without_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response headers safe to relay: no hop-by-hop, no framing, no ``x-olactors-*``."""
    return _relayable([(name.lower(), value) for name, value in headers])


def raw_header(raw_headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    """The first value of the (lower-case) header ``wanted`` among an ASGI
    scope's headers, or None: a plain scan, where werkzeug's ``Headers.get``
    raises and catches a KeyError for a header that is absent (~4 us)."""
    for name, value in raw_headers:
        if name == wanted:
            return value.decode("latin-1")
    return None


def header_value(headers: Iterable[tuple[str, str]], wanted: str) -> str | None:
    for name, value in headers:
        if name.lower() == wanted:
            return value
    return None


class RawRoutedApp(QuartTrio):
    """A quart-trio app that sends every request to ``route`` (no URL map).

    ``surface`` names the app in logs ("public" or "admin").  ``max_body_bytes``
    bounds request bodies (quart's MAX_CONTENT_LENGTH).  Cancellation (client
    gone, server shutdown deadline) propagates unchanged.  Each exchange runs
    in a :class:`~olactors.http._keepalive.KeepAliveConnection`, so an answer
    given before the body was read never hangs a keep-alive connection.
    """

    asgi_http_class = KeepAliveConnection

    def __init__(self, import_name: str, route: Route, *, surface: str, max_body_bytes: int):
        super().__init__(import_name)
        self.config["MAX_CONTENT_LENGTH"] = max_body_bytes
        self._route = route
        self._surface = surface

    def create_url_adapter(self, request: Any) -> Any:
        """None for a request: it is routed by its raw path, never by the URL
        map, and matching it there (werkzeug binds an adapter and raises
        NotFound for every path, the app having no rules) cost every request
        ~10-20 us for nothing."""
        return None if request is not None else super().create_url_adapter(request)

    async def dispatch_request(self, request_context: Any = None) -> Response:
        request = cast(TrioRequest, (request_context or request_ctx).request)  # TrioRequest
        raw_path = request.scope.get("raw_path") or request.path.encode()
        client_id = raw_header(request.scope["headers"], REQUEST_ID_RAW)
        if not valid_request_id(client_id):
            client_id = None
        info = RequestInfo(
            client_id or new_request_id(), request.method, raw_path.decode("latin-1"), client_id
        )
        started = trio.current_time()
        try:
            response = await self._route(request, info)
        except trio.Cancelled:
            self._log(info, "cancelled", started)
            raise
        except OlactorsError as exc:
            response = error_response(exc, info.request_id)
        except Exception:
            log.exception(
                "%s request %s %s %s failed",
                self._surface,
                info.request_id,
                info.method,
                info.target,
            )
            response = json_response(
                error_body("internal", "internal error (see the worker log)", info.request_id),
                500,
            )
        response.headers[REQUEST_ID_HEADER] = info.request_id
        self._log(info, str(response.status_code), started)
        return response

    def _log(self, info: RequestInfo, outcome: str, started: float) -> None:
        access_log.log(
            logging.DEBUG if info.quiet else logging.INFO,
            "%s %s %s %s %s %.1fms",
            self._surface,
            info.request_id,
            info.method,
            info.target,
            outcome,
            (trio.current_time() - started) * 1000,
        )


def status_code_for(worker_status: Mapping[str, Any]) -> int:
    """/status answers 503 while shutting down, so load balancers drain the worker."""
    return 200 if worker_status.get("status") == "ok" else 503
