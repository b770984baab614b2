"""Fan-out of sandbox lifecycle events to any number of subscribers."""

from __future__ import annotations

import trio

from ._api import SandboxEvent


class EventHub:
    """Each subscriber gets every event, in order, over its own bounded channel.

    ``emit`` waits when a subscriber's buffer is full (backpressure, never
    unbounded memory); a subscriber that closed its receive end is dropped.
    """

    def __init__(self) -> None:
        self._subscribers: list[trio.MemorySendChannel[SandboxEvent]] = []

    def subscribe(self, buffer: int = 256) -> trio.MemoryReceiveChannel[SandboxEvent]:
        send, receive = trio.open_memory_channel[SandboxEvent](buffer)
        self._subscribers.append(send)
        return receive

    async def emit(self, event: SandboxEvent) -> None:
        for send in list(self._subscribers):
            try:
                await send.send(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(send)

    def close(self) -> None:
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()
