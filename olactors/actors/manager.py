"""LambdaManager: routes a function name to its FunctionActor.

A function actor is spawned on first use and removed when it stops (idle or
never found), so the manager's table only holds functions in use.  Callers
use :meth:`ManagerRef.invoke`; the request goes straight into the function's
bounded queue (429 when full) — without a message to the manager when the
function is already running (its table is shared read-only with the ref).
:meth:`ManagerRef.drain` closes every queue: functions serve what was queued
and stop, and new requests get 503.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from .._access import Access
from .._errors import ShuttingDown
from .._records import CallTrace
from ..sock import Invocation, InvocationResult
from ._calls import Reply, ask
from ._deps import Deps
from ._requests import CallRequest
from .function import FunctionActor, FunctionRef, FunctionStatus, FunctionStopped, run_function

log = logging.getLogger("olactors.manager")


@dataclass(frozen=True, slots=True)
class GetFunction:
    name: str
    reply: Reply[FunctionRef]


@dataclass(frozen=True, slots=True)
class FunctionGone:
    ref: FunctionRef


@dataclass(frozen=True, slots=True)
class Drain:
    reply: Reply[None]


@dataclass(frozen=True, slots=True)
class ListFunctions:
    reply: Reply[list[FunctionStatus]]


ManagerMessage = GetFunction | FunctionGone | Drain | ListFunctions


class ManagerRef:
    def __init__(
        self, inbox: trio.MemorySendChannel[ManagerMessage], running: dict[str, FunctionRef]
    ) -> None:
        self._inbox = inbox
        self._running = running  # the manager's table of live functions (read here only)

    async def invoke(
        self,
        name: str,
        inv: Invocation,
        request_id: str,
        trace: CallTrace | None = None,
        admitted: Access | None = None,
    ) -> InvocationResult:
        """Run one call of ``name``; raises the OlactorsError that answers it.
        ``trace`` (default: a fresh one) is filled in on the way (see CallTrace).
        ``admitted``: the access the call was admitted under (see CallRequest).

        A running function gets the request straight into its queue; only
        a function not running (or stopping) is asked of the manager.
        """
        ref = self._running.get(name)
        trace = trace if trace is not None else CallTrace()
        for _attempt in range(3):
            if ref is None or ref.stopped:
                ref = await ask(self._inbox, GetFunction(name, Reply()))
            req = CallRequest(name, inv, request_id, Reply(), trio.current_time(), trace, admitted)
            try:
                ref.submit(req)
            except FunctionStopped:
                ref = None  # it idled out (or shuts down) just now: ask the manager
                continue
            return await req.reply.receive()
        raise ShuttingDown(f"function {name!r} keeps stopping; the worker is shutting down")

    async def functions(self) -> list[FunctionStatus]:
        return await ask(self._inbox, ListFunctions(Reply()))

    async def drain(self) -> None:
        """Stop taking requests; return when every function has served its queue and stopped."""
        await ask(self._inbox, Drain(Reply()))


class Manager:
    def __init__(self, deps: Deps, inbox: trio.MemorySendChannel[ManagerMessage]) -> None:
        self.deps = deps
        self.inbox = inbox
        self.functions: dict[str, tuple[FunctionRef, FunctionActor]] = {}
        self.running: dict[str, FunctionRef] = {}  # shared with ManagerRef, read-only there
        self.draining: list[Reply[None]] = []

    def function_stopped(self, ref: FunctionRef) -> None:
        try:
            self.inbox.send_nowait(FunctionGone(ref))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.forget(ref)

    def forget(self, ref: FunctionRef) -> None:
        entry = self.functions.get(ref.name)
        if entry is not None and entry[0] is ref:
            del self.functions[ref.name]
            del self.running[ref.name]
        if not self.functions:
            for reply in self.draining:
                if not reply.answered:
                    reply.send(None)

    async def handle(self, msg: ManagerMessage, nursery: trio.Nursery) -> None:
        if isinstance(msg, GetFunction):
            if self.draining:
                msg.reply.fail(ShuttingDown("the worker is shutting down"))
                return
            entry = self.functions.get(msg.name)
            if entry is None or entry[0].stopped:
                # A stopped actor may still be stopping: the new one waits for it.
                previous = entry[0] if entry is not None else None
                entry = await nursery.start(
                    run_function, msg.name, self.deps, self.function_stopped, previous
                )
                self.functions[msg.name] = entry
                self.running[msg.name] = entry[0]
            msg.reply.send(entry[0])
        elif isinstance(msg, FunctionGone):
            self.forget(msg.ref)
        elif isinstance(msg, ListFunctions):
            msg.reply.send([actor.status() for _, actor in self.functions.values()])
        elif isinstance(msg, Drain):
            self.draining.append(msg.reply)
            for ref, _ in self.functions.values():
                ref.close()
            if not self.functions:
                msg.reply.send(None)


async def run_manager(
    deps: Deps, *, task_status: trio.TaskStatus[ManagerRef] = trio.TASK_STATUS_IGNORED
) -> None:
    send, inbox = trio.open_memory_channel[ManagerMessage](65536)
    manager = Manager(deps, send)
    async with trio.open_nursery() as nursery:
        task_status.started(ManagerRef(send, manager.running))
        async for msg in inbox:
            await manager.handle(msg, nursery)
