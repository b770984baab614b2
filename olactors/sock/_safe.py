"""SafeSandbox: the safety rules of the sandbox interface around any raw sandbox.

A raw sandbox (the real SOCK one, or a simulated one) implements only the
mechanics: ``invoke``, ``freeze``, ``thaw``, ``release`` (free everything),
``usage`` and ``diagnose`` (why did it die); forking is the pool's business.  This wrapper
adds, once for every implementation: serialised calls, the paused/dead state
machine, destroy-on-any-error, harmless calls after death, zygote reference
counting (a zygote's resources are released only when it and all its
descendants are gone) and lifecycle events.

A release that fails is never reported as a clean one.  The raw sandbox
raises :class:`ReleaseFailed`, saying whether its processes are gone:

* gone: the sandbox is released all the same (``SandboxDestroyed``, so its
  memory returns to the pool) with the ``leftovers`` named in the event;
* maybe not: it is *not* released.  It stays in its pool's list, dead, with
  its memory still reserved (processes that may run still use it), until a
  retry succeeds: when the pool sees its process exit (``died``), on
  :meth:`SafeSandbox.retry_release`, or when the pool closes.

Either way the failure is logged and counted (``EventHub.release_failures``).
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

import trio

from .._causes import Cause, CauseCode, SignalSender
from .._errors import SandboxDead, SandboxError, SandboxStateError, UnknownNetworkMode
from .._network import network_problem
from .._records import CallOutput
from ._api import (
    PACKAGES_MOUNT,
    Invocation,
    InvocationResult,
    PackageMount,
    SandboxCallUsage,
    SandboxChildExited,
    SandboxDestroyed,
    SandboxMeta,
    SandboxPaused,
    SandboxState,
    SandboxUnpaused,
    SandboxUsage,
)
from ._events import EventHub

log = logging.getLogger("olactors.sandbox")


class ReleaseFailed(SandboxError):
    """A raw sandbox's ``release`` could not free everything.

    ``processes_gone``: its processes are known to be gone (only files,
    mounts or cgroups were left); ``leftovers`` names what stayed.
    """

    def __init__(self, sandbox_id: str, leftovers: tuple[str, ...], processes_gone: bool) -> None:
        self.sandbox_id = sandbox_id
        self.leftovers = leftovers
        self.processes_gone = processes_gone
        state = "its processes are gone" if processes_gone else "its processes may still run"
        super().__init__(
            f"releasing sandbox {sandbox_id} left {', '.join(leftovers) or 'something'} ({state})"
        )


class RawSandbox(Protocol):
    """The mechanics of one sandbox.  ``release`` frees everything; it raises
    :class:`ReleaseFailed` when something stays and may be called again (a
    retry then does what is left)."""

    id: str
    is_leaf: bool
    meta: SandboxMeta

    @property
    def network(self) -> str: ...

    async def invoke(self, request: Invocation) -> InvocationResult: ...

    def call_output(self) -> CallOutput:
        """What the last call wrote (as far as it got, if it failed)."""
        ...

    def log_tail(self, max_bytes: int) -> str:
        """The last ``max_bytes`` of what it wrote outside any call."""
        ...

    async def freeze(self) -> None: ...

    async def thaw(self) -> None: ...

    async def release(self, cause: Cause) -> None: ...

    def usage(self) -> SandboxUsage: ...

    def call_usage(self) -> SandboxCallUsage: ...

    async def diagnose(self, error: BaseException | None) -> Cause:
        """Why did its process die (or fail with ``error``)?  ``UNKNOWN`` only
        when nothing else can be told."""
        ...


R = TypeVar("R", bound=RawSandbox)


def check_create(
    live: Mapping[str, SafeSandbox[R]], parent: object, meta: SandboxMeta
) -> SafeSandbox[R] | None:
    """The checks every pool's ``create`` makes before it builds anything.

    Returns the zygote to fork from (None for a fresh sandbox).  ``parent``
    must be a live sandbox of this pool (``live``), not a leaf, and running;
    the network must be known (zygotes have none: a forked leaf enters its
    own function's namespace, whatever its mode).
    """
    zygote = None
    if parent is not None:
        if not isinstance(parent, SafeSandbox) or live.get(parent.id) is not parent:
            raise SandboxError("parent is not a sandbox of this pool")
        zygote = parent
        if zygote.is_leaf:
            raise SandboxError(f"cannot fork from leaf {zygote.id}")
        zygote.check_running("zygote")  # fail fast, before making anything
    problem = network_problem(meta.network)
    if problem is not None:
        raise UnknownNetworkMode(meta.network, problem)
    check_package_mounts(meta.packages)
    if zygote is not None:
        missing = [m.target for m in zygote.meta.packages if m not in meta.packages]
        if missing:
            # Modules the zygote imported load more of themselves lazily, from these paths.
            raise SandboxError(
                f"cannot fork from zygote {zygote.id}: the new sandbox would not see "
                f"its package dirs {', '.join(missing)}"
            )
    return zygote


def check_package_mounts(mounts: tuple[PackageMount, ...]) -> None:
    """Each target is a distinct normalised path below ``/packages``; sources are absolute."""
    seen = set()
    for mount in mounts:
        target = mount.target
        if (
            not target.startswith(PACKAGES_MOUNT + "/")
            or posixpath.normpath(target) != target
            or target in seen
        ):
            raise SandboxError(f"bad package mount target {target!r}")
        if not os.path.isabs(mount.source):
            raise SandboxError(f"package mount source {mount.source!r} is not absolute")
        seen.add(target)


class SafeSandbox(Generic[R]):
    """Implements :class:`olactors.sock.Sandbox` around a :class:`RawSandbox`
    (generic in the pool's raw sandbox type, which each pool sees as its own)."""

    def __init__(
        self,
        raw: R,
        hub: EventHub,
        parent: SafeSandbox[R] | None,
        startup_s: float = 0.0,
    ) -> None:
        self.raw = raw
        self.parent = parent
        self._hub = hub
        self._lock = trio.Lock()
        self._state = SandboxState.RUNNING
        self._cause: Cause | None = None
        self._children = 0
        self._released = False
        self._releasing = False
        #: The last release failure, while the sandbox's processes may still run.
        self.release_failure: ReleaseFailed | None = None
        #: When it was last used: created, a call started, unpaused, or (a zygote) forked.
        self.last_used = trio.current_time()
        #: How often it was used: calls started, plus forks for a zygote.
        self.uses = 0
        #: How long its creation took (what evicting it costs the next cold start).
        self.startup_s = startup_s

    # ---------------------------------------------------------------- views
    @property
    def id(self) -> str:
        return self.raw.id

    @property
    def is_leaf(self) -> bool:
        return self.raw.is_leaf

    @property
    def state(self) -> SandboxState:
        return self._state

    @property
    def live_children(self) -> int:
        return self._children

    @property
    def death_cause(self) -> Cause | None:
        return self._cause

    @property
    def meta(self) -> SandboxMeta:
        return self.raw.meta

    @property
    def released(self) -> bool:
        return self._released

    @property
    def release_pending(self) -> bool:
        """Dead, but its release failed while its processes may run (retried later)."""
        return self.release_failure is not None

    @property
    def settled(self) -> bool:
        """Nothing more will happen to it without outside help: released, or
        dead and waiting only on a failed release or on live children."""
        return self._released or (
            self._state is SandboxState.DEAD
            and not self._releasing
            and (self.release_failure is not None or self._children > 0)
        )

    def usage(self) -> SandboxUsage:
        if self._released:
            return SandboxUsage()
        return self.raw.usage()

    def call_usage(self) -> SandboxCallUsage:
        if self._released:
            return SandboxCallUsage()
        return self.raw.call_usage()

    def log(self, max_bytes: int) -> str:
        return "" if self._released else self.raw.log_tail(max_bytes)

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} {self._state.value}{' leaf' if self.is_leaf else ' zygote'}>"

    # ------------------------------------------------------------ operations
    def _check_alive(self) -> None:
        if self._state is SandboxState.DEAD:
            cause = self._cause or Cause.of(CauseCode.UNKNOWN, error="destroyed")
            raise SandboxDead(f"sandbox {self.id} is destroyed: {cause.summary()}", cause)

    def check_running(self, what: str = "sandbox") -> None:
        """Raise SandboxDead if destroyed, SandboxStateError if paused."""
        self._check_alive()
        if self._state is SandboxState.PAUSED:
            raise SandboxStateError(f"{what} {self.id} is paused; unpause it first")

    async def _fail(self, exc: BaseException, doing: str) -> SandboxDead:
        # Shielded: a cancel here must not leave a broken sandbox RUNNING
        # (e.g. with half a response still in its connection).
        with trio.CancelScope(shield=True):
            cause = await self.raw.diagnose(exc)
            await self._destroy_locked(cause)
        err = SandboxDead(f"sandbox {self.id} failed while {doing}: {cause.summary()}", cause)
        err.__cause__ = exc
        return err

    async def invoke(self, request: Invocation, limit_s: float | None = None) -> InvocationResult:
        """Forward one request.  Cancellation mid-call destroys the sandbox
        (its connection state is unknown): past ``limit_s`` (the runtime
        limit) with cause ``timeout`` and SandboxDead raised; by the caller's
        own scope with cause ``signal`` SIGKILL sent by the worker."""
        async with self._lock:
            self.check_running()
            self.last_used = trio.current_time()
            self.uses += 1
            try:
                with trio.move_on_after(float("inf") if limit_s is None else limit_s) as scope:
                    return await self.raw.invoke(request)
            except trio.Cancelled:
                killed = Cause.of(
                    CauseCode.SIGNAL, signal="SIGKILL", sender=SignalSender.WORKER.value
                )
                with trio.CancelScope(shield=True):
                    await self._destroy_locked(killed)
                raise
            except Exception as exc:
                err = await self._fail(exc, "invoking")
                err.output = self.raw.call_output()
                raise err from exc
            assert limit_s is not None and scope.cancelled_caught
            timeout = Cause.of(CauseCode.TIMEOUT, limit_s=limit_s)
            with trio.CancelScope(shield=True):
                await self._destroy_locked(timeout)
            err = SandboxDead(
                f"sandbox {self.id} ran longer than its runtime limit of {limit_s:g} s", timeout
            )
            err.output = self.raw.call_output()
            raise err

    async def pause(self) -> None:
        async with self._lock:
            self._check_alive()
            if self._state is SandboxState.PAUSED:
                return
            try:
                await self.raw.freeze()
            except Exception as exc:
                raise await self._fail(exc, "pausing") from exc
            self._state = SandboxState.PAUSED
            self._hub.emit(SandboxPaused(self))

    async def unpause(self) -> None:
        async with self._lock:
            self._check_alive()
            if self._state is SandboxState.RUNNING:
                return
            try:
                await self.raw.thaw()
            except Exception as exc:
                raise await self._fail(exc, "unpausing") from exc
            self._state = SandboxState.RUNNING
            self.last_used = trio.current_time()
            self._hub.emit(SandboxUnpaused(self))

    async def destroy(self, cause: Cause) -> None:
        """Destroy; idempotent.  Shielded: a cancelled caller still leaves nothing behind."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._destroy_locked(cause)

    async def destroy_if_paused(self, cause: Cause) -> bool:
        """Destroy only if it is paused and has no live children (checked
        under the call lock, so nothing can slip in between); True if destroyed."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                destroyed = self._state is SandboxState.PAUSED and not self._children
                if destroyed:
                    await self._destroy_locked(cause)
        return destroyed

    async def destroy_if_childless(self, cause: Cause) -> bool:
        """Destroy, paused or running, only if it has no live children (checked
        under the call lock: a fork in progress finishes first); True if destroyed."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                destroyed = self._state is not SandboxState.DEAD and not self._children
                if destroyed:
                    await self._destroy_locked(cause)
        return destroyed

    async def died(self, exc: BaseException | None = None) -> None:
        """Called by the pool's watcher when the sandbox's process exited (on
        its own, or at last after a release that found it still running)."""
        if self._state is SandboxState.DEAD:
            if self.release_failure is not None:
                await self.retry_release()
            return
        cause = await self.raw.diagnose(exc)
        await self.destroy(cause)

    # -------------------------------------------------- zygote reference counts
    def descends_from(self, ancestor: SafeSandbox[R]) -> bool:
        """Was this sandbox forked from ``ancestor``, directly or through zygotes between?"""
        parent = self.parent
        while parent is not None:
            if parent is ancestor:
                return True
            parent = parent.parent
        return False

    def child_added(self) -> None:
        """The pool forked a child from this zygote (a use of the zygote)."""
        self._children += 1
        self.uses += 1
        self.last_used = trio.current_time()

    async def child_not_started(self) -> None:
        """Undo :meth:`child_added` for a child that failed before it was
        handed out (no event: it was never announced)."""
        self._children -= 1
        await self._release_if_unreferenced()

    async def child_gone(self, child: SafeSandbox) -> None:
        self._children -= 1
        self._hub.emit(SandboxChildExited(self, child))
        await self._release_if_unreferenced()

    async def _destroy_locked(self, cause: Cause) -> None:
        if self._state is SandboxState.DEAD:
            if self.release_failure is None:  # a failed one waits for an explicit retry
                await self._release_if_unreferenced()  # one cut short (not by a failure)
            return
        self._state = SandboxState.DEAD
        self._cause = cause
        await self._release_if_unreferenced()

    async def retry_release(self) -> bool:
        """Try again to release a sandbox whose release failed while its
        processes may have run; True once it is released."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                if self.release_failure is not None:
                    await self._release_if_unreferenced()
        return self._released

    async def _release_if_unreferenced(self) -> None:
        if (
            self._state is not SandboxState.DEAD
            or self._children > 0
            or self._released
            or self._releasing
        ):
            return
        self._releasing = True
        cause = self._cause or Cause.of(CauseCode.UNKNOWN, error="destroyed")
        with trio.CancelScope(shield=True):
            try:
                failure = await self._raw_release(cause)
            finally:
                self._releasing = False
            if failure is not None:
                self._hub.release_failed(self.id, str(failure), failure.processes_gone)
                if not failure.processes_gone:
                    self.release_failure = failure  # stays reserved, listed and dead
                    return
            self.release_failure = None
            self._released = True
            self._hub.released(self.id)
            leftovers = () if failure is None else failure.leftovers
            self._hub.emit(SandboxDestroyed(self, cause, leftovers))
            if self.parent is not None:
                await self.parent.child_gone(self)

    async def _raw_release(self, cause: Cause) -> ReleaseFailed | None:
        """The raw release; what it failed to free (never raised to a destroy caller)."""
        try:
            await self.raw.release(cause)
        except ReleaseFailed as exc:
            return exc
        except Exception as exc:  # unknown state: its processes may still run
            log.exception("releasing sandbox %s failed unexpectedly", self.id)
            failure = ReleaseFailed(self.id, (f"{type(exc).__name__}: {exc}",), False)
            failure.__cause__ = exc
            return failure
        return None


async def destroy_all(live: Mapping[str, SafeSandbox], cause: Cause) -> list[SafeSandbox]:
    """Destroy every sandbox in ``live`` (a closing pool's list), leaves first:
    a zygote is released only after its last child.

    Loops until every sandbox is settled (creations in flight add more).  A
    sandbox whose release failed gets one more try; those still unreleased
    are logged and returned (their processes may run: ``olactors cleanup``).
    """
    while unsettled := [sb for sb in live.values() if not sb.settled]:
        for sb in sorted(unsettled, key=lambda s: s.is_leaf, reverse=True):
            await sb.destroy(cause)
        await trio.lowlevel.checkpoint()
    for sb in sorted(live.values(), key=lambda s: s.is_leaf, reverse=True):
        await sb.retry_release()
    stuck = [sb for sb in live.values() if not sb.released]
    if stuck:
        log.error(
            "%d sandboxes could not be released (their processes may still run): %s",
            len(stuck),
            "; ".join(f"{sb.id}: {sb.release_failure or 'waits on its children'}" for sb in stuck),
        )
    return stuck
