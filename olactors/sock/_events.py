"""Fan-out of sandbox lifecycle events to any number of subscribers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ._api import SandboxEvent

log = logging.getLogger("olactors.sandbox")


class EventHub:
    """Each subscriber gets every event, in order, over its own bounded channel.

    ``emit`` never waits: it runs under sandbox locks and in shielded cleanup.
    A subscriber whose buffer is full has fallen behind and can no longer
    know the true state, so its channel is closed (it sees EndOfChannel) and
    the loss is logged; a subscriber that closed its receive end is dropped.

    Listeners (:meth:`listen`) are plain callbacks run synchronously inside
    ``emit``, for observers that must see every event at once (the memory
    pool's releases, metrics, simulation traces): they cost no task switch.
    A listener must not block.  One that raises is a bug, but it stays: the
    exception is logged with its traceback and counted
    (``listener_errors``), the event still reaches every other listener and
    subscriber, and the listener gets the next event as usual.  (Dropping it
    would turn one bad event into a silent, permanent loss, e.g. memory that
    is never given back.)
    """

    def __init__(self) -> None:
        self._subscribers: list[trio.MemorySendChannel[SandboxEvent]] = []
        self._listeners: list[Callable[[SandboxEvent], None]] = []
        self._closed = False
        #: Subscribers whose channel was closed because they fell behind.
        self.dropped_subscribers = 0
        #: Exceptions raised by listeners (each logged with its traceback).
        self.listener_errors = 0
        #: Sandbox releases that failed (each logged); see ``SafeSandbox``.
        self.release_failures = 0
        #: Sandboxes whose release failed while their processes may run: id -> why.
        self.unreleased: dict[str, str] = {}

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self, buffer: int = 256) -> trio.MemoryReceiveChannel[SandboxEvent]:
        """A new subscription: every event from now on, over a channel of ``buffer``.

        Raises ``trio.ClosedResourceError`` once the hub is closed (the pool
        shut down), so a subscriber that resubscribes after losing its channel
        can tell "fell behind" from "no more events, ever".
        """
        if self._closed:
            raise trio.ClosedResourceError("the sandbox pool's events are closed")
        send, receive = trio.open_memory_channel[SandboxEvent](buffer)
        self._subscribers.append(send)
        return receive

    def listen(self, listener: Callable[[SandboxEvent], None]) -> Callable[[], None]:
        """Add ``listener``; returns the function that removes it."""
        self._listeners.append(listener)

        def unlisten() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unlisten

    def emit(self, event: SandboxEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.listener_errors += 1
                log.exception(
                    "sandbox event listener %r failed on %r (kept; %d listener errors so far)",
                    listener,
                    event,
                    self.listener_errors,
                )
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                log.error("sandbox event subscriber fell behind; closing its channel")
                self.dropped_subscribers += 1
                send.close()
                self._subscribers.remove(send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(send)

    def release_failed(self, sandbox_id: str, failure: str, processes_gone: bool) -> None:
        """Count and log a failed release of sandbox ``sandbox_id``; with its
        processes maybe alive it is listed in ``unreleased`` until :meth:`released`."""
        self.release_failures += 1
        if processes_gone:
            log.error("%s; released with leftovers", failure)
        else:
            self.unreleased[sandbox_id] = failure
            log.error("%s; its memory stays reserved until a retry succeeds", failure)

    def released(self, sandbox_id: str) -> None:
        if self.unreleased.pop(sandbox_id, None) is not None:
            log.warning("sandbox %s released at last after a failed release", sandbox_id)

    def close(self) -> None:
        self._closed = True
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()
        self._listeners.clear()


class PoolEvents:
    """The events half of a sandbox pool, shared by the SOCK and simulated pools."""

    _hub: EventHub

    def subscribe(self, buffer: int = 256) -> trio.MemoryReceiveChannel[SandboxEvent]:
        return self._hub.subscribe(buffer)

    def listen(self, listener: Callable[[SandboxEvent], None]) -> Callable[[], None]:
        return self._hub.listen(listener)

    def sandbox_anomalies(self) -> dict[str, int]:
        """What went wrong unseen otherwise (for ``/stats``): subscribers
        dropped for falling behind, exceptions raised by listeners, failed
        sandbox releases, and sandboxes not released yet after one."""
        return {
            "dropped_subscribers": self._hub.dropped_subscribers,
            "listener_errors": self._hub.listener_errors,
            "release_failures": self._hub.release_failures,
            "unreleased": len(self._hub.unreleased),
        }
