"""The admin HTTP app, served only on ``<worker>/admin.sock`` (mode 0600).

Routes (all answers JSON, with ``X-Request-Id``; errors in the public app's
format), listed in :data:`ENDPOINTS`, which the dispatcher routes by and
``tests/test_openapi.py`` compares with ``openapi/admin.json``:

* ``GET /status``, ``GET /stats``, ``GET /functions``, ``GET /sandboxes``
* ``GET /packages``: installed distributions (size, modules, holds), the disk
  budget, and the packages found unfit for zygotes (with the reason)
* ``GET /registry``: the functions in the local registry
* ``POST /registry/<name>``: body is a ``.tar.gz`` of the function dir; 201
  ``{"name", "installed": true}``; a bad archive is ``400 bad_function`` and
  leaves the previous version in place
* ``DELETE /registry/<name>``: 200 ``{"name", "deleted": true}``, 404 if absent
* ``GET /openapi.json``: this surface's OpenAPI 3.1 document;
  ``GET /openapi/public.json``: the public surface's (see :mod:`.openapi`)

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

from .._errors import FunctionNotFound, OlactorsError
from ._common import (
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
    from ..worker import Worker


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One admin path: its OpenAPI path template and the methods it accepts.

    A template ending in ``{name}`` matches every raw path starting with what
    precedes it; the rest is the function name (checked by :func:`parse_name`).
    """

    template: str
    methods: tuple[str, ...]

    def match(self, raw_path: bytes) -> bytes | None:
        """The raw ``{name}`` segment (``b""`` for a plain path) if ``raw_path`` is this one's."""
        prefix, brace, _ = self.template.partition("{")
        if not brace:
            return b"" if raw_path == prefix.encode() else None
        return raw_path[len(prefix) :] if raw_path.startswith(prefix.encode()) else None


ENDPOINTS = (
    Endpoint("/status", ("GET",)),
    Endpoint("/stats", ("GET",)),
    Endpoint("/functions", ("GET",)),
    Endpoint("/sandboxes", ("GET",)),
    Endpoint("/packages", ("GET",)),
    Endpoint("/registry", ("GET",)),
    Endpoint("/registry/{name}", ("POST", "DELETE")),
    Endpoint("/openapi.json", ("GET",)),
    Endpoint("/openapi/public.json", ("GET",)),
)


Handler = Callable[[TrioRequest, RequestInfo, bytes], Awaitable[Response]]


class RegistryReadOnly(OlactorsError):
    """The worker's registry is remote (http/https): upload and delete there."""

    code = "registry_read_only"
    status = 409


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

    async def status(request: TrioRequest, info: RequestInfo, _: bytes) -> Response:
        current = worker.status()
        return json_response(current, status_code_for(current))

    async def registry_list(request: TrioRequest, info: RequestInfo, _: bytes) -> Response:
        registry = local_registry()
        return json_response(await trio.to_thread.run_sync(registry.list))

    async def registry_entry(request: TrioRequest, info: RequestInfo, raw_name: bytes) -> Response:
        name = parse_name(raw_name)
        info.target = name
        registry = local_registry()
        if request.method == "POST":
            data = await read_body(request, limit)
            await trio.to_thread.run_sync(registry.install, name, data)
            return json_response({"name": name, "installed": True}, 201)
        if not await trio.to_thread.run_sync(registry.delete, name):
            raise FunctionNotFound(f"function {name!r} is not in the registry")
        return json_response({"name": name, "deleted": True})

    async def stats(request: TrioRequest, info: RequestInfo, _: bytes) -> Response:
        return json_response(await worker.stats())

    async def functions(request: TrioRequest, info: RequestInfo, _: bytes) -> Response:
        return json_response(await worker.functions())

    async def sandboxes(request: TrioRequest, info: RequestInfo, _: bytes) -> Response:
        return json_response(worker.sandboxes())

    async def packages(request: TrioRequest, info: RequestInfo, _: bytes) -> Response:
        return json_response(worker.packages())

    async def admin_spec(request: TrioRequest, info: RequestInfo, _: bytes) -> Response:
        return spec("admin")

    async def public_spec(request: TrioRequest, info: RequestInfo, _: bytes) -> Response:
        return spec("public")

    handlers: dict[str, Handler] = {
        "/status": status,
        "/stats": stats,
        "/functions": functions,
        "/sandboxes": sandboxes,
        "/packages": packages,
        "/registry": registry_list,
        "/registry/{name}": registry_entry,
        "/openapi.json": admin_spec,
        "/openapi/public.json": public_spec,
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
