"""The admin HTTP app, served only on ``<worker>/admin.sock`` (mode 0600).

Routes (all answers JSON, with ``X-Request-Id``; errors in the public app's
format), listed in :data:`ENDPOINTS`, which the dispatcher routes by and
``tests/test_openapi.py`` compares with ``openapi/admin.json``:

* ``GET /status``, ``GET /stats``, ``GET /functions``, ``GET /sandboxes``
* ``POST /drain`` / ``DELETE /drain``: start / stop draining (calls are still
  served; the public ``/healthz`` and ``/status`` answer 503 so a load
  balancer sends no new ones); answers ``{"status": ...}``
* ``GET /sandboxes/<id>/log``: what a live sandbox wrote outside any call
  (import time, threads between calls), its latest bytes, as ``text/plain``;
  ``404 sandbox_not_found`` for an id no live sandbox has
* ``GET /packages``: installed distributions (size, modules, holds), the disk
  budget, and the packages found unfit for zygotes (with the reason)
* ``GET /registry``: the functions in the local registry
* ``POST /registry/<name>``: body is a ``.tar.gz`` of the function dir; 201
  ``{"name", "installed": true}``; a bad archive is ``400 bad_function`` and
  leaves the previous version in place
* ``DELETE /registry/<name>``: 200 ``{"name", "deleted": true}``, 404 if absent
* ``GET /openapi.json``: this surface's OpenAPI 3.1 document;
  ``GET /openapi/public.json``: the public surface's (see :mod:`.openapi`)
* ``GET /debug/<name>[?limit=N][&errors=1]``: ``{"function", "records"}``,
  the function's call records newest first (default 50, at most 1000),
  without their output; only failed calls with ``errors=1``
* ``GET /debug/<name>/<request_id>``: the record (see
  :class:`~olactors._records.CallRecord`); ``.../stdout`` and ``.../stderr``
  its output and ``.../error`` the plain-language explanation
  (:func:`~olactors._records.explain`), as ``text/plain``.  An unknown
  function is ``404 function_not_found``, an unknown id ``404 record_not_found``
* ``/tokens``, ``/tokens/<id>``, ``/owners``, ``/owners/<name>``: invoke
  tokens and function owners (see :mod:`._admin_access`)

Secrets (values never appear in an answer; see :mod:`olactors.secrets`):

* ``GET /secrets``: ``{"secrets": [{"name", "version", "created_at",
  "updated_at", "grants"}, ...]}``
* ``PUT /secrets/<name>``: the body is the value (at most 64 KiB, else ``413
  secret_too_large``); 201 when new, 200 when it replaced a value (a new
  version), with the description and ``created``
* ``DELETE /secrets/<name>``: ``{"name", "deleted": true}``, ``404
  secret_not_found``
* ``PUT`` / ``DELETE /secrets/<name>/grants/<function>``: grant or revoke
  (idempotent); the description with ``changed``.  A name outside
  ``[A-Za-z0-9_.-]{1,128}`` is ``400 bad_secret_name``

Registry writes answer ``409 registry_read_only`` when the worker reads its
functions from an http(s) registry.  Bodies are capped at
``registry.max_code_mb`` MiB.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from quart import Response
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest

from .._errors import BodyTooLarge, FunctionNotFound, OlactorsError, SecretTooLarge
from .._records import CallRecord, explain
from .._secrets import MAX_SECRET_BYTES, validate_secret_name
from ..records import MAX_LIST, RecordNotFound, valid_request_id
from ..state import StateUnavailable
from ._admin_access import ACCESS_ROUTES, access_handlers
from ._common import (
    BadParameter,
    NotFound,
    RawRoutedApp,
    RequestInfo,
    json_response,
    parse_name,
    read_body,
    require_method,
    status_code_for,
)
from .openapi import SURFACES, Surface, spec_bytes

if TYPE_CHECKING:
    from ..registry import LocalRegistry
    from ..secrets import SecretStore
    from ..worker import Worker


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One admin path: its OpenAPI path template and the methods it accepts.

    A template whose only parameter ends it (``/registry/{name}``) matches
    every raw path starting with what precedes it; the rest is the function
    name (checked by :func:`parse_name`).  A longer template matches segment
    by segment: each ``{param}`` one raw segment, each other segment itself.
    """

    template: str
    methods: tuple[str, ...]

    def match(self, raw_path: bytes) -> tuple[bytes, ...] | None:
        """The raw parameter values (``()`` for a plain path) if ``raw_path`` is this one's."""
        prefix, brace, tail = self.template.partition("{")
        if not brace:
            return () if raw_path == prefix.encode() else None
        if not raw_path.startswith(prefix.encode()):
            return None
        rest = raw_path[len(prefix) :]
        parts = ("{" + tail).split("/")
        if len(parts) == 1:
            return (rest,)
        raw_parts = rest.split(b"/")
        if len(raw_parts) != len(parts):
            return None
        values = []
        for part, raw in zip(parts, raw_parts, strict=True):
            if part.startswith("{"):
                values.append(raw)
            elif raw != part.encode():
                return None
        return tuple(values)


ENDPOINTS = (
    Endpoint("/status", ("GET",)),
    Endpoint("/drain", ("POST", "DELETE")),
    Endpoint("/stats", ("GET",)),
    Endpoint("/functions", ("GET",)),
    Endpoint("/sandboxes", ("GET",)),
    Endpoint("/sandboxes/{id}/log", ("GET",)),
    Endpoint("/packages", ("GET",)),
    Endpoint("/registry", ("GET",)),
    Endpoint("/registry/{name}", ("POST", "DELETE")),
    Endpoint("/secrets", ("GET",)),
    # The longer /secrets path first: /secrets/{name} takes any rest.
    Endpoint("/secrets/{name}/grants/{function}", ("PUT", "DELETE")),
    Endpoint("/secrets/{name}", ("PUT", "DELETE")),
    Endpoint("/openapi.json", ("GET",)),
    Endpoint("/openapi/public.json", ("GET",)),
    # The longer /debug paths first: /debug/{name} takes any rest.
    Endpoint("/debug/{name}/{request_id}/stdout", ("GET",)),
    Endpoint("/debug/{name}/{request_id}/stderr", ("GET",)),
    Endpoint("/debug/{name}/{request_id}/error", ("GET",)),
    Endpoint("/debug/{name}/{request_id}", ("GET",)),
    Endpoint("/debug/{name}", ("GET",)),
    *(Endpoint(template, methods) for template, methods in ACCESS_ROUTES),
)
#: Records one ``GET /debug/<name>`` returns unless ``?limit=`` says otherwise.
DEFAULT_LIMIT = 50


Args = tuple[bytes, ...]  # the raw path parameters, in template order
Handler = Callable[[TrioRequest, RequestInfo, tuple[bytes, ...]], Awaitable[Response]]


class RegistryReadOnly(OlactorsError):
    """The worker's registry is remote (http/https): upload and delete there."""

    code = "registry_read_only"
    status = 409


def _limit(request: TrioRequest) -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise BadParameter(f"limit must be a whole number, not {raw!r}") from None
    if not 1 <= limit <= MAX_LIST:
        raise BadParameter(f"limit must be between 1 and {MAX_LIST}, not {limit}")
    return limit


def _request_id(raw: bytes) -> str:
    """A request id from a raw path segment; one that cannot be an id is not found."""
    request_id = raw.decode("latin-1")
    if not valid_request_id(request_id):
        raise RecordNotFound(f"no record of request {request_id!r} (not a request id)")
    return request_id


def _secret_name(raw: bytes) -> str:
    """A secret name from a raw path segment (no percent-decoding: ``%`` is
    not a name character, so an encoded name is refused)."""
    if b"/" in raw:
        raise NotFound(f"no endpoint at /secrets/{raw.decode('latin-1')}")
    return validate_secret_name(raw.decode("latin-1"))


def _text(body: str) -> Response:
    return Response(body.encode(), content_type="text/plain; charset=utf-8")


def create_admin_app(worker: Worker) -> QuartTrio:
    """The admin app over ``worker`` (see the module docstring)."""
    limit = worker.config.registry.max_code_mb << 20

    def local_registry() -> LocalRegistry:
        if worker.registry is None:
            raise RegistryReadOnly(
                f"the registry is remote ({worker.config.registry.location}); change it there"
            )
        return worker.registry

    specs = {surface: spec_bytes(surface) for surface in SURFACES}

    def spec(surface: Surface) -> Response:
        return Response(specs[surface], content_type="application/json")

    async def status(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        current = worker.status()
        return json_response(current, status_code_for(current))

    async def drain(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        worker.drain(request.method == "POST")
        return json_response({"status": worker.state()})

    async def registry_list(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        registry = local_registry()
        return json_response(await trio.to_thread.run_sync(registry.list))

    async def registry_entry(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        name = parse_name(args[0])
        info.target = name
        registry = local_registry()
        if request.method == "POST":
            data = await read_body(request, limit)
            await trio.to_thread.run_sync(registry.install, name, data)
            return json_response({"name": name, "installed": True}, 201)
        if not await trio.to_thread.run_sync(registry.delete, name):
            raise FunctionNotFound(f"function {name!r} is not in the registry")
        return json_response({"name": name, "deleted": True})

    async def stats(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        return json_response(await worker.stats())

    async def functions(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        return json_response(await worker.functions())

    async def sandboxes(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        return json_response(worker.sandboxes())

    async def sandbox_log(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        return _text(worker.sandbox_log(args[0].decode("latin-1")))

    async def packages(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        return json_response(worker.packages())

    def secret_store() -> SecretStore:
        if worker.secrets is None:
            raise StateUnavailable("this worker runs without a state dir: no secrets")
        return worker.secrets

    async def secret_list(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        return json_response({"secrets": await secret_store().list()})

    async def secret_entry(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        name = _secret_name(args[0])
        store = secret_store()
        if request.method == "PUT":
            try:
                value = await read_body(request, MAX_SECRET_BYTES)
            except BodyTooLarge:
                raise SecretTooLarge(
                    f"a secret's value is at most {MAX_SECRET_BYTES} bytes (64 KiB)"
                ) from None
            described = await store.set(name, value)
            return json_response(described, 201 if described["created"] else 200)
        await store.delete(name)
        return json_response({"name": name, "deleted": True})

    async def secret_grant(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        name = _secret_name(args[0])
        function = parse_name(args[1])
        store = secret_store()
        if request.method == "PUT":
            return json_response(await store.grant(name, function))
        return json_response(await store.revoke(name, function))

    async def admin_spec(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        return spec("admin")

    async def public_spec(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        return spec("public")

    async def debug_list(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        if b"/" in args[0]:
            raise NotFound(f"no endpoint at /debug/{args[0].decode('latin-1')}")
        name = parse_name(args[0])
        info.target = name
        errors = request.args.get("errors", "0") not in ("0", "", "false")
        records = await worker.records(name, _limit(request), errors=errors)
        return json_response({"function": name, "records": records})

    async def _record(info: RequestInfo, args: Args) -> CallRecord:
        name = parse_name(args[0])
        info.target = name
        return await worker.record(name, _request_id(args[1]))

    async def debug_record(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        return json_response((await _record(info, args)).as_json())

    async def debug_stdout(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        return _text((await _record(info, args)).stdout)

    async def debug_stderr(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        return _text((await _record(info, args)).stderr)

    async def debug_error(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        return _text(explain(await _record(info, args)) + "\n")

    handlers: dict[str, Handler] = {
        "/status": status,
        "/drain": drain,
        "/stats": stats,
        "/functions": functions,
        "/sandboxes": sandboxes,
        "/sandboxes/{id}/log": sandbox_log,
        "/packages": packages,
        "/registry": registry_list,
        "/registry/{name}": registry_entry,
        "/secrets": secret_list,
        "/secrets/{name}": secret_entry,
        "/secrets/{name}/grants/{function}": secret_grant,
        "/openapi.json": admin_spec,
        "/openapi/public.json": public_spec,
        "/debug/{name}": debug_list,
        "/debug/{name}/{request_id}": debug_record,
        "/debug/{name}/{request_id}/stdout": debug_stdout,
        "/debug/{name}/{request_id}/stderr": debug_stderr,
        "/debug/{name}/{request_id}/error": debug_error,
        **access_handlers(worker),
    }
    assert set(handlers) == {endpoint.template for endpoint in ENDPOINTS}

    async def route(request: TrioRequest, info: RequestInfo) -> Response:
        raw_path: bytes = request.scope.get("raw_path") or request.path.encode()
        for endpoint in ENDPOINTS:
            rest = endpoint.match(raw_path)
            if rest is not None:
                require_method(request.method, endpoint.methods)
                return await handlers[endpoint.template](request, info, rest)
        raise NotFound(f"no endpoint at {raw_path.decode('latin-1')}")

    return RawRoutedApp(__name__, route, surface="admin", max_body_bytes=limit)
