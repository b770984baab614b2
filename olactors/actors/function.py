"""FunctionActor: one per function in use; queue, scaling, code versions, supervision.

Requests arrive on a bounded channel of ``queue.max_depth``; a full queue
answers 429 at once (:meth:`FunctionRef.submit`).  The actor takes one
request at a time, makes sure the function's code is current (through the
code puller, which checks the registry at most once per ``registry.cache_s``;
its answer is reused until it expires), applies the ol.yaml method filter,
and hands the request to an idle instance, waiting for one if all are
busy.  While waiting it scales with :class:`olactors._scaling.Scaler`
(OpenLambda's rule, one step per ``functions.scale_interval_s``).
A call that waits longer than the function's runtime limit for an instance
to take it gets 429 ``queue_full`` then: a function that cannot keep up
tells its callers so instead of keeping them waiting without bound.

Each instance runs under a supervisor (:func:`olactors.supervisors.supervise`,
transient, ``functions.restart_intensity`` within ``restart_period_s``).  An
escalation puts the function in a failing state: for
``functions.failure_cooldown_s`` every request gets 503 ``function_failing``
with the cause, instead of sandboxes being restarted in a loop.

Before a call is given to an instance the function's granted secrets are
looked up (the secret store, at most ``registry.cache_s`` old): a secret
its ol.yaml declares but that is not granted answers 424
``secret_not_granted`` before any of its code runs, and a change of the
granted set (a value set again, a grant, a revoke) is handled like a code
change: new calls go to new instances, which get the new secrets.

On a code change, new requests go to instances of the new version; old
instances finish their call in hand and stop, and the old code snapshot is
released once the last of them is gone.  With no request for
``functions.idle_timeout_s`` (and none in flight) the actor stops its
instances, tells the code puller to forget the function, and exits: nothing
of the function stays but its metrics record.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass

import trio

from .._access import Access, AccessChanged
from .._causes import Cause, CauseCode, released
from .._errors import (
    FunctionFailing,
    FunctionNotFound,
    MethodNotAllowed,
    OlactorsError,
    QueueFull,
    SandboxUnavailable,
    SecretNotGranted,
)
from .._function_config import ResolvedLimits, effective_access, resolve_limits
from .._records import ColdReason
from .._scaling import RecentDurations, Scaler
from .._secrets import NO_SECRETS, GrantedSecrets
from ..supervisors import ChildHandle, ChildSpec, Restart, supervise
from ._calls import drain
from ._deps import Deps
from ._requests import CallRequest
from .code_puller import FunctionCode
from .instance import CallDone, Instance

log = logging.getLogger("olactors.function")


class FunctionStopped(Exception):
    """The function actor has stopped; ask the manager for a new one."""


@dataclass(frozen=True, slots=True)
class InstanceEscalated:
    instance_id: int
    cause: BaseException


@dataclass(frozen=True, slots=True)
class InstanceExited:
    instance_id: int


class FunctionRef:
    __slots__ = ("name", "_queue", "stopped", "finished", "retry_after_s")

    def __init__(self, name: str, queue: trio.MemorySendChannel[CallRequest], retry: float) -> None:
        self.name = name
        self._queue = queue
        #: It takes no more requests (it may still be stopping its instances).
        self.stopped = False
        #: Set once it has stopped everything and forgotten its code and network.
        self.finished = trio.Event()
        self.retry_after_s = retry

    def submit(self, req: CallRequest) -> None:
        """Queue ``req`` without waiting: QueueFull (429) when the queue is full."""
        if self.stopped:
            raise FunctionStopped(self.name)
        try:
            self._queue.send_nowait(req)
        except trio.WouldBlock:
            queued = self.queue_depth()
            raise QueueFull(
                f"function {self.name!r} has {queued} requests queued (queue.max_depth); "
                "retry later",
                self.retry_after_s,
                queued,
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise FunctionStopped(self.name) from None

    def queue_depth(self) -> int:
        return self._queue.statistics().current_buffer_used

    def close(self) -> None:
        """No more requests (shutdown): the actor serves what is queued, then stops."""
        self._queue.close()


@dataclass(eq=False, slots=True)
class Slot:
    instance: Instance
    requests: trio.MemorySendChannel[CallRequest]
    version: str
    handle: ChildHandle | None = None
    busy: bool = False
    retiring: bool = False
    #: The fingerprint of the secrets its sandboxes get (names and versions).
    secrets: tuple[tuple[str, int], ...] = ()


@dataclass(slots=True)
class FunctionStatus:
    """What the admin API shows of a live function."""

    name: str
    version: str | None
    queue_depth: int
    instances: int
    busy: int
    failing_until: float | None
    failing_reason: str | None


class FunctionActor:
    def __init__(self, name: str, deps: Deps, ref: FunctionRef, queue, nursery) -> None:
        cfg = deps.config.functions
        self.name = name
        self.deps = deps
        self.ref = ref
        self.queue: trio.MemoryReceiveChannel[CallRequest] = queue
        self.nursery: trio.Nursery = nursery
        self.code: FunctionCode | None = None
        self.code_until = -float("inf")  # the puller's answer stands until then
        self.limits: ResolvedLimits | None = None
        self.slots: dict[int, Slot] = {}
        self.idle: list[int] = []  # most recently used last
        self.versions: Counter[str] = Counter()
        self.durations = RecentDurations()
        self.scaler = Scaler(cfg.scale_interval_s, cfg.max_instances)
        self.failing_until = -float("inf")
        self.failing_reason = ""
        self.last_activity = trio.current_time()
        self.stop_now = False
        self._ids = itertools.count(1)
        bound = 3 * cfg.max_instances + 8
        self.notices_send, self.notices = trio.open_memory_channel[object](bound)
        self._changed = trio.Event()  # set when a notice changed the instances' state
        #: Instances of an older version were retired: the next one's first sandbox
        #: is cold because the code changed (ColdReason.CODE_UPDATED).
        self._code_updated = False
        #: The secrets granted to the function as last looked up.
        self.secrets: GrantedSecrets = NO_SECRETS
        #: Instances were retired for a change of secrets (ColdReason.SECRETS_CHANGED).
        self._secrets_changed = False

    async def follow_notices(self) -> None:
        """Apply instance notices as they come (a task of this actor)."""
        async for notice in self.notices:
            version = self._handle_notice(notice)
            self._changed.set()
            if version is not None:
                await self.deps.puller.release(self.name, version)

    # ------------------------------------------------------------ main loop
    async def run(self) -> None:
        try:
            while True:
                req = await self._next_request()
                if req is None:
                    break
                self.last_activity = trio.current_time()
                try:
                    await self._dispatch(req)
                except OlactorsError as exc:
                    req.reply.fail(exc)
                except BaseException:
                    req.reply.close("the function stopped")
                    raise
        finally:
            self._close_queue()
            with trio.CancelScope(shield=True):
                await self._stop_instances()
                await self.deps.pool.forget_network(self.name)
                try:
                    await self.deps.puller.forget(self.name)
                except OlactorsError:
                    pass  # the puller stopped first (shutdown): it removes every snapshot

    async def _next_request(self) -> CallRequest | None:
        """The next request, or None when the function should stop (idle or shut down).

        Idle means no request and no call in flight for ``idle_timeout_s``
        since the last activity (a request taken or a call finished).
        """
        timeout = self.deps.config.functions.idle_timeout_s
        while True:
            busy = any(s.busy for s in self.slots.values())
            if self.stop_now and not busy and not self.ref.queue_depth():
                return None
            now = trio.current_time()
            deadline = now + timeout if busy else self.last_activity + timeout
            if now >= deadline:
                return None
            # While calls run, wake up at the deadline anyway to look at their notices.
            with trio.move_on_at(deadline):
                try:
                    return await self.queue.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return None

    async def _dispatch(self, req: CallRequest) -> None:
        if req.reply.abandoned:
            return
        self._check_failing()
        code = self.code
        if code is None or trio.current_time() >= self.code_until:
            try:
                code, until = await self.deps.puller.pull_until(self.name)
            except FunctionNotFound:
                if self.code is None:
                    self.stop_now = True  # never existed: keep no state for it
                raise
            if self.code is None or code.version != self.code.version:
                self._switch(code)  # BadFunction (bad limits): asked again next time
            self.code_until = until
        if (
            req.admitted is Access.PUBLIC
            and effective_access(code.config, self.deps.config) is Access.PRIVATE
        ):
            # Admitted by an ol.yaml of before; first of all checks, so nothing
            # of the private function (its methods, its secrets) shows.
            raise AccessChanged(f"function {self.name!r} became private while the call waited")
        methods = code.config.methods
        method = req.invocation.method.upper()
        if methods and method not in methods and not (method == "HEAD" and "GET" in methods):
            raise MethodNotAllowed(
                f"function {self.name!r} accepts {', '.join(methods)}, not {method}", methods
            )
        source = self.deps.secrets
        granted = NO_SECRETS if source is None else source.cached(self.name, trio.current_time())
        if granted is None:  # a look at the state dir is due
            assert source is not None
            granted = await source.for_function(self.name)
        self._check_secrets(code, granted)
        self._check_waited(req)
        slot = await self._idle_instance(req)
        slot.busy = True
        req.trace.version = slot.version
        req.trace.queue_ms = (trio.current_time() - req.submitted) * 1000
        slot.requests.send_nowait(req)

    def _check_secrets(self, code: FunctionCode, granted: GrantedSecrets) -> None:
        """``granted``: the function's secrets, as of at most ``registry.cache_s``
        ago.  A changed set retires the instances holding the old one, first:
        a revoked secret must not stay mounted in an idle sandbox while its
        function's calls are refused; then SecretNotGranted (424) for a
        declared one that is not granted."""
        if granted is not self.secrets and granted.fingerprint != self.secrets.fingerprint:
            self._switch_secrets(granted)
        if code.config.secrets:
            names = granted.names
            for name in code.config.secrets:
                if name not in names:
                    raise SecretNotGranted(
                        f"function {self.name!r} declares the secret {name!r} in its ol.yaml, "
                        f"but it is not granted to it (olactors secret grant {name} {self.name})",
                        name,
                    )

    def _switch_secrets(self, granted: GrantedSecrets) -> None:
        """New calls go to new instances with ``granted``; the old ones finish
        their call in hand and stop (their sandboxes are released)."""
        if self.slots:
            log.info("%s: its secrets changed; replacing its instances", self.name)
        self.secrets = granted
        changed = released("its secrets changed")
        for slot in list(self.slots.values()):
            if slot.secrets != granted.fingerprint and not slot.retiring:
                slot.instance.stop_cause = changed
                self._retire(slot)
                self._secrets_changed = True

    def _check_waited(self, req: CallRequest) -> None:
        """QueueFull (429) for a call that has waited longer than its function's
        runtime limit without an instance to take it: the function cannot keep up,
        and the caller hears so instead of waiting on (its whole call then takes
        at most about twice the runtime limit plus the sandbox's start)."""
        assert self.limits is not None
        waited = trio.current_time() - req.submitted
        if waited > self.limits.runtime_s:
            raise QueueFull(
                f"function {self.name!r} could not start this call within its runtime limit "
                f"of {self.limits.runtime_s:g} s (limits.runtime_s): all its instances were "
                "busy or starting; retry later",
                self.ref.retry_after_s,
                self.ref.queue_depth(),
            )

    def _check_failing(self) -> None:
        failing = self._failing()
        if failing is not None:
            raise failing

    def _failing(self) -> FunctionFailing | None:
        """The 503 for requests while the function is failing, else None."""
        remaining = self.failing_until - trio.current_time()
        if remaining <= 0:
            return None
        return FunctionFailing(
            f"function {self.name!r} is failing: {self.failing_reason} "
            f"(its sandboxes failed more than functions.restart_intensity times within "
            f"functions.restart_period_s, or its import outlasted limits.init_s; "
            f"retrying in {remaining:.1f} s)",
            remaining,
        )

    # ------------------------------------------------------------ instances
    def _switch(self, code: FunctionCode) -> None:
        limits = resolve_limits(code.config, self.deps.config)  # BadFunction on bad limits
        if self.code is not None:
            log.info("%s: code changed %s -> %s", self.name, self.code.version, code.version)
        self.code, self.limits = code, limits
        self.failing_until = -float("inf")  # new code deserves a fresh start
        updated = Cause.of(CauseCode.CODE_UPDATED, version=code.version)
        for slot in list(self.slots.values()):
            if slot.version != code.version:
                slot.instance.stop_cause = updated
                self._retire(slot)
                self._code_updated = True

    async def _idle_instance(self, req: CallRequest) -> Slot:
        interval = self.deps.config.functions.scale_interval_s
        while True:
            self._check_failing()
            self._check_waited(req)
            current = [s for s in self.slots.values() if not s.retiring]
            busy = sum(1 for s in current if s.busy)
            outstanding = self.ref.queue_depth() + 1 + busy
            step = self.scaler.decide(
                trio.current_time(), len(current), outstanding, self.durations.mean_ms
            )
            if not current or (step > 0 and not self.idle):
                await self._spawn()
            elif step < 0 and len(self.idle) > 1:
                self._retire(self.slots[self.idle[0]])  # the least recently used idle one
            if self.idle:
                return self.slots[self.idle.pop()]
            self._changed = trio.Event()
            with trio.move_on_after(interval):
                await self._changed.wait()

    async def _spawn(self) -> None:
        assert self.code is not None and self.limits is not None
        cfg = self.deps.config.functions
        iid = next(self._ids)
        send, receive = trio.open_memory_channel[CallRequest](1)
        instance = Instance(
            iid, self.code, self.limits, self.deps, receive, self.notices_send, self.secrets
        )
        busy = any(s.busy for s in self.slots.values() if not s.retiring)
        if self._code_updated:
            instance.cold_reason = ColdReason.CODE_UPDATED
            self._code_updated = False  # the first sandbox of the new version only
        elif self._secrets_changed:
            instance.cold_reason = ColdReason.SECRETS_CHANGED
            self._secrets_changed = False
        elif busy:
            instance.cold_reason = ColdReason.SCALED_UP
        slot = Slot(instance, send, self.code.version, secrets=self.secrets.fingerprint)
        self.slots[iid] = slot
        self.versions[slot.version] += 1
        spec = ChildSpec(
            name=f"{self.name}/{iid}",
            run=instance.run,
            restart=Restart.TRANSIENT,
            max_restarts=cfg.restart_intensity,
            period_s=cfg.restart_period_s,
            request_stop=send.close,
        )
        slot.handle = await self.nursery.start(self._supervised, spec, iid)
        self.idle.append(iid)

    async def _supervised(self, spec: ChildSpec, iid: int, *, task_status) -> None:
        def escalate(_name: str, cause: BaseException) -> None:
            self.notices_send.send_nowait(InstanceEscalated(iid, cause))

        try:
            await supervise(spec, escalate, task_status=task_status)
        finally:
            try:
                self.notices_send.send_nowait(InstanceExited(iid))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _retire(self, slot: Slot) -> None:
        """Stop taking requests on ``slot``; it stops after its call in hand."""
        slot.retiring = True
        if slot.instance.id in self.idle:
            self.idle.remove(slot.instance.id)
        if not slot.busy:
            slot.requests.close()

    def _handle_notice(self, notice: object) -> str | None:
        """Apply one notice; returns a code version no instance uses any more."""
        if isinstance(notice, CallDone):
            slot = self.slots.get(notice.instance_id)
            if notice.duration_ms is not None:  # None: no handler ran (an init timeout)
                self.durations.add(notice.duration_ms)
            self.last_activity = max(self.last_activity, notice.finished_at)
            if slot is None:
                return None
            slot.busy = False
            if slot.retiring:
                slot.requests.close()
            elif notice.instance_id not in self.idle:
                self.idle.append(notice.instance_id)
        elif isinstance(notice, InstanceEscalated):
            cause = notice.cause
            self.failing_reason = getattr(cause, "message", None) or str(cause) or repr(cause)
            self.failing_until = trio.current_time() + self.deps.config.functions.failure_cooldown_s
            self.deps.metrics.escalations += 1
            log.error(
                "%s: failing for %.1f s: %s",
                self.name,
                self.deps.config.functions.failure_cooldown_s,
                self.failing_reason,
            )
        elif isinstance(notice, InstanceExited):
            slot = self.slots.pop(notice.instance_id, None)
            if notice.instance_id in self.idle:
                self.idle.remove(notice.instance_id)
            if slot is None:
                return None
            slot.requests.close()
            self._fail_undelivered(slot)
            self.versions[slot.version] -= 1
            if self.versions[slot.version] <= 0:
                del self.versions[slot.version]
                if self.code is None or slot.version != self.code.version:
                    return slot.version
        return None

    def _fail_undelivered(self, slot: Slot) -> None:
        """Answer a request handed to an instance that exited before taking it.

        A crashed call's notices arrive one by one (call done, escalated,
        exited); between the first and the last, the slot looked idle and
        may have been given the next request.  Its handler never started,
        so it gets the reason at once instead of waiting forever.
        """
        for req in drain(slot.instance.requests):
            req.reply.fail(
                self._failing()
                or SandboxUnavailable(
                    f"the instance of {self.name!r} given this request stopped before taking it"
                )
            )

    # ------------------------------------------------------------- shutdown
    def _close_queue(self) -> None:
        """Refuse new requests and fail every queued one (none is ever dropped)."""
        self.ref.stopped = True
        for req in drain(self.queue):
            req.reply.close("the function stopped")
        self.queue.close()

    async def _stop_instances(self) -> None:
        """Stop every instance: gracefully up to server.shutdown_timeout_s from now,
        never past the worker's shutdown deadline (then they are cancelled)."""
        grace = self.deps.config.server.shutdown_timeout_s
        stop_by = min(trio.current_time() + grace, self.deps.shutdown.at)
        async with trio.open_nursery() as nursery:
            for slot in list(self.slots.values()):
                if slot.handle is not None:
                    nursery.start_soon(slot.handle.stop, stop_by)

    def status(self) -> FunctionStatus:
        now = trio.current_time()
        return FunctionStatus(
            name=self.name,
            version=self.code.version if self.code else None,
            queue_depth=self.ref.queue_depth(),
            instances=len(self.slots),
            busy=sum(1 for s in self.slots.values() if s.busy),
            failing_until=(self.failing_until - now) if self.failing_until > now else None,
            failing_reason=self.failing_reason or None,
        )


async def run_function(
    name: str,
    deps: Deps,
    on_stopped,
    previous: FunctionRef | None = None,
    *,
    task_status: trio.TaskStatus[tuple[FunctionRef, FunctionActor]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the actor for ``name`` until it idles out or its queue is closed.

    ``previous``: the function's last actor, if it is still stopping. This one
    takes requests at once but serves none until that one has finished: its
    stop deletes its code snapshots and forgets its network, which must not
    happen under this one's sandboxes. ``on_stopped(ref)`` is called
    (synchronously) once it no longer takes requests.
    """
    send, receive = trio.open_memory_channel[CallRequest](deps.config.queue.max_depth)
    ref = FunctionRef(name, send, float(deps.config.queue.retry_after_s))
    try:
        async with trio.open_nursery() as nursery:
            actor = FunctionActor(name, deps, ref, receive, nursery)
            task_status.started((ref, actor))
            if previous is not None:
                await previous.finished.wait()
            nursery.start_soon(actor.follow_notices)
            await actor.run()
            nursery.cancel_scope.cancel()
    finally:
        ref.stopped = True
        ref.finished.set()
        on_stopped(ref)
