"""The admin API of invoke tokens and function owners (routes of the admin app).

* ``GET /tokens``: ``{"tokens": [...]}``, every token (revoked and expired ones
  too, with ``state``), oldest first; never a token or its hash
* ``POST /tokens``: body ``{"function": NAME}`` or ``{"owner": NAME}``, and
  optionally ``"expires_in_s": seconds``; 201 with the token (``"token"``),
  shown this once and stored only as a hash
* ``DELETE /tokens/<id>``: revoke (again: no change); ``404 token_not_found``
* ``GET /owners``: ``{"owners": [{"function", "owner"}]}``
* ``PUT /owners/<name>``: body ``{"owner": NAME}``; ``DELETE /owners/<name>``
  clears it (``"previous"``: the owner it had, or null)

A malformed body is ``400 bad_parameter``.  Every change goes to the state
directory at once (see :class:`olactors.access.AccessState`); workers sharing
it see it within ``registry.cache_s``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from quart import Response
from quart_trio.wrappers import TrioRequest

from .._access import MAX_EXPIRES_S, TOKEN_ID, TokenNotFound, valid_owner
from .._names import validate_function_name
from ..state import StateUnavailable
from ._common import BadParameter, RequestInfo, json_response, parse_name, read_body

if TYPE_CHECKING:
    from ..access import AccessState
    from ..worker import Worker

#: (template, methods) of each route here, in the admin app's ENDPOINTS.
ACCESS_ROUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("/tokens", ("GET", "POST")),
    ("/tokens/{id}", ("DELETE",)),
    ("/owners", ("GET",)),
    ("/owners/{name}", ("PUT", "DELETE")),
)
BODY_LIMIT = 64 * 1024

Args = tuple[bytes, ...]
Handler = Callable[[TrioRequest, RequestInfo, Args], Awaitable[Response]]


async def _json_body(request: TrioRequest) -> dict[str, Any]:
    raw = await read_body(request, BODY_LIMIT)
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadParameter("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadParameter("the body must be a JSON object")
    return body


def _owner_body(body: dict[str, Any]) -> str:
    """The owner a ``PUT /owners/{name}`` body names."""
    unknown = set(body) - {"owner"}
    if unknown:  # like POST /tokens: a misspelt field is an error, not ignored
        raise BadParameter(f"unknown fields {sorted(unknown)} (known: owner)")
    return _owner_name(body.get("owner"))


def _owner_name(owner: Any) -> str:
    if not valid_owner(owner):
        raise BadParameter(
            f"owner must be a name of 1 to 128 letters, digits, '_', '.' or '-', got {owner!r}"
        )
    assert isinstance(owner, str)
    return owner


def access_handlers(worker: Worker) -> dict[str, Handler]:
    """The handlers of :data:`ACCESS_ROUTES` over ``worker``."""

    def state() -> AccessState:
        if worker.access is None:
            raise StateUnavailable("this worker has no state directory")
        return worker.access

    async def tokens(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        access = state()
        if request.method == "GET":
            now = access.clock()
            return json_response({"tokens": [t.public(now) for t in await access.list_tokens()]})
        body = await _json_body(request)
        unknown = set(body) - {"function", "owner", "expires_in_s"}
        if unknown:
            raise BadParameter(
                f"unknown fields {sorted(unknown)} (known: function, owner, expires_in_s)"
            )
        function, owner = body.get("function"), body.get("owner")
        if (function is None) == (owner is None):
            raise BadParameter("give exactly one of function and owner")
        if function is not None:
            if not isinstance(function, str):
                raise BadParameter("function must be a function name")
            validate_function_name(function)
        else:
            owner = _owner_name(owner)
        expires = body.get("expires_in_s")
        if expires is not None and (
            isinstance(expires, bool)
            or not isinstance(expires, int | float)
            or not 0 < expires <= MAX_EXPIRES_S
        ):
            raise BadParameter(
                f"expires_in_s must be a number of seconds above 0 and at most {MAX_EXPIRES_S}"
            )
        info.target = function or f"owner:{owner}"
        issued = await access.create_token(function=function, owner=owner, expires_in_s=expires)
        shown = {"token": issued.text, **issued.entry.public(access.clock())}
        return json_response(shown, 201)

    async def token(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        token_id = args[0].decode("latin-1")
        if not TOKEN_ID.fullmatch(token_id):
            raise TokenNotFound(f"no token has the id {token_id!r} (ids are 16 hex digits)")
        access = state()
        revoked = await access.revoke_token(token_id)
        return json_response(revoked.public(access.clock()))

    async def owners(request: TrioRequest, info: RequestInfo, _: Args) -> Response:
        listed = await state().list_owners()
        return json_response({"owners": [{"function": f, "owner": o} for f, o in listed.items()]})

    async def owner(request: TrioRequest, info: RequestInfo, args: Args) -> Response:
        name = parse_name(args[0])
        info.target = name
        access = state()
        if request.method == "PUT":
            chosen = _owner_body(await _json_body(request))
            await access.set_owner(name, chosen)
            return json_response({"function": name, "owner": chosen})
        previous = await access.unset_owner(name)
        return json_response({"function": name, "owner": None, "previous": previous})

    return {"/tokens": tokens, "/tokens/{id}": token, "/owners": owners, "/owners/{name}": owner}
