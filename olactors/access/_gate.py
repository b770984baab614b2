"""The per-call access check, before the call is queued or any code runs.

:meth:`AccessGate.admit` needs three facts:

* the function's access (``public``/``private``): its ol.yaml ``access`` or
  ``functions.default_access``.  ol.yaml comes from the code puller, whose
  answer stands for ``registry.cache_s``; the gate asks it only when its own
  copy has expired (the function actor's pull in the same window is then
  answered from the puller's cache), so a warm call costs a dict lookup;
* the function's owner and the tokens: the ``owners`` and ``tokens`` state
  documents (:class:`~olactors.access.AccessState`, re-checked at most once
  per ``registry.cache_s``);
* the caller (:data:`~olactors._access.Caller`).

Known weak spot: a call the gate refuses for a function that no worker
instance runs still had the puller snapshot the function's code (to read its
ol.yaml); that snapshot stays until the function runs and idles out, or the
worker stops (at most one per function in the registry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import trio

from .._access import Access, Caller, Forbidden, Unauthorized, check_access
from .._config import Config
from .._function_config import effective_access
from ..actors.code_puller import CodePullerRef
from ..state import StateUnavailable
from ._state import AccessState

#: Function access entries kept before expired ones are pruned (then twice as many).
_PRUNE_MIN = 256


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted call: the function's access and its owner (None: none)."""

    access: Access
    owner: str | None


class AccessGate:
    """The check of one worker.  ``state`` None (simulations, which open no
    state directory): no owners and no tokens, so private functions refuse
    every caller but the worker's own triggers."""

    def __init__(self, config: Config, state: AccessState | None, puller: CodePullerRef) -> None:
        self.config = config
        self.state = state
        self.puller = puller
        self._access: dict[str, tuple[Access, float]] = {}  # name -> (access, valid until)
        self._prune_at = _PRUNE_MIN
        #: Calls refused for want of a token (401) and for a bad one (403).
        self.unauthorized = 0
        self.forbidden = 0

    async def admit(self, name: str, caller: Caller) -> Admission:
        """Admit the call of ``name`` by ``caller``, or raise the error that answers
        it: :class:`~olactors._access.Unauthorized` (401),
        :class:`~olactors._access.Forbidden` (403), or the puller's
        (``function_not_found``, ``bad_function``, ``registry_unavailable``)."""
        now = trio.current_time()
        known = self._access.get(name)
        if known is not None and now < known[1]:
            access = known[0]
        else:
            access = await self.access_of(name)
        state = self.state
        if state is None:
            owners: Mapping[str, str] = {}
        else:
            fresh = state.owners.fresh(now)
            if fresh is not None:
                owners = fresh
            elif access is Access.PUBLIC:
                try:  # only for the record: a public call never waits on a broken state dir
                    owners = await state.owners.current()
                except StateUnavailable:
                    owners = {}
            else:
                owners = await state.owners.current()
        owner = owners.get(name)
        if access is Access.PUBLIC:
            return Admission(access, owner)
        if state is None:
            tokens, wall = {}, 0.0
        else:
            fresh_tokens = state.tokens.fresh(now)
            tokens = fresh_tokens if fresh_tokens is not None else await state.tokens.current()
            wall = state.clock()
        try:
            check_access(access, caller, name, owner, tokens, wall)
        except Unauthorized:
            self.unauthorized += 1
            raise
        except Forbidden:
            self.forbidden += 1
            raise
        return Admission(access, owner)

    def forget(self, name: str) -> None:
        """Drop the copy of ``name``'s access: the next call asks the code puller."""
        self._access.pop(name, None)

    def describe(self) -> dict[str, int]:
        """Counts for ``/stats`` (never a token, a name or an owner)."""
        out = {"unauthorized": self.unauthorized, "forbidden": self.forbidden}
        if self.state is not None:
            docs = (self.state.tokens, self.state.owners)
            out["state_reads"] = sum(doc.reads for doc in docs)
            out["state_read_errors"] = sum(doc.read_errors for doc in docs)
        return out

    async def access_of(self, name: str) -> Access:
        """The function's access, from the code puller when the gate's copy expired."""
        known = self._access.get(name)
        if known is not None and trio.current_time() < known[1]:
            return known[0]
        code, until = await self.puller.pull_until(name)
        access = effective_access(code.config, self.config)
        self._prune()
        self._access[name] = (access, until)
        return access

    def _prune(self) -> None:
        if len(self._access) < self._prune_at:
            return
        now = trio.current_time()
        for name, (_, until) in list(self._access.items()):
            if until <= now:
                del self._access[name]
        self._prune_at = max(_PRUNE_MIN, 2 * len(self._access))
