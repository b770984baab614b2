"""Request/reply between actors over trio memory channels.

A request carries a one-shot :class:`Reply`.  The actor answers it exactly
once (``send`` or ``fail``); an actor that exits with requests it cannot
answer closes them, and the waiter gets :class:`ActorGone` — never a hang.
Answering twice is a bug and raises.  A waiter that was cancelled marks the
reply abandoned, so an actor can skip work nobody waits for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import trio

from .._errors import OlactorsError

T = TypeVar("T")


class ActorGone(OlactorsError):
    """The actor that should answer has stopped."""

    code = "internal"
    status = 500


class Reply(Generic[T]):
    __slots__ = ("_event", "_outcome", "abandoned")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._outcome: tuple[bool, Any] | None = None  # (ok, value or exception)
        self.abandoned = False

    @property
    def answered(self) -> bool:
        return self._outcome is not None

    def _set(self, result: tuple[bool, Any]) -> bool:
        if self._outcome is not None:
            raise RuntimeError("reply answered twice")
        self._outcome = result
        self._event.set()
        return not self.abandoned

    def send(self, value: T) -> bool:
        """Answer; False if the waiter has gone (the caller may undo its work)."""
        return self._set((True, value))

    def fail(self, exc: BaseException) -> bool:
        return self._set((False, exc))

    def close(self, why: str = "the actor stopped") -> None:
        """Fail with ActorGone unless already answered (for an actor's exit path)."""
        if self._outcome is None:
            self.fail(ActorGone(why))

    async def receive(self) -> T:
        try:
            await self._event.wait()
        except BaseException:
            self.abandoned = True
            raise
        assert self._outcome is not None
        ok, value = self._outcome
        if ok:
            return value
        raise value


async def ask(inbox: trio.MemorySendChannel[Any], message: Any) -> Any:
    """Send ``message`` (which has a ``reply`` field) and wait for its answer."""
    try:
        await inbox.send(message)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise ActorGone(f"{type(message).__name__}: the actor has stopped") from None
    return await message.reply.receive()


def drain(channel: trio.MemoryReceiveChannel[T]) -> Iterator[T]:
    """The messages already queued on ``channel``, taken without waiting
    (for an actor's exit path: each must still be answered)."""
    while True:
        try:
            yield channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
