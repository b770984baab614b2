"""InstanceActor: a robust virtual sandbox, backed by zero or one real one.

An instance serves its function's requests one at a time.  For each call it
needs a running sandbox and gets one by unpausing its own, else forking a
leaf from the import cache's zygote, else starting a fresh one — after
reserving the sandbox's memory limit from the memory pool.  Getting a sandbox
is tried twice (the handler never started, so a retry is safe) before the
call fails with ``sandbox_unavailable``.  When no request comes for
``functions.pause_after_s`` it pauses its sandbox.  ``reuse_sandbox: false``
destroys the sandbox after every call.

When its sandbox dies during a call, that call gets 502 ``sandbox_died``
with the diagnosis (a typed :class:`~olactors._causes.Cause`), and
:class:`InstanceFailure` is raised so the instance's supervisor counts a
restart: the next incarnation starts sandbox-less and creates a new sandbox
on its next call.  Whether a death counts is the cause's
``counts_against_function``: deaths that are not the function's fault
(evicted, code updated, worker shutdown, released, its zygote died) do not;
runtime-limit timeouts (504 with cause ``timeout``, the handler's own doing)
do not either.  An answer the worker refuses (malformed, or beyond
``limits.max_response_*``) destroys the sandbox too and is 502
``bad_response`` (cause ``bad_response``, counted like a death).

Each call's :class:`~olactors._records.CallTrace` gets the sandbox, whether it
was cold and why (:class:`~olactors._records.ColdReason`), the sandbox's CPU
time across the call, its peak memory and limit, and the cause of a failure.

Creating a sandbox runs the function's own code: a leaf imports it before it
is handed out (the *init phase*, bounded by ``limits.init_s``).  What goes
wrong there is the function's failure, not the sandbox's, so it is never
retried within the call:

* an import that raises is not a failure of the sandbox at all: the sandbox
  is kept and answers every call with 500 ``handler_import_failed`` and the
  traceback, at no further cost;
* a death during the import (an OOM at its memory limit, a crash in native
  code) answers 502 ``sandbox_died`` and counts a restart, like a death
  during a call (fast, so repeated ones hit the restart intensity);
* an import longer than ``init_s`` answers 504 ``init_timeout`` once and
  raises :class:`InitFailure`, which escalates at once: the function then
  answers 503 ``function_failing`` for ``functions.failure_cooldown_s``
  before it tries again.  The restart intensity could never catch these:
  each takes ``init_s`` (60 s by default) while the intensity counts
  failures within ``restart_period_s`` (10 s), so a function whose import
  always takes too long would hold a sandbox for ``init_s`` on every call,
  unnoticed.  An init timeout is a verdict on the code version, whatever
  the request, so the first one is enough.

An instance stops when its request channel is closed (after finishing the
call in hand) and then destroys its sandbox.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from .._causes import Cause, CauseCode, released
from .._errors import (
    BadFunction,
    BadSandboxResponse,
    HandlerTimeout,
    InitDied,
    InitFailed,
    InitTimeout,
    MemoryExhausted,
    OlactorsError,
    PackageInstallFailed,
    PackageResolutionFailed,
    SandboxDead,
    SandboxDied,
    SandboxError,
    SandboxUnavailable,
)
from .._function_config import ResolvedLimits
from .._records import NO_OUTPUT, CallTrace, ColdReason
from .._secrets import NO_SECRETS, GrantedSecrets, Redactor
from ..sock import Invocation, Sandbox, SandboxMeta, SandboxState
from ..sock._results import redact_runtime_error, runtime_error_cause
from ..supervisors import Unrecoverable
from ._acquire import SandboxAcquirer, SandboxKind
from ._deps import Deps
from ._requests import CallRequest
from .code_puller import FunctionCode

log = logging.getLogger("olactors.instance")
#: Why an instance that stops (idle, or its function stopped) drops its sandbox.
INSTANCE_STOPPED = released("instance stopped")


class InstanceFailure(Exception):
    """The instance's sandbox failed in a way its supervisor should count."""


class InitFailure(Unrecoverable):
    """The function's import outlasted its ``limits.init_s``: the supervisor
    escalates at once (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class CallDone:
    """Notice to the function: the instance finished a call (and is idle again).

    ``duration_ms`` is None for a call whose sandbox's import timed out: it
    never reached the handler, and ``init_s`` taken as a handler's time would
    scale the function out to more sandboxes, each spending ``init_s`` again.
    """

    instance_id: int
    duration_ms: float | None
    finished_at: float


class Instance:
    def __init__(
        self,
        instance_id: int,
        code: FunctionCode,
        limits: ResolvedLimits,
        deps: Deps,
        requests: trio.MemoryReceiveChannel[CallRequest],
        notices: trio.MemorySendChannel[object],
        secrets: GrantedSecrets = NO_SECRETS,
    ) -> None:
        self.id = instance_id
        #: What its sandboxes get at /run/secrets (fixed: a change replaces the instance).
        self.secrets = secrets
        self.redactor = Redactor(secrets.files) if secrets else None
        self.code = code
        self.limits = limits
        self.deps = deps
        self.requests = requests
        self.notices = notices
        self.sandbox: Sandbox | None = None
        self.calls = 0
        self._cpu_ns_seen = 0  # of the current sandbox, already added to the metrics
        #: The sandbox's CPU counter at the end of its last call (or its creation):
        #: a call's CPU time is the counter after it minus this, so a warm call
        #: reads the cgroup once, not twice (three counters through kept fds).
        self._cpu_ns_base: int | None = None
        #: Why its next sandbox will be cold (the function actor sets the first one's).
        self.cold_reason = ColdReason.FIRST
        #: Why it drops its sandbox when it stops (the function actor sets CODE_UPDATED).
        self.stop_cause: Cause = INSTANCE_STOPPED

    @property
    def name(self) -> str:
        return self.code.name

    async def run(self) -> None:
        """One incarnation: serve until the request channel closes; raises InstanceFailure."""
        try:
            while True:
                req = await self._next_request()
                if req is None:
                    return
                await self._serve(req)
        finally:
            await self._drop_sandbox(self._stop_cause())

    def _stop_cause(self) -> Cause:
        if self.deps.shutdown.requested:
            return Cause.of(CauseCode.WORKER_SHUTDOWN)
        return self.stop_cause

    async def _next_request(self) -> CallRequest | None:
        sb = self.sandbox
        if sb is not None and sb.state is SandboxState.RUNNING:
            with trio.move_on_after(self.deps.config.functions.pause_after_s):
                try:
                    return await self.requests.receive()
                except trio.EndOfChannel:
                    return None
            self._account(sb)
            try:
                await sb.pause()
            except SandboxError as exc:
                log.info("%s/%d: pausing failed: %s", self.name, self.id, exc.message)
                self.sandbox = None
                self.cold_reason = ColdReason.RESTARTED
        try:
            return await self.requests.receive()
        except trio.EndOfChannel:
            return None

    async def _serve(self, req: CallRequest) -> None:
        start = trio.current_time()
        handled = True
        try:
            await self._call(req)
        except InitFailure:
            handled = False
            raise
        finally:
            if not req.reply.answered:  # never leave a caller hanging
                req.reply.fail(
                    SandboxUnavailable("the instance stopped before answering", self._stop_cause())
                )
            now = trio.current_time()
            duration_ms = (now - start) * 1000 if handled else None
            try:
                self.notices.send_nowait(CallDone(self.id, duration_ms, now))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the function is gone (shutdown)

    async def _call(self, req: CallRequest) -> None:
        if req.reply.abandoned:
            return
        metrics = self.deps.metrics.function(self.name)
        trace = req.trace
        try:
            sb, cold = await self._sandbox_for_call(trace)
        except OlactorsError as exc:
            trace.cause = exc.cause
            req.reply.fail(exc)
            if isinstance(exc, InitTimeout):
                metrics.init_timeouts += 1
                raise InitFailure(exc.message) from exc
            if isinstance(exc, (SandboxUnavailable, InitDied)) and _counts(exc.cause):
                metrics.sandbox_failures += 1
                raise InstanceFailure(exc.message) from exc
            return
        if cold:
            metrics.cold_starts += 1
        else:
            metrics.warm_starts += 1
        self.calls += 1
        trace.sandbox = sb.id
        trace.memory_limit_mb = sb.meta.limits.mem_mb
        inv = req.invocation
        inv = Invocation(
            inv.method,
            inv.path,
            inv.query,
            (*inv.headers, ("x-olactors-script-name", f"/run/{self.name}")),
            inv.body,
        )
        runtime_s = self.limits.runtime_s
        try:
            result = await sb.invoke(inv, limit_s=runtime_s)
        except SandboxError as exc:
            self.sandbox = None
            self.cold_reason = ColdReason.RESTARTED
            cause = exc.cause or Cause.of(CauseCode.UNKNOWN, error=exc.message)
            trace.cause = cause
            trace.output = exc.output if isinstance(exc, SandboxDead) else NO_OUTPUT
            if cause.code is CauseCode.TIMEOUT:  # the handler's own doing: not counted
                req.reply.fail(
                    HandlerTimeout(
                        f"the handler ran longer than its runtime limit of {runtime_s:g} s "
                        "(limits.runtime_s); its sandbox was destroyed",
                        runtime_s,
                    )
                )
                return
            if cause.code is CauseCode.BAD_RESPONSE:
                failure: OlactorsError = BadSandboxResponse(
                    f"the sandbox's response was refused and the sandbox destroyed: "
                    f"{cause.summary()}",
                    cause,
                )
            else:
                failure = SandboxDied(f"the sandbox died during the call: {cause.summary()}", cause)
            req.reply.fail(failure)
            if cause.counts_against_function:
                metrics.sandbox_failures += 1
                raise InstanceFailure(cause.summary()) from exc
            return
        self._trace_usage(sb, trace)
        result = redact_runtime_error(result, self.redactor)
        trace.output = result.output
        trace.cause = runtime_error_cause(result)  # the handler raised, or its import failed
        req.reply.send(result)
        if not self.code.config.reuse_sandbox:
            await self._drop_sandbox(released("reuse_sandbox is false"))
            self.cold_reason = ColdReason.RESTARTED

    @staticmethod
    def _cpu_ns(sb: Sandbox) -> int | None:
        try:
            return sb.call_usage().cpu_ns
        except OlactorsError:
            return None

    def _trace_usage(self, sb: Sandbox, trace: CallTrace) -> None:
        """The sandbox's CPU time across the call (since its previous call
        ended, when it was idle or paused) and its peak memory so far."""
        try:
            usage = sb.call_usage()  # only what the record needs: it is read on every call
        except OlactorsError:
            self._cpu_ns_base = None
            return
        if self._cpu_ns_base is not None:
            trace.cpu_ms = max(0, usage.cpu_ns - self._cpu_ns_base) / 1e6
        self._cpu_ns_base = usage.cpu_ns
        trace.memory_peak_mb = usage.memory_peak_bytes / (1 << 20)

    async def _sandbox_for_call(self, trace: CallTrace) -> tuple[Sandbox, bool]:
        """A running sandbox and whether it was created for this call (then
        ``trace`` gets why: :attr:`cold_reason`, or EVICTED when its paused
        sandbox had been evicted)."""
        last: OlactorsError | None = None
        for _attempt in range(2):
            sb = self.sandbox
            if sb is not None and sb.state is SandboxState.DEAD:
                died = sb.death_cause
                evicted = died is not None and died.code is CauseCode.EVICTED
                self.cold_reason = ColdReason.EVICTED if evicted else ColdReason.RESTARTED
            if sb is not None and sb.state is SandboxState.PAUSED:
                try:
                    await sb.unpause()
                    return sb, False
                except SandboxError as exc:
                    last = exc
                    self.sandbox = None
                    self.cold_reason = ColdReason.RESTARTED
            elif sb is not None and sb.state is SandboxState.RUNNING:
                return sb, False
            self.sandbox = None
            try:
                self.sandbox = await self._create()
                self._cpu_ns_seen = 0
                self._cpu_ns_base = self._cpu_ns(self.sandbox)  # the import's CPU is not the call's
                trace.cold = True
                trace.cold_reason = self.cold_reason
                self.cold_reason = ColdReason.RESTARTED  # any later one replaces this one
                return self.sandbox, True
            except (
                MemoryExhausted,
                PackageResolutionFailed,
                PackageInstallFailed,
                BadFunction,
                InitFailed,
            ):
                raise  # not the sandbox's failure: a retry would fail the same way
            except OlactorsError as exc:
                last = exc
                log.warning("%s/%d: creating a sandbox failed: %s", self.name, self.id, exc.message)
        assert last is not None
        raise SandboxUnavailable(
            f"no sandbox could be started for {self.name}: {last.message}", last.cause
        )

    async def _create(self) -> Sandbox:
        """A new leaf (see :class:`SandboxAcquirer`): forked from the import
        cache's zygote for its packages, else fresh.  An :class:`InitFailed`
        (the function's own code) is raised as it is."""
        deps = self.deps
        config = self.code.config
        metrics = deps.metrics.function(self.name)
        import_cache = deps.import_cache

        def started() -> None:
            metrics.sandbox_starts += 1

        async with deps.packages.holding(config.dependencies) as packages:
            meta = SandboxMeta(
                network=self.limits.network,
                network_scope=self.name,  # the function's namespace, shared by its leaves
                env=dict(config.environment),
                entry=config.entry or "",
                label=self.name,
                packages=packages.mounts(),
                secrets=self.secrets.files,
            )
            acquirer = SandboxAcquirer(deps.pool, deps.mempool, deps.config)
            return await acquirer.acquire(
                SandboxKind.LEAF,
                meta,
                leaf_limits=self.limits.sandbox,
                code_dir=str(self.code.code_dir),
                fork_from=None if import_cache is None else lambda: import_cache.zygote(packages),
                on_attempt=started,
            )

    async def _drop_sandbox(self, cause: Cause) -> None:
        sb, self.sandbox = self.sandbox, None
        if sb is not None:
            self._account(sb)
            await sb.destroy(cause)

    def _account(self, sb: Sandbox) -> None:
        """Add the sandbox's CPU time since the last look, and its peak memory, to
        the function's metrics (read when it pauses or is dropped, off the call path)."""
        if sb.state is SandboxState.DEAD:
            return
        try:
            usage = sb.usage()
        except OlactorsError:
            return
        metrics = self.deps.metrics.function(self.name)
        metrics.cpu_ms += max(0, usage.cpu_ns - self._cpu_ns_seen) / 1e6
        self._cpu_ns_seen = usage.cpu_ns
        metrics.memory_peak_mb = max(metrics.memory_peak_mb, usage.memory_peak_bytes >> 20)


def _counts(cause: Cause | None) -> bool:
    """Does a failure with ``cause`` count against the function (None: it does)?"""
    return cause is None or cause.counts_against_function
