"""Request ids: the key of a call's record (pure: no trio, no I/O).

A client (or the load balancer in front) may choose a call's id with
``X-Request-Id``.  It is kept only if it matches ``[A-Za-z0-9._-]{1,64}``
and is not already taken for that function; else the worker makes its own
(a uuid4 hex, which never collides in practice).

"Already taken" is decided in memory, without touching the disk on the
request path: :class:`RecentIds` remembers, per function, the ids of its
newest ``keep_per_function`` calls (seeded from the store at start), which
covers every id the store can still hold, because retention keeps at most
that many records per function and always the newest.  The id of a call
the worker refused before it reached the function (a 429, a 503
``overloaded``) is given back (:meth:`RecentIds.release`), so a load
balancer retrying the call, even on the same worker, keeps its id; ids of
calls whose record was dropped stay taken: refusing such an id once more
only means the worker picks a fresh one.  Memory is bounded
by ``keep_per_function`` ids per function, whatever the number of calls.
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def valid_request_id(value: str | None) -> bool:
    """Is ``value`` acceptable as a client-chosen request id?"""
    return value is not None and REQUEST_ID.fullmatch(value) is not None


def new_request_id() -> str:
    """A fresh worker-made request id."""
    return uuid.uuid4().hex


class RecentIds:
    """The request ids each function used last, at most ``per_function`` each."""

    def __init__(self, per_function: int, seed: Mapping[str, Iterable[str]] = {}) -> None:
        self.per_function = max(1, per_function)
        self._ids: dict[str, OrderedDict[str, None]] = {}
        for function, ids in seed.items():
            for request_id in ids:
                self._add(function, request_id)

    def _add(self, function: str, request_id: str) -> None:
        ids = self._ids.setdefault(function, OrderedDict())
        ids[request_id] = None
        ids.move_to_end(request_id)
        while len(ids) > self.per_function:
            ids.popitem(last=False)

    def __contains__(self, key: tuple[str, str]) -> bool:
        function, request_id = key
        ids = self._ids.get(function)
        return ids is not None and request_id in ids

    def claim(self, function: str, wanted: str | None) -> str:
        """The id for a new call of ``function``: ``wanted`` if it is valid and
        not taken for ``function``, else a fresh one.  Either way it is taken now."""
        request_id = wanted if valid_request_id(wanted) else None
        while request_id is None or (function, request_id) in self:
            request_id = new_request_id()
        self._add(function, request_id)
        return request_id

    def release(self, function: str, request_id: str) -> None:
        """Give back ``request_id`` of a call of ``function`` that left no record
        (refused before it reached the function); a no-op for an unknown id."""
        ids = self._ids.get(function)
        if ids is not None:
            ids.pop(request_id, None)
            if not ids:
                del self._ids[function]

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())
