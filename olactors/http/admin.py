"""The admin HTTP app, served only on ``<worker>/admin.sock`` (mode 0600).

Routes (all answers JSON, with ``X-Request-Id``; errors in the public app's format):

* ``GET /status``, ``GET /stats``, ``GET /functions``, ``GET /sandboxes``
* ``GET /packages``: installed distributions (size, modules, holds), the disk
  budget, and the packages found unfit for zygotes (with the reason)
* ``GET /registry``: the functions in the local registry
* ``POST /registry/<name>``: body is a ``.tar.gz`` of the function dir; 201
  ``{"name", "installed": true}``; a bad archive is ``400 bad_function`` and
  leaves the previous version in place
* ``DELETE /registry/<name>``: 200 ``{"name", "deleted": true}``, 404 if absent

Registry writes answer ``409 registry_read_only`` when the worker reads its
functions from an http(s) registry.  Bodies are capped at
``registry.max_code_mb`` MiB.
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from ..registry import LocalRegistry
    from ..worker import Worker

REGISTRY_PREFIX = b"/registry/"


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

    async def route(request: TrioRequest, info: RequestInfo) -> Response:
        raw_path: bytes = request.scope.get("raw_path") or request.path.encode()
        method = request.method
        if raw_path == b"/status":
            require_method(method, ("GET",))
            status = worker.status()
            return json_response(status, status_code_for(status))
        if raw_path == b"/stats":
            require_method(method, ("GET",))
            return json_response(await worker.stats())
        if raw_path == b"/functions":
            require_method(method, ("GET",))
            return json_response(await worker.functions())
        if raw_path == b"/sandboxes":
            require_method(method, ("GET",))
            return json_response(worker.sandboxes())
        if raw_path == b"/packages":
            require_method(method, ("GET",))
            return json_response(worker.packages())
        if raw_path == b"/registry":
            require_method(method, ("GET",))
            registry = local_registry()
            return json_response(await trio.to_thread.run_sync(registry.list))
        if raw_path.startswith(REGISTRY_PREFIX):
            require_method(method, ("POST", "DELETE"))
            name = parse_name(raw_path[len(REGISTRY_PREFIX) :])
            info.target = name
            registry = local_registry()
            if method == "POST":
                data = await read_body(request, limit)
                await trio.to_thread.run_sync(registry.install, name, data)
                return json_response({"name": name, "installed": True}, 201)
            if not await trio.to_thread.run_sync(registry.delete, name):
                raise FunctionNotFound(f"function {name!r} is not in the registry")
            return json_response({"name": name, "deleted": True})
        raise NotFound(f"no endpoint at {raw_path.decode('latin-1')}")

    return RawRoutedApp(__name__, route, surface="admin", max_body_bytes=limit)
