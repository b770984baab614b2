"""MemPool: the worker's memory budget, as an actor.

Every sandbox reserves its memory limit before it is created
(:meth:`MemPoolRef.reserve`) and binds the reservation to the sandbox once it
exists (:meth:`MemPoolRef.bind`).  The pool listens to the sandbox pool's
events (synchronously) and releases a bound reservation when its sandbox is *released*
(``SandboxDestroyed``: for a zygote that is after its last child), whoever
destroyed it — its instance, the evictor, a crash or shutdown.  Waiters are
served in the strict FIFO order of :mod:`olactors._memory_ledger`; a waiter
blocks only its own task, never the actor.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Hashable
from dataclasses import dataclass, field

import trio

from .._errors import MemoryExhausted
from .._memory_ledger import MemoryLedger
from ..sock import Sandbox, SandboxDestroyed, SandboxEvent, SandboxPool, SandboxState
from ._calls import ActorGone, Reply, ask

log = logging.getLogger("olactors.mempool")


@dataclass(eq=False, slots=True)
class Reservation:
    id: int
    mb: int
    owner: str
    sandbox_id: str | None = None
    released: bool = False


@dataclass(frozen=True, slots=True)
class MemSnapshot:
    total_mb: int
    used_mb: int
    free_mb: int
    waiting_mb: int
    waiters: int
    bound: dict[str, int] = field(default_factory=dict)  # sandbox id -> MB reserved

    def as_dict(self) -> dict[str, int]:
        return {
            "total_mb": self.total_mb,
            "used_mb": self.used_mb,
            "free_mb": self.free_mb,
            "waiting_mb": self.waiting_mb,
            "waiters": self.waiters,
        }


@dataclass(frozen=True, slots=True)
class MemAccounting:
    """The ledger next to the sandboxes it pays for, read in one synchronous step.

    ``bound`` maps each sandbox holding a reservation to its MB; ``pending``
    are reservations granted to a creation whose sandbox is not bound yet;
    ``live`` maps every sandbox of the pool (not yet released) to its memory
    limit.  :meth:`discrepancies` states every way they disagree (empty when
    the books balance).
    """

    used_mb: int
    bound: dict[str, int]
    pending: tuple[int, ...]
    live: dict[str, int]

    def discrepancies(self) -> list[str]:
        found = []
        accounted = sum(self.bound.values()) + sum(self.pending)
        if self.used_mb != accounted:
            found.append(
                f"ledger says {self.used_mb} MB reserved, reservations add up to {accounted} MB"
            )
        for sid, mb in sorted(self.bound.items()):
            if sid not in self.live:
                found.append(f"{mb} MB still bound to {sid}, which was released")
            elif self.live[sid] != mb:
                found.append(f"{sid} reserved {mb} MB but its limit is {self.live[sid]} MB")
        unbound = sorted(set(self.live) - set(self.bound))
        if len(unbound) > len(self.pending):
            found.append(
                f"sandboxes {unbound} hold no reservation "
                f"(only {len(self.pending)} granted ones are not bound yet)"
            )
        return found

    def as_dict(self) -> dict[str, object]:
        return {
            "used_mb": self.used_mb,
            "bound_mb": sum(self.bound.values()),
            "pending_mb": sum(self.pending),
            "live_limit_mb": sum(self.live.values()),
            "bound": dict(sorted(self.bound.items())),
            "live": dict(sorted(self.live.items())),
            "discrepancies": self.discrepancies(),
        }


@dataclass(frozen=True, slots=True)
class Reserve:
    reservation: Reservation
    reply: Reply[Reservation]


@dataclass(frozen=True, slots=True)
class Withdraw:
    reservation: Reservation


@dataclass(frozen=True, slots=True)
class Bind:
    reservation: Reservation
    sandbox: Sandbox


@dataclass(frozen=True, slots=True)
class Release:
    reservation: Reservation


@dataclass(frozen=True, slots=True)
class Snapshot:
    with_bound: bool
    reply: Reply[MemSnapshot]


MemPoolMessage = Reserve | Withdraw | Bind | Release | Snapshot


class MemPoolRef:
    def __init__(
        self,
        inbox: trio.MemorySendChannel[MemPoolMessage],
        total_mb: int,
        timeout_s: float,
        state: MemPool,
    ) -> None:
        self._inbox = inbox
        #: The actor's book-keeping, read-only outside the actor (the evictor
        #: and simulations look at it without a message round trip).
        self.ledger = state.ledger
        self._state = state
        self._bound = state.bound
        self._ids = itertools.count(1)
        self.total_mb = total_mb
        self.timeout_s = timeout_s
        #: Woken (buffer 1, never blocks) whenever someone starts waiting: the evictor listens.
        self.pressure_send, self.pressure = trio.open_memory_channel[None](1)

    async def reserve(self, mb: int, owner: str) -> Reservation:
        """Wait (FIFO, up to ``memory.reserve_timeout_s``) for ``mb`` of the pool.

        Raises MemoryExhausted when ``mb`` exceeds the pool or the wait times
        out.  Cancellation-safe: a cancelled wait withdraws (or, if the grant
        crossed the cancel, releases) the reservation.
        """
        if mb > self.total_mb:
            raise MemoryExhausted(
                f"{owner} needs {mb} MB but the whole memory pool is {self.total_mb} MB "
                "(memory.pool_mb)"
            )
        res = Reservation(next(self._ids), mb, owner)
        msg = Reserve(res, Reply())
        granted = False
        try:
            with trio.move_on_after(self.timeout_s):
                await ask(self._inbox, msg)
                granted = True
        finally:
            if not granted:
                with trio.CancelScope(shield=True):
                    await self._send(Withdraw(res))
        if not granted:
            raise MemoryExhausted(
                f"{owner} waited {self.timeout_s:g} s for {mb} MB of the memory pool "
                "and none was freed"
            )
        return res

    async def bind(self, res: Reservation, sandbox: Sandbox) -> None:
        """Tie ``res`` to ``sandbox``: released when the sandbox is released."""
        await self._send(Bind(res, sandbox))

    async def release(self, res: Reservation) -> None:
        """Give back an unbound reservation (e.g. the sandbox creation failed)."""
        await self._send(Release(res))

    def reserved_mb(self, sandbox_id: str) -> int:
        """MB reserved for the live sandbox ``sandbox_id`` (0 if none); a read-only view."""
        res = self._bound.get(sandbox_id)
        return 0 if res is None else res.mb

    async def snapshot(self, with_bound: bool = False) -> MemSnapshot:
        return await ask(self._inbox, Snapshot(with_bound, Reply()))

    def accounting(self, pool: SandboxPool) -> MemAccounting:
        """The ledger, its reservations and ``pool``'s live sandboxes, read together
        (synchronously, so no event falls between the reads); a read-only view."""
        state = self._state
        return MemAccounting(
            used_mb=state.ledger.used_mb,
            bound={sid: res.mb for sid, res in state.bound.items()},
            pending=tuple(res.mb for res in state.pending.values()),
            live={sb.id: sb.meta.limits.mem_mb for sb in pool.sandboxes()},
        )

    async def _send(self, msg: MemPoolMessage) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self._inbox.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the pool stopped: nothing to give back to


class MemPool:
    """The actor's state; driven only by ``run_mempool``."""

    def __init__(self, total_mb: int) -> None:
        self.ledger = MemoryLedger(total_mb)
        self.waiting: dict[Hashable, Reserve] = {}  # keyed by the ledger's tokens
        self.bound: dict[str, Reservation] = {}
        self.pending: dict[int, Reservation] = {}  # granted, not yet bound nor released

    def handle(self, msg: MemPoolMessage, pressure: trio.MemorySendChannel[None]) -> None:
        if isinstance(msg, Reserve):
            res = msg.reservation
            if self.ledger.reserve(res.id, res.mb):
                self._grant(msg)
            else:
                self.waiting[res.id] = msg
                try:
                    pressure.send_nowait(None)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        elif isinstance(msg, Withdraw):
            res = msg.reservation
            if self.ledger.withdraw(res.id):
                self.waiting.pop(res.id, None)
                self._grant_waiters()
            else:
                self._release(res)  # granted but never bound: give it back
        elif isinstance(msg, Bind):
            res, sandbox = msg.reservation, msg.sandbox
            if res.released:
                return
            self.pending.pop(res.id, None)
            if sandbox.state is SandboxState.DEAD and sandbox.live_children == 0:
                self._release(res)  # released before we heard of it
            else:
                res.sandbox_id = sandbox.id
                self.bound[sandbox.id] = res
        elif isinstance(msg, Release):
            self._release(msg.reservation)
        elif isinstance(msg, Snapshot):
            msg.reply.send(self.snapshot(msg.with_bound))

    def sandbox_released(self, sandbox_id: str) -> None:
        res = self.bound.pop(sandbox_id, None)
        if res is not None:
            self._release(res)

    def snapshot(self, with_bound: bool) -> MemSnapshot:
        led = self.ledger
        return MemSnapshot(
            total_mb=led.total_mb,
            used_mb=led.used_mb,
            free_mb=led.free_mb,
            waiting_mb=led.waiting_mb,
            waiters=led.waiters,
            bound={sid: r.mb for sid, r in self.bound.items()} if with_bound else {},
        )

    def _grant(self, msg: Reserve) -> None:
        self.pending[msg.reservation.id] = msg.reservation
        if not msg.reply.send(msg.reservation):
            self._release(msg.reservation)  # the waiter left meanwhile

    def _release(self, res: Reservation) -> None:
        if res.released:
            return
        res.released = True
        self.pending.pop(res.id, None)
        if res.sandbox_id is not None:
            self.bound.pop(res.sandbox_id, None)
        self.ledger.release(res.mb)
        self._grant_waiters()

    def _grant_waiters(self) -> None:
        for rid in self.ledger.grant_waiters():
            self._grant(self.waiting.pop(rid))

    def fail_waiters(self) -> None:
        for msg in self.waiting.values():
            msg.reply.fail(ActorGone("the memory pool stopped"))
        self.waiting.clear()


async def run_mempool(
    total_mb: int,
    timeout_s: float,
    pool: SandboxPool,
    *,
    task_status: trio.TaskStatus[MemPoolRef] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the memory pool until cancelled, releasing the reservations of ``pool``'s sandboxes.

    Releases happen in a listener of the pool, synchronously as each sandbox
    is released, so memory is free (and waiters granted) by the time the
    ``destroy`` that released it returns: the evictor never sees memory it
    already freed as still missing.
    """
    send, inbox = trio.open_memory_channel[MemPoolMessage](65536)
    state = MemPool(total_mb)
    ref = MemPoolRef(send, total_mb, timeout_s, state)

    def released(event: SandboxEvent) -> None:
        if isinstance(event, SandboxDestroyed):
            state.sandbox_released(event.sandbox.id)

    unlisten = pool.listen(released)
    try:
        task_status.started(ref)
        async for msg in inbox:
            state.handle(msg, ref.pressure_send)
    finally:
        unlisten()
        state.fail_waiters()
        inbox.close()
