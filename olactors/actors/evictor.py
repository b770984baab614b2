"""Evictor: keeps the memory pool's free-memory goal by destroying idle sandboxes.

It follows the sandbox pool's events (to know every live sandbox and when
its state last changed) and wakes on them, on memory-pool pressure (someone
started waiting) and on a timer.  Each round it asks the memory pool how
much is free and waiting, lets the pure rules and the configured policy
(:func:`olactors._eviction.choose_victims`, ``memory.eviction_policy``) pick
victims, and destroys them in tasks of its own, at most
``memory.max_concurrent_evictions`` at a time.  A paused victim is destroyed
with ``destroy_if_paused`` (if it was unpaused meanwhile it is spared); a
running one, only in a critical round (someone waits for memory and nothing
paused can cover it), with ``destroy_if_childless``.  Both re-check under the
sandbox's lock that it has no live children, so a zygote that forked since
the round is spared.

The events come over a bounded subscription.  If the evictor falls a full
buffer behind, the pool closes its channel (it can no longer know the true
state from events alone); the evictor then resubscribes and rebuilds its view
from ``pool.sandboxes()`` (:meth:`Evictor.resync`), logs a warning and counts
it in ``Evictor.resyncs`` (shown in ``/stats``).  It stops following events
only when the pool's events are closed for good (the pool shut down).

``Evictor.audit``, when set, is called with every round's
:class:`EvictionRound` (simulations check the rules with it).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import trio

from .._causes import Cause, CauseCode
from .._eviction import (
    Candidate,
    EvictionPolicy,
    OpenLambdaPolicy,
    PausedQueue,
    choose_victims,
)
from .._metrics import Metrics
from ..sock import (
    Sandbox,
    SandboxChildExited,
    SandboxCreated,
    SandboxDestroyed,
    SandboxEvent,
    SandboxForked,
    SandboxPaused,
    SandboxPool,
    SandboxState,
    SandboxUnpaused,
)
from .mempool import MemPoolRef

log = logging.getLogger("olactors.evictor")


def _sandbox_id(key: Hashable) -> str:
    """The evictor's candidates and queue items are keyed by sandbox id."""
    assert isinstance(key, str)
    return key


@dataclass(slots=True)
class Tracked:
    sandbox: Sandbox
    state_since: float  # its last state change: OpenLambda's queue position
    order: int  # creation sequence: the deterministic tie-break


@dataclass(frozen=True, slots=True)
class EvictionRound:
    """One decision: what was needed and what was chosen (as seen then)."""

    at: float
    need_mb: int
    critical: bool
    limit: int
    victims: tuple[Candidate, ...]


class Evictor:
    def __init__(
        self,
        mempool: MemPoolRef,
        metrics: Metrics,
        free_goal_mb: int,
        interval_s: float,
        max_concurrent: int,
        policy: EvictionPolicy | None = None,
    ) -> None:
        self.mempool = mempool
        self.metrics = metrics
        self.free_goal_mb = free_goal_mb
        self.interval_s = interval_s
        self.max_concurrent = max_concurrent
        self.policy = policy if policy is not None else OpenLambdaPolicy()
        self.tracked: dict[str, Tracked] = {}
        self.paused = PausedQueue()  # paused sandboxes in the policy's order
        self.evicting: dict[str, int] = {}  # sandbox id -> MB being freed
        self.rounds = 0
        #: Times the event subscription was lost (fell behind) and the view rebuilt.
        self.resyncs = 0
        self.starved = False  # the last round could not free all it needed
        self.audit: Callable[[EvictionRound], None] | None = None
        self._order = itertools.count()
        self._wake_send, self._wake = trio.open_memory_channel[None](1)

    # ------------------------------------------------------------- inputs
    def observe(self, event: SandboxEvent) -> None:
        now = trio.current_time()
        if isinstance(event, SandboxCreated):
            self.tracked[event.sandbox.id] = Tracked(event.sandbox, now, next(self._order))
            return
        if isinstance(event, SandboxDestroyed):
            self.tracked.pop(event.sandbox.id, None)
            self.paused.discard(event.sandbox.id)
            return
        if isinstance(event, (SandboxForked, SandboxChildExited)):
            changed = event.parent  # a zygote's children changed
        else:
            changed = event.sandbox
        tracked = self.tracked.get(changed.id)
        if tracked is None:
            return
        tracked.state_since = now
        if isinstance(event, SandboxPaused):
            candidate = self._candidate(tracked)
            self.paused.add(changed.id, self.policy.key(candidate), tracked.order)
        elif isinstance(event, SandboxUnpaused):
            self.paused.discard(changed.id)
        if self.starved and isinstance(event, (SandboxPaused, SandboxChildExited)):
            self.wake()  # maybe the candidate the last round lacked

    def resync(self, sandboxes: list[Sandbox]) -> None:
        """Rebuild the view from the pool's own list after events were lost.

        Sandboxes gone since are forgotten, new ones tracked (as changed now),
        and the paused queue made to hold exactly the paused ones; sandboxes
        still known keep their queue position.  Then a round is due.
        """
        now = trio.current_time()
        live = {sb.id: sb for sb in sandboxes}
        for sid in [sid for sid in self.tracked if sid not in live]:
            del self.tracked[sid]
            self.paused.discard(sid)
        for sid, sb in live.items():
            tracked = self.tracked.get(sid)
            if tracked is None or tracked.sandbox is not sb:
                tracked = self.tracked[sid] = Tracked(sb, now, next(self._order))
                self.paused.discard(sid)
            if sb.state is SandboxState.PAUSED:
                if sid not in self.paused:
                    self.paused.add(sid, self.policy.key(self._candidate(tracked)), tracked.order)
            else:
                self.paused.discard(sid)
        self.wake()

    def wake(self) -> None:
        try:
            self._wake_send.send_nowait(None)
        except trio.WouldBlock:
            pass  # a wake-up is already pending

    # ------------------------------------------------------------ decisions
    def _candidate(self, tracked: Tracked) -> Candidate:
        sb = tracked.sandbox
        return Candidate(
            key=sb.id,
            paused=sb.state is SandboxState.PAUSED,
            children=sb.live_children,
            mem_mb=self.mempool.reserved_mb(sb.id),
            last_used=sb.last_used,
            state_since=tracked.state_since,
            uses=sb.uses,
            startup_s=sb.startup_s,
            order=tracked.order,
        )

    def _still_paused(self, sid: Hashable) -> Tracked | None:
        tracked = self.tracked.get(_sandbox_id(sid))
        if tracked is None or tracked.sandbox.state is not SandboxState.PAUSED:
            return None
        return tracked

    async def round(self, nursery: trio.Nursery) -> None:
        """Choose and start evictions, if memory is needed.  Synchronous at
        heart (it reads the memory pool's ledger), so nothing changes between
        looking and choosing."""
        self.rounds += 1
        slots = self.max_concurrent - len(self.evicting)
        if slots <= 0:
            return
        ledger = self.mempool.ledger
        in_flight = sum(self.evicting.values())
        need = max(self.free_goal_mb - ledger.free_mb, ledger.head_need_mb()) - in_flight
        self.starved = False
        if need <= 0:
            return
        critical = ledger.waiters > 0
        victims: list[Candidate] = []
        freed = 0

        def evictable(sid: Hashable, key: float) -> bool:
            tracked = self._still_paused(sid)
            if tracked is None:
                return True  # stale: taken out of the queue, skipped below
            reserved = self.mempool.reserved_mb(_sandbox_id(sid))
            return not tracked.sandbox.live_children and reserved > 0

        for sid, key in self.paused.take(evictable):
            tracked = self._still_paused(sid)
            if tracked is None:
                continue
            victim = self._candidate(tracked)
            self.policy.evicted(victim, key)
            victims.append(victim)
            freed += victim.mem_mb
            if freed >= need or len(victims) >= slots:
                break  # the rest stay queued
        if freed < need and critical and len(victims) < slots:
            running = [
                self._candidate(t)
                for sid, t in self.tracked.items()
                if sid not in self.evicting and t.sandbox.state is SandboxState.RUNNING
            ]
            for victim in choose_victims(
                self.policy, running, need - freed, critical=True, limit=slots - len(victims)
            ):
                victims.append(victim)
                freed += victim.mem_mb
        self.starved = freed < need
        if self.audit is not None:
            self.audit(EvictionRound(trio.current_time(), need, critical, slots, tuple(victims)))
        for victim in victims:
            sid = _sandbox_id(victim.key)
            self.evicting[sid] = victim.mem_mb
            nursery.start_soon(self._evict, self.tracked[sid].sandbox, victim, need)

    async def _evict(self, sandbox: Sandbox, victim: Candidate, need: int) -> None:
        cause = Cause.of(CauseCode.EVICTED, policy=self.policy.name, needed_mb=need)
        try:
            if victim.paused:
                done = await sandbox.destroy_if_paused(cause)
            else:
                log.warning("evicting running sandbox %s: nothing paused frees enough", sandbox.id)
                done = await sandbox.destroy_if_childless(cause)
            if done:
                self.metrics.evictions += 1
                self.metrics.evicted_mb += victim.mem_mb
        except Exception:
            log.exception("evicting %s failed", sandbox.id)
        finally:
            self.evicting.pop(_sandbox_id(victim.key), None)
            self.wake()


async def run_evictor(
    mempool: MemPoolRef,
    metrics: Metrics,
    pool: SandboxPool,
    *,
    buffer: int = 256,
    free_goal_mb: int,
    interval_s: float,
    max_concurrent: int,
    policy: EvictionPolicy | None = None,
    task_status: trio.TaskStatus[Evictor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled, following ``pool``'s events over a subscription of
    ``buffer`` (resubscribing if it falls behind); ``policy`` orders the
    candidates (default: OpenLambda's)."""
    evictor = Evictor(mempool, metrics, free_goal_mb, interval_s, max_concurrent, policy)
    events = pool.subscribe(buffer)

    async def follow_events() -> None:
        nonlocal events
        while True:
            async with events:
                async for event in events:
                    evictor.observe(event)
            try:
                # Subscribing and listing happen in one step (no checkpoint): the
                # list is the state just before the first event of the new channel.
                events = pool.subscribe(buffer)
            except trio.ClosedResourceError:
                return  # the pool shut down: there are no more events
            evictor.resyncs += 1
            log.warning(
                "evictor fell %d events behind the sandbox pool; resubscribed and "
                "rebuilt its view from the pool (%d resyncs so far)",
                buffer,
                evictor.resyncs,
            )
            evictor.resync(pool.sandboxes())

    async def follow_pressure() -> None:
        async for _ in mempool.pressure:
            evictor.wake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_events)
        nursery.start_soon(follow_pressure)
        task_status.started(evictor)
        while True:
            with trio.move_on_after(interval_s):
                await evictor._wake.receive()
            await evictor.round(nursery)
