"""The ``tokens`` and ``owners`` state documents and the admin operations on them.

``tokens``: ``{"tokens": {<id>: {"hash": "sha256:<hex>", "function": ...,
"owner": ..., "created_at": <epoch s>, "expires_at": ..., "revoked_at": ...}}}``
(see :class:`~olactors._access.TokenEntry`); a revoked token stays listed,
marked, so ``token list`` shows what was revoked and when.
``owners``: ``{"owners": {<function>: <owner>}}``.

Every change is a locked read-modify-write of the shared directory
(:meth:`olactors.state.StateDir.update`, in a worker thread) whose result
this worker takes at once; other workers see it within ``registry.cache_s``
(:class:`~olactors.state.CachedDoc`).  Malformed entries (edited by hand)
are skipped with a warning, never guessed at.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from .._access import IssuedToken, TokenEntry, TokenNotFound, issue_token, valid_owner
from .._errors import BadFunctionName, ConfigError
from .._names import validate_function_name
from ..state import CachedDoc, StateDir, StateDoc, StateUnavailable

log = logging.getLogger("olactors.access")

TOKENS_DOC = "tokens"
OWNERS_DOC = "owners"

Tokens = dict[str, TokenEntry]
Owners = dict[str, str]


def parse_tokens(data: dict[str, Any]) -> Tokens:
    raw = data.get("tokens")
    out: Tokens = {}
    if not isinstance(raw, dict):
        return out
    for token_id, entry in raw.items():
        try:
            out[token_id] = TokenEntry.from_stored(token_id, entry)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("state tokens: entry %r skipped: %s", token_id, exc)
    return out


def parse_owners(data: dict[str, Any]) -> Owners:
    raw = data.get("owners")
    out: Owners = {}
    if not isinstance(raw, dict):
        return out
    for function, owner in raw.items():
        if _good_name(function) and valid_owner(owner):
            out[function] = owner
        else:
            log.warning("state owners: entry %r: %r skipped (not a name)", function, owner)
    return out


def _good_name(name: object) -> bool:
    if not isinstance(name, str):
        return False
    try:
        validate_function_name(name)
    except BadFunctionName:
        return False
    return True


class AccessState:
    """This worker's view of the tokens and owners of ``state`` (re-checked at
    most every ``period_s``), and the operations that change them.  ``clock``
    is the wall clock (token dates are shared by every worker)."""

    def __init__(
        self, state: StateDir, period_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.state = state
        self.clock = clock
        self.tokens: CachedDoc[Tokens] = CachedDoc(state, TOKENS_DOC, period_s, parse_tokens)
        self.owners: CachedDoc[Owners] = CachedDoc(state, OWNERS_DOC, period_s, parse_owners)

    async def _update(
        self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> StateDoc:
        try:
            return await trio.to_thread.run_sync(partial(self.state.update, name, change))
        except (ConfigError, OSError) as exc:  # a broken document, an unreachable directory
            raise StateUnavailable(f"state {name}: {exc}") from None

    async def _fresh(self, cache: CachedDoc[Any]) -> Any:
        try:
            doc = await trio.to_thread.run_sync(self.state.read, cache.name)
        except (ConfigError, OSError) as exc:
            raise StateUnavailable(f"state {cache.name}: {exc}") from None
        return cache.accept(doc)

    # ------------------------------------------------------------ tokens
    async def create_token(
        self, *, function: str | None, owner: str | None, expires_in_s: float | None
    ) -> IssuedToken:
        """Issue a token for ``function`` or ``owner``; only its hash is stored."""
        issued = issue_token(
            function=function, owner=owner, now=self.clock(), expires_in_s=expires_in_s
        )

        def change(data: dict[str, Any]) -> dict[str, Any]:
            tokens = data.setdefault("tokens", {})
            tokens[issued.entry.id] = issued.entry.stored()
            return data

        self.tokens.accept(await self._update(TOKENS_DOC, change))
        return issued

    async def list_tokens(self) -> list[TokenEntry]:
        """Every token (revoked ones too), oldest first, read fresh."""
        tokens: Tokens = await self._fresh(self.tokens)
        return sorted(tokens.values(), key=lambda t: (t.created_at, t.id))

    async def revoke_token(self, token_id: str) -> TokenEntry:
        """Revoke ``token_id`` (again: no change); :class:`TokenNotFound` if unknown."""
        now = self.clock()

        def change(data: dict[str, Any]) -> dict[str, Any]:
            entry = data.get("tokens", {}).get(token_id)
            if not isinstance(entry, dict):
                raise TokenNotFound(f"no token has the id {token_id!r}")
            if entry.get("revoked_at") is None:
                entry["revoked_at"] = now
            return data

        tokens = self.tokens.accept(await self._update(TOKENS_DOC, change))
        if token_id not in tokens:
            raise TokenNotFound(f"the token {token_id!r} is stored malformed (see the log)")
        return tokens[token_id]

    # ------------------------------------------------------------ owners
    async def set_owner(self, function: str, owner: str) -> None:
        def change(data: dict[str, Any]) -> dict[str, Any]:
            data.setdefault("owners", {})[function] = owner
            return data

        self.owners.accept(await self._update(OWNERS_DOC, change))

    async def unset_owner(self, function: str) -> str | None:
        """Clear ``function``'s owner; the owner it had (None: none)."""
        before: list[Any] = []

        def change(data: dict[str, Any]) -> dict[str, Any]:
            before.append(data.get("owners", {}).pop(function, None))
            return data

        self.owners.accept(await self._update(OWNERS_DOC, change))
        previous = before[-1] if before else None
        return previous if isinstance(previous, str) else None

    async def list_owners(self) -> Owners:
        """Every function's owner, read fresh."""
        owners: Owners = await self._fresh(self.owners)
        return dict(sorted(owners.items()))
