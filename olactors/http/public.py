"""The public HTTP app (TCP): ``ANY /run/<name>[/<path>][?query]``, ``GET /status``
and ``GET /healthz``.

Nothing else is served here: every other path answers ``404 not_found``
(the admin API lives on the worker's UNIX socket only).

``/healthz`` is the load balancer's check: ``200 {"status": "ok"}`` while the
worker serves, ``503`` with ``draining`` or ``shutting_down`` otherwise.

``/run/<name>``: the name is the raw path segment after ``/run/`` up to the
next ``/``, checked without percent-decoding (see :func:`parse_name`); the
remainder, percent-decoded, is the path the function sees (``/`` if empty).
The body is capped at ``limits.max_body_bytes`` (413 ``body_too_large``).
The function's response is relayed as is (status, headers minus hop-by-hop
ones, body), except when the runtime marks it with ``x-olactors-error``
(handler exception, import failure, bad JSON, bad result): that becomes the
worker's JSON error format with the runtime's status, and the marker header
is not sent to the client.

A private function (ol.yaml ``access: private``) is admitted by the worker
before the call is queued (:meth:`olactors.worker.Worker.invoke`): the
``Authorization: Bearer <token>`` header is checked there (401
``unauthorized`` with ``WWW-Authenticate: Bearer`` without one, 403
``forbidden`` for a token that does not grant the call) and not forwarded.

A call marked by a load balancer (``X-Olactors-Balancer``) is answered by the
retry contract of :mod:`olactors._balancer`: a refusal before anything ran is
``503 overloaded`` (retried on another worker), and any other 503 travels as
500 with ``X-Olactors-Status: 503`` (never retried; the balancer restores it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from quart import Response
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest

from .._access import HttpCaller
from .._balancer import BALANCER_HEADER, Overloaded, as_overloaded, held
from .._errors import OlactorsError
from ..sock import Invocation, InvocationResult
from ..sock._results import runtime_error_cause
from ._common import (
    INTERNAL_PREFIX,
    NotFound,
    RawRoutedApp,
    RequestInfo,
    cause_headers,
    error_body,
    error_response,
    forwarded_headers,
    header_value,
    json_response,
    parse_name,
    raw_header,
    read_body,
    require_method,
    status_code_for,
    without_hop_by_hop,
)

if TYPE_CHECKING:
    from ..worker import Worker

RUN_PREFIX = b"/run/"
BALANCER_RAW = BALANCER_HEADER.lower().encode()
ERROR_HEADER = INTERNAL_PREFIX + "error"
#: Fields of a runtime error body passed on to the client besides ``message``.
ERROR_DETAILS = ("type", "traceback")

__all__ = ["create_public_app", "result_response", "runtime_error_cause", "split_run_path"]


def split_run_path(raw_path: bytes) -> tuple[str, str]:
    """``/run/<name>[/<rest>]`` (raw) -> (name, percent-decoded ``/<rest>`` or ``/``).

    The rest is decoded as UTF-8; bytes that are not valid UTF-8 become lone
    surrogates (``surrogateescape``), so re-quoting with the same error
    handler gives back exactly the bytes the client sent.
    """
    name_raw, slash, rest = raw_path[len(RUN_PREFIX) :].partition(b"/")
    name = parse_name(name_raw)
    if not slash:
        return name, "/"
    text = rest.decode("utf-8", "surrogateescape")
    return name, "/" + unquote(text, errors="surrogateescape")


def result_response(result: InvocationResult, request_id: str) -> Response:
    """The client's view of a sandbox's answer (see the module docstring).
    A runtime-marked failure of the function carries its cause in the body
    (``runtime_error_cause``: handler_exception, import_error) and its code
    in ``X-Olactors-Cause``."""
    code = header_value(result.headers, ERROR_HEADER)
    if code is None:
        response = Response(result.body, status=result.status)
        response.headers.pop("Content-Type", None)  # quart's default; only the function's counts
        for name, value in without_hop_by_hop(result.headers):
            response.headers.add(name, value)
        return response
    details: dict[str, Any] = {}
    try:
        parsed = json.loads(result.body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        message = str(parsed.get("message", ""))
        details = {key: parsed[key] for key in ERROR_DETAILS if key in parsed}
    else:
        message = result.body[:1000].decode("utf-8", "replace")
    cause = runtime_error_cause(result)
    if cause is not None:
        details["cause"] = cause.as_json()
    return json_response(
        error_body(code, message, request_id, **details), result.status, cause_headers(cause)
    )


def create_public_app(worker: Worker) -> QuartTrio:
    """The public app over ``worker`` (see the module docstring)."""
    limit = worker.config.limits.max_body_bytes

    async def route(request: TrioRequest, info: RequestInfo) -> Response:
        raw_path: bytes = request.scope.get("raw_path") or request.path.encode()
        if raw_path == b"/status":
            require_method(request.method, ("GET", "HEAD"))
            status = worker.status()
            return json_response(status, status_code_for(status))
        if raw_path == b"/healthz":
            require_method(request.method, ("GET", "HEAD"))
            info.quiet = True
            state = {"status": worker.state()}
            return json_response(state, status_code_for(state))
        if not raw_path.startswith(RUN_PREFIX):
            raise NotFound(f"no endpoint at {raw_path.decode('latin-1')}")
        name, path = split_run_path(raw_path)
        info.target = name
        # The id made for this request stands when the client sent none: it
        # is as fresh as another would be (one uuid per call, not two).
        info.request_id = worker.claim_request_id(name, info.client_request_id or info.request_id)
        body = await read_body(request, limit)
        invocation = Invocation(
            method=request.method,
            path=path,
            query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=forwarded_headers(request.scope["headers"]),
            body=body,
        )
        # Looked up in the raw headers: werkzeug's lookup of a header that is
        # absent (the usual case for both) raises and catches a KeyError.
        raw_headers = request.scope["headers"]
        caller = HttpCaller(raw_header(raw_headers, b"authorization"))
        if raw_header(raw_headers, BALANCER_RAW) is None:
            result = await worker.invoke(name, invocation, info.request_id, caller)
            return result_response(result, info.request_id)
        try:
            result = await worker.invoke(name, invocation, info.request_id, caller)
        except OlactorsError as exc:
            answer = as_overloaded(exc)
            response = error_response(answer, info.request_id)
            if isinstance(answer, Overloaded):
                return response  # the one 503 the balancer retries
        else:
            response = result_response(result, info.request_id)
        sent_status, extra = held(response.status_code)
        response.status_code = sent_status
        for header, value in extra:
            response.headers[header] = value
        return response

    return RawRoutedApp(__name__, route, surface="public", max_body_bytes=limit)
