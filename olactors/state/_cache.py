"""A document of a state directory as this worker last saw it, re-checked at
most once per period.

Workers sharing a state directory learn of each other's changes by looking:
:meth:`CachedDoc.current` returns the cached value while it is younger than
``period_s`` (no I/O, no checkpoint), and otherwise ``stat()``s the file in a
worker thread and re-reads and re-parses it only when its
:class:`~olactors.state.Stamp` changed.  So a change made anywhere is seen
here at most ``period_s`` after it was stored (``registry.cache_s`` for the
worker's documents), and a change made through this worker at once
(:meth:`CachedDoc.accept` with what :meth:`StateDir.update` returned).

Concurrent callers share one check: the first one past the period checks,
the others wait for it (a lock), so a burst of calls costs one ``stat``.

A document that cannot be read (the shared filesystem is down, the file is
not a JSON object) keeps the last value read, with a warning in the log
(at most one per period), and is checked again a period later; with no
value read yet, :class:`StateUnavailable` (503) is raised, so nothing is
decided on a document that could not be read.

Time is trio's (``trio.current_time``), so tests may drive it with a
``MockClock``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from .._errors import OlactorsError
from ._dir import Stamp, StateDir, StateDoc

log = logging.getLogger("olactors.state")

T = TypeVar("T")


class StateUnavailable(OlactorsError):
    """A state document (tokens, owners, secrets, grants) could not be read and
    no earlier copy of it is known: nothing is decided on a guess."""

    code = "state_unavailable"
    status = 503


class CachedDoc(Generic[T]):
    """One document of ``state``, parsed by ``parse`` once per change.

    ``parse`` turns the document's data into the value callers use (for
    example a dict of typed entries); it must not raise for data it merely
    finds odd (skip and log such entries instead); an exception it raises is
    treated like an unreadable document.
    """

    def __init__(
        self,
        state: StateDir,
        name: str,
        period_s: float,
        parse: Callable[[dict[str, Any]], T],
    ) -> None:
        self.state = state
        self.name = name
        self.period_s = period_s
        self._parse = parse
        self._value: T | None = None
        self._stamp: Stamp | None = None  # None: nothing read yet
        self._checked_at = -float("inf")
        self._lock = trio.Lock()
        #: How many checks found the document unreadable (for /stats).
        self.read_errors = 0
        #: How many times the document was (re)read and parsed.
        self.reads = 0

    def peek(self) -> T | None:
        """The cached value, however old (None: never read)."""
        return self._value

    def fresh(self, now: float) -> T | None:
        """The cached value if its last check is younger than the period at trio
        time ``now``, else None (then await :meth:`current`).  The hot path of a
        caller that already read the clock: no I/O, no await."""
        if self._stamp is not None and now < self._checked_at + self.period_s:
            return self._value
        return None

    async def current(self) -> T:
        """The value, checked against the file if the last check is ``period_s`` old.
        Raises :class:`StateUnavailable` when the document was never readable."""
        if self._stamp is not None and trio.current_time() < self._checked_at + self.period_s:
            return self._value  # type: ignore[return-value]  # set with _stamp
        async with self._lock:
            if self._stamp is None or trio.current_time() >= self._checked_at + self.period_s:
                await self._check()
        if self._stamp is None:
            raise StateUnavailable(f"the state document {self.name!r} cannot be read (see the log)")
        return self._value  # type: ignore[return-value]

    def accept(self, doc: StateDoc) -> T:
        """Take ``doc`` (just stored through this worker) as the current value."""
        value = self._parse(doc.data)
        self._value, self._stamp = value, doc.stamp
        self._checked_at = trio.current_time()
        self.reads += 1
        return value

    async def _check(self) -> None:
        known = self._stamp
        try:
            value, stamp = await trio.to_thread.run_sync(self._load, known)
        except (OSError, OlactorsError, ValueError, TypeError) as exc:
            self.read_errors += 1
            self._checked_at = trio.current_time()
            log.warning(
                "state %s (%s): cannot be read, %s: %s",
                self.name,
                self.state.path,
                "using the copy read before" if known is not None else "nothing known yet",
                exc,
            )
            return
        self._checked_at = trio.current_time()
        if stamp is None:
            return  # unchanged
        self._value, self._stamp = value, stamp
        self.reads += 1

    def _load(self, known: Stamp | None) -> tuple[T | None, Stamp | None]:
        """(value, stamp) if the document changed since ``known``, else (None, None).
        Runs in a worker thread."""
        if known is not None and self.state.stamp(self.name) == known:
            return None, None
        doc = self.state.read(self.name)
        return self._parse(doc.data), doc.stamp
