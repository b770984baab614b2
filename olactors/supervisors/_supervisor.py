"""Supervision in the Erlang/OTP style, for trio tasks.

A child is described by a :class:`ChildSpec`: how to run it, its restart type
and its restart intensity.  :func:`supervise` runs it:

* ``PERMANENT`` children are restarted whenever they end; ``TRANSIENT`` ones
  only when they crash (raise); ``TEMPORARY`` ones never.
* More than ``max_restarts`` restarts within ``period_s`` means restarting
  does not help: the supervisor stops and *escalates* — it calls
  ``on_escalate(name, cause)`` so the parent can react (report errors,
  back off) instead of looping.  A crash with :class:`Unrecoverable` says
  so itself and escalates at once, whatever the intensity.
* Shutdown: :meth:`ChildHandle.stop` asks the child to finish (its
  ``request_stop`` hook, e.g. closing its inbox), waits until a deadline,
  then cancels it ("kill").

Cancellation of the surrounding nursery cancels the child at once; a crash is
an ``Exception`` — ``trio.Cancelled`` and other ``BaseException``s are never
treated as crashes.

Every restart and escalation is logged on ``olactors.supervisor`` with the
record attributes ``supervision`` ("restarted" / "escalated"), ``child``
(the spec's name) and ``serial`` (the handle's), and on an escalation
``unrecoverable`` (whether the crash said so), for whoever wants to follow
them (simulations do).
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from .._restart import RestartIntensity

log = logging.getLogger("olactors.supervisor")


class Unrecoverable(Exception):
    """A crash that restarting cannot fix (a deterministic failure, e.g. of a
    function's own code): its supervisor escalates at once, whatever its
    restart intensity, which measures failures in quick succession and so
    would never see failures that each take longer than its period."""


class Restart(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    run: Callable[[], Awaitable[None]]
    restart: Restart = Restart.TRANSIENT
    max_restarts: int = 3
    period_s: float = 5.0
    #: Asks a running child to finish on its own (see ChildHandle.stop).
    request_stop: Callable[[], None] = lambda: None


_serials = itertools.count(1)


@dataclass(eq=False)
class ChildHandle:
    spec: ChildSpec
    #: Unique per supervised child in this process (names repeat: ``fn/1`` again
    #: after the function restarted).
    serial: int = field(default_factory=lambda: next(_serials))
    restarts: int = 0
    escalated: BaseException | None = None
    done: trio.Event = field(default_factory=trio.Event)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def stop(self, deadline: float) -> None:
        """Ask the child to finish; cancel it if it has not by ``deadline`` (trio time)."""
        if self.done.is_set():
            return
        self.spec.request_stop()
        with trio.move_on_at(deadline):
            await self.done.wait()
        if not self.done.is_set():
            log.warning("%s did not stop in time; cancelling it", self.spec.name)
            self.cancel_scope.cancel()
            await self.done.wait()


async def supervise(
    spec: ChildSpec,
    on_escalate: Callable[[str, BaseException], None],
    *,
    task_status: trio.TaskStatus[ChildHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``spec``'s child under its restart rules until it ends for good."""
    handle = ChildHandle(spec)
    intensity = RestartIntensity(spec.max_restarts, spec.period_s)
    task_status.started(handle)
    try:
        with handle.cancel_scope:
            while True:
                try:
                    await spec.run()
                    crashed: Exception | None = None
                except Exception as exc:
                    crashed = exc
                if crashed is None and spec.restart is not Restart.PERMANENT:
                    return
                if spec.restart is Restart.TEMPORARY:
                    log.warning("%s crashed (temporary, not restarted): %r", spec.name, crashed)
                    return
                unrecoverable = isinstance(crashed, Unrecoverable)
                if unrecoverable or not intensity.record(trio.current_time()):
                    cause = crashed or RuntimeError(f"{spec.name} kept exiting")
                    handle.escalated = cause
                    log.error(
                        "%s: %s; escalating: %s",
                        spec.name,
                        "restarting cannot fix it"
                        if unrecoverable
                        else f"more than {spec.max_restarts} restarts in {spec.period_s:.1f} s",
                        cause,
                        extra={
                            "supervision": "escalated",
                            "child": spec.name,
                            "serial": handle.serial,
                            "unrecoverable": unrecoverable,
                        },
                    )
                    on_escalate(spec.name, cause)
                    return
                handle.restarts += 1
                log.info(
                    "%s restarted (%d) after: %r",
                    spec.name,
                    handle.restarts,
                    crashed,
                    extra={"supervision": "restarted", "child": spec.name, "serial": handle.serial},
                )
    finally:
        handle.done.set()
