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
    ``emit``, for observers that only record (metrics, simulation traces):
    they cost no task switch.  A listener must not block; one that raises is
    logged and removed.
    """

    def __init__(self) -> None:
        self._subscribers: list[trio.MemorySendChannel[SandboxEvent]] = []
        self._listeners: list[Callable[[SandboxEvent], None]] = []
        self.dropped_subscribers = 0

    def subscribe(self, buffer: int = 256) -> trio.MemoryReceiveChannel[SandboxEvent]:
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
                log.exception("sandbox event listener failed; removing it")
                self._listeners.remove(listener)
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

    def close(self) -> None:
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
