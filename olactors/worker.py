"""The worker: every actor wired together behind one small facade.

``async with open_worker(config, worker_dir) as worker`` starts, in order,
the sandbox pool (the real SOCK pool unless one is passed in, e.g. the
simulated pool), the memory pool, the evictor, the import cache, the code
puller, the call recorder and the lambda manager.
``worker.invoke(name, invocation, request_id)`` runs one call; a call that
reached the function (an instance took it, see
:class:`~olactors._records.CallTrace`) leaves a record in
``<worker>/records.db`` (see :mod:`olactors.records`), read back with
:meth:`Worker.records` and :meth:`Worker.record`.  Before anything is queued,
``invoke`` admits the call (:class:`~olactors.access.AccessGate`): a private
function needs the caller's bearer token (``caller=``; the worker's own
triggers pass a :class:`~olactors._access.TrustedCaller`), and the record
keeps the function's owner.  Tokens and owners live in the state directory
(``state.dir``, see :mod:`olactors.state`), which several workers may share.
Leaving the block shuts down gracefully: new calls get 503, queued and
in-flight calls finish by the shutdown deadline (see
:class:`~olactors._shutdown.ShutdownDeadline`), then every actor stops (the
recorder writes what is still queued) and every sandbox is destroyed.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ._access import ANONYMOUS, Access, AccessChanged, Caller
from ._config import Config
from ._errors import FunctionNotFound, OlactorsError, SandboxNotFound, ShuttingDown
from ._eviction import make_policy
from ._groups import lone_errors_unwrapped
from ._metrics import Metrics
from ._names import validate_function_name
from ._records import CallRecord, CallTrace, FinishedCall
from ._shutdown import ShutdownDeadline
from ._zygote_tree import load_zygote_tree
from .access import AccessGate, AccessState
from .actors._deps import Deps
from .actors.code_puller import CodePullerRef, CodeSource, run_code_puller
from .actors.evictor import Evictor, run_evictor
from .actors.import_cache import ImportCache, run_import_cache
from .actors.manager import ManagerRef, run_manager
from .actors.mempool import MemPoolRef, run_mempool
from .actors.package_puller import PackagePuller, run_package_puller
from .packages._store import PackageStore
from .records import (
    RecentIds,
    RecorderRef,
    RecorderSettings,
    RecordNotFound,
    RecordStore,
    run_recorder,
)
from .registry import LocalRegistry, registry_path
from .secrets import SecretStore, key_file_path
from .sock import Invocation, InvocationResult, SandboxPool, open_sock_pool
from .state import StateDir, state_path

log = logging.getLogger("olactors.worker")
EVENT_BUFFER = 65536
RECORDS_DB = "records.db"
#: The most of a sandbox's own log ``GET /sandboxes/<id>/log`` returns (it keeps
#: its latest 128 to 256 KiB).
SANDBOX_LOG_BYTES = 256 * 1024
#: How often one call is admitted at most: a call admitted as public whose
#: function turned private while it waited is judged again (AccessChanged);
#: only a function whose ol.yaml keeps flipping gets the last one's 401.
_MAX_ADMISSIONS = 3
CLIENT_GONE = 499  # recorded for a call whose caller was cancelled (e.g. disconnected)


class Worker:
    def __init__(
        self,
        config: Config,
        worker_dir: Path,
        pool: SandboxPool,
        manager: ManagerRef,
        mempool: MemPoolRef,
        evictor: Evictor,
        import_cache: ImportCache | None,
        puller: CodePullerRef,
        metrics: Metrics,
        package_puller: PackagePuller,
        shutdown: ShutdownDeadline | None = None,
        recorder: RecorderRef | None = None,
        records: RecordStore | None = None,
        request_ids: RecentIds | None = None,
        secrets: SecretStore | None = None,
        access: AccessState | None = None,
    ) -> None:
        self.config = config
        #: Secrets and their grants (None: no state dir, e.g. simulations).
        self.secrets = secrets
        self.shutdown = shutdown or ShutdownDeadline()
        self.worker_dir = worker_dir
        self.pool = pool
        self.manager = manager
        self.mempool = mempool
        self.evictor = evictor
        self.import_cache = import_cache
        self.puller = puller
        self.metrics = metrics
        self.package_puller = package_puller
        self.recorder = recorder
        self.record_store = records or RecordStore(worker_dir / RECORDS_DB)
        self.request_ids = request_ids or RecentIds(config.debug.keep_per_function)
        #: Tokens and owners (None: no state directory, as in simulations).
        self.access = access
        self.gate = AccessGate(config, access, puller)
        self.closing = False
        #: Serving calls, but telling balancers to send no more (``/healthz`` 503).
        self.draining = False
        self.in_flight = 0
        path = registry_path(config.registry.location, worker_dir)
        self.registry = (
            None if path is None else LocalRegistry(path, config.registry.max_code_mb << 20)
        )

    def claim_request_id(self, name: str, wanted: str | None) -> str:
        """The request id of a new call of ``name``: the client's ``wanted`` one
        if valid and not already used for ``name``, else a fresh one (see
        :class:`~olactors.records.RecentIds`; decided in memory, no disk)."""
        return self.request_ids.claim(name, wanted)

    async def invoke(
        self, name: str, inv: Invocation, request_id: str, caller: Caller = ANONYMOUS
    ) -> InvocationResult:
        """Run one call of function ``name``; raises the OlactorsError that answers it.

        ``caller`` is who calls: an :class:`~olactors._access.HttpCaller` with
        the ``Authorization`` header it sent (the default: none), or the
        worker's own :class:`~olactors._access.TrustedCaller`, which needs no
        token.  The call is admitted before it is queued (401 ``unauthorized``,
        403 ``forbidden`` for a private function); a private function never
        sees the ``Authorization`` header that admitted it.

        A call that reached the function is recorded under ``request_id``
        (submitted to the recorder without waiting; whatever the answer,
        including a caller that left, 499), with the answering error's cause
        when the actors gave none, and the function's owner."""
        validate_function_name(name)
        if self.closing:
            raise ShuttingDown("the worker is shutting down")
        start = trio.current_time()
        started = time.time()
        trace = CallTrace()
        error_cause = None
        status = 500
        known = True  # an unknown name must not leave a metrics record behind
        self.in_flight += 1
        try:
            for admissions in range(1, _MAX_ADMISSIONS + 1):
                admission = await self.gate.admit(name, caller)
                trace.owner = admission.owner
                private = admission.access is Access.PRIVATE
                headers = tuple(
                    (k, v)
                    for k, v in inv.headers
                    if not k.lower().startswith("x-olactors-")
                    and not (private and k.lower() == "authorization")
                )
                sent = Invocation(inv.method.upper(), inv.path or "/", inv.query, headers, inv.body)
                try:
                    result = await self.manager.invoke(
                        name, sent, request_id, trace, admission.access
                    )
                except AccessChanged:
                    # It became private while the call waited: judge the call
                    # again by the code now served (the gate asks the puller).
                    if admissions == _MAX_ADMISSIONS:
                        raise
                    self.gate.forget(name)
                    continue
                status = result.status
                return result
            raise AssertionError("unreachable: the last admission returns or raises")
        except OlactorsError as exc:
            status = exc.status
            error_cause = exc.cause
            known = not isinstance(exc, FunctionNotFound)
            raise
        except trio.Cancelled:
            status = CLIENT_GONE  # the caller left; the call itself runs on
            raise
        finally:
            self.in_flight -= 1
            if not trace.reached_function:
                # Refused before the function: no record holds the id, so a
                # balancer's retry of this call may use it again.
                self.request_ids.release(name, request_id)
            ms = (trio.current_time() - start) * 1000
            self.metrics.record_call(name if known else None, status, ms)
            if trace.reached_function and self.recorder is not None:
                call = FinishedCall(trace, request_id, name, status, started, ms, error_cause)
                # A call whose caller left runs on and fills its trace in still:
                # its record is what was known when the caller left, made now.
                self.recorder.submit(call.record() if status == CLIENT_GONE else call)

    async def records(self, name: str, limit: int, *, errors: bool = False) -> list[dict[str, Any]]:
        """``name``'s newest records first, without their output (FunctionNotFound
        when the worker knows nothing of ``name``)."""
        found = await trio.to_thread.run_sync(
            partial(self.record_store.recent, name, limit, errors=errors)
        )
        if not found and not await self._knows(name):
            raise FunctionNotFound(f"function {name!r} is not known to this worker")
        return found

    async def record(self, name: str, request_id: str) -> CallRecord:
        """The record of ``request_id`` in ``name`` (RecordNotFound if none)."""
        found = await trio.to_thread.run_sync(self.record_store.get, name, request_id)
        if found is None:
            if not await self._knows(name):
                raise FunctionNotFound(f"function {name!r} is not known to this worker")
            raise RecordNotFound(f"no record of request {request_id!r} for function {name!r}")
        return found

    async def _knows(self, name: str) -> bool:
        if name in self.metrics.functions:
            return True
        registry = self.registry
        return (
            registry is not None and await trio.to_thread.run_sync(registry.find, name) is not None
        )

    def begin_shutdown(self, deadline: float | None = None) -> None:
        """Refuse new calls (503) from now on; whatever is left must be done by
        ``deadline`` (trio time; default ``server.shutdown_timeout_s`` from now,
        or the deadline already set if earlier)."""
        self.closing = True
        if deadline is None:
            deadline = trio.current_time() + self.config.server.shutdown_timeout_s
        self.shutdown.set(deadline)

    def drain(self, on: bool = True) -> None:
        """Start (or, ``on=False``, end) draining: calls are still served, but
        ``/healthz`` and ``/status`` answer 503 so a load balancer sends no new
        ones (before a shutdown, or to take the worker out of rotation)."""
        self.draining = on
        log.info("draining" if on else "no longer draining")

    def state(self) -> str:
        """``ok``, ``draining`` or ``shutting_down``."""
        if self.closing:
            return "shutting_down"
        return "draining" if self.draining else "ok"

    def status(self) -> dict[str, Any]:
        return {
            "status": self.state(),
            "functions": len(self.metrics.functions),
            "sandboxes": len(self.pool.sandboxes()),
        }

    def registry_health(self) -> dict[str, Any]:
        """The code store's health as ``/stats`` shows it: ``last_ok_at`` (when
        the registry last answered a check, ISO 8601 UTC; null before the
        first), ``stale_s`` (0 while the latest check succeeded; else seconds
        since it last answered, or since the first failure if it never did:
        how old the code served may be), ``failures`` (checks that could not
        reach it) and ``last_error`` (null while it answers)."""
        health = self.puller.registry_health()
        now = trio.current_time()
        wall = datetime.now(UTC)
        last_ok_at = None
        if health.last_ok is not None:
            at = wall - timedelta(seconds=now - health.last_ok)
            last_ok_at = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        stale_s = 0.0
        if health.failing_since is not None:
            since = health.last_ok if health.last_ok is not None else health.failing_since
            stale_s = round(now - since, 3)
        return {
            "last_ok_at": last_ok_at,
            "stale_s": stale_s,
            "failures": health.failures,
            "last_error": health.last_error,
        }

    def record_stats(self) -> dict[str, Any]:
        """The recorder's counts (written, dropped, failed, ...) and the ids held."""
        out = self.recorder.stats() if self.recorder is not None else {}
        out["request_ids_held"] = len(self.request_ids)
        return out

    def sandboxes(self) -> list[dict[str, Any]]:
        out = []
        for sb in self.pool.sandboxes():
            raw = getattr(sb, "raw", None)
            meta = getattr(raw, "meta", None)
            pids = getattr(raw, "pids", None)
            out.append(
                {
                    "id": sb.id,
                    "kind": "leaf" if sb.is_leaf else "zygote",
                    "state": sb.state.value,
                    "function": meta.label if meta is not None and sb.is_leaf else None,
                    "label": meta.label if meta is not None else None,
                    # zygotes have none: a forked leaf enters its function's namespace
                    "network": str(meta.network) if meta is not None and sb.is_leaf else None,
                    "mem_limit_mb": meta.limits.mem_mb if meta is not None else None,
                    "children": sb.live_children,
                    "death_cause": None if sb.death_cause is None else sb.death_cause.as_json(),
                    "pids": pids() if callable(pids) else [],
                }
            )
        return out

    def sandbox_log(self, sandbox_id: str) -> str:
        """What the live sandbox ``sandbox_id`` wrote outside any call (import
        time, threads between calls): its log's latest bytes (see
        :data:`SANDBOX_LOG_BYTES`).  Raises :class:`SandboxNotFound`."""
        for sb in self.pool.sandboxes():
            if sb.id == sandbox_id:
                return sb.log(SANDBOX_LOG_BYTES)
        raise SandboxNotFound(f"no live sandbox {sandbox_id!r}")

    async def functions(self) -> list[dict[str, Any]]:
        return [
            {
                "name": st.name,
                "version": st.version,
                "queue_depth": st.queue_depth,
                "instances": st.instances,
                "busy": st.busy,
                "failing_for_s": st.failing_until,
                "failing_reason": st.failing_reason,
            }
            for st in await self.manager.functions()
        ]

    def packages(self) -> dict[str, Any]:
        """Installed distributions, the disk budget, and packages unfit for zygotes."""
        return {
            **self.package_puller.store.describe(),
            "installs": self.package_puller.installs,
            "resolutions": len(self.package_puller.resolutions),
        }

    async def stats(self) -> dict[str, Any]:
        live = {f["name"]: f for f in await self.functions()}
        functions = {}
        for name, m in sorted(self.metrics.functions.items()):
            entry: dict[str, Any] = m.as_dict()
            f = live.get(name)
            entry["active"] = f is not None
            entry["queue_depth"] = f["queue_depth"] if f else 0
            entry["instances"] = f["instances"] if f else 0
            functions[name] = entry
        states = Counter(
            f"{'leaf' if sb.is_leaf else 'zygote'}_{sb.state.value}" for sb in self.pool.sandboxes()
        )
        snap = await self.mempool.snapshot()
        stats: dict[str, Any] = {
            "status": self.status()["status"],
            "in_flight": self.in_flight,
            "functions": functions,
            "sandboxes": dict(sorted(states.items())),
            "memory": snap.as_dict(),
            # The ledger beside the live sandboxes' limits, read in one step (no race).
            "memory_accounting": self.mempool.accounting(self.pool).as_dict(),
            "evictions": {
                "count": self.metrics.evictions,
                "mb": self.metrics.evicted_mb,
                "rounds": self.evictor.rounds,
                "resyncs": self.evictor.resyncs,
            },
            "escalations": self.metrics.escalations,
            "not_found": self.metrics.not_found,
            "latency": self.metrics.latency.summary(),
            "import_cache": self.import_cache.describe() if self.import_cache else [],
            "records": self.record_stats(),
            "access": self.gate.describe(),
            "registry": self.registry_health(),
        }
        if self.secrets is not None:
            stats["secrets"] = self.secrets.describe()  # counts only, never a name or value
        sandbox_anomalies = getattr(self.pool, "sandbox_anomalies", None)
        if sandbox_anomalies is not None:
            stats["sandbox_anomalies"] = sandbox_anomalies()
        anomalies = getattr(self.pool, "anomalies", None)
        if anomalies is not None and hasattr(anomalies, "as_dict"):
            stats["cgroup_anomalies"] = anomalies.as_dict()
        return stats


@asynccontextmanager
async def open_worker(
    config: Config,
    worker_dir: Path,
    *,
    pool: SandboxPool | None = None,
    code_source: CodeSource | None = None,
    recording: bool = True,
    state: bool = True,
) -> AsyncIterator[Worker]:
    """Start every actor; on exit drain calls, stop the actors, destroy every sandbox.

    ``pool`` (default: the SOCK pool) and ``code_source`` (default: the
    registry of ``registry.location``) are the seams simulations replace.
    ``recording=False`` starts no recorder and opens no records database
    (simulations: in virtual time, the store's worker threads finish at
    moments no seed decides, and same-seed runs would differ).
    ``state=False`` opens no state directory (``state.dir``): no secret is
    stored or delivered, and with no tokens or owners private functions
    refuse every caller but the worker's own triggers (simulations, for
    the same reason).
    """
    worker_dir = worker_dir.resolve()
    tree = load_zygote_tree(config.import_cache.tree)
    access = None
    if state:
        state_dir = StateDir(state_path(config.state.dir, worker_dir))
        access = AccessState(state_dir, config.registry.cache_s)
    async with AsyncExitStack() as stack:
        if pool is None:
            pool = await stack.enter_async_context(open_sock_pool(config, worker_dir))
        metrics = Metrics()
        with lone_errors_unwrapped():
            async with trio.open_nursery() as nursery:
                mem = config.memory
                mempool = await nursery.start(run_mempool, mem.pool_mb, mem.reserve_timeout_s, pool)
                evictor = await nursery.start(
                    lambda task_status: run_evictor(
                        mempool,
                        metrics,
                        pool,
                        buffer=EVENT_BUFFER,
                        free_goal_mb=mem.free_goal_mb,
                        interval_s=mem.eviction_interval_s,
                        max_concurrent=mem.max_concurrent_evictions,
                        policy=make_policy(mem.eviction_policy),
                        task_status=task_status,
                    )
                )
                store = PackageStore(worker_dir / "packages", config.packages.max_disk_mb)
                store.open()
                package_puller = PackagePuller(config, worker_dir, store, pool, mempool)
                packages = await nursery.start(run_package_puller, package_puller)
                cache = cache_ref = None
                if config.import_cache.enabled:
                    cache = ImportCache(
                        tree,
                        pool,
                        mempool,
                        config,
                        unsuitable=store.unsuitable_names,
                        on_unsuitable=store.mark_unsuitable,
                    )
                    cache_ref = await nursery.start(run_import_cache, cache)
                puller = await nursery.start(
                    partial(run_code_puller, config, worker_dir, source=code_source)
                )
                debug = config.debug
                records = RecordStore(worker_dir / RECORDS_DB)
                request_ids = RecentIds(debug.keep_per_function)
                recorder = None
                if recording:
                    request_ids = await _open_records(records, debug.keep_per_function)
                    settings = RecorderSettings(
                        queue_max=debug.queue_max,
                        keep_per_function=debug.keep_per_function,
                        keep_s=debug.keep_s,
                    )
                    recorder = await nursery.start(run_recorder, records, settings)
                shutdown = ShutdownDeadline()
                secrets = _secret_store(config, worker_dir) if state else None
                deps = Deps(
                    config, pool, mempool, cache_ref, puller, metrics, packages, shutdown, secrets
                )
                manager = await nursery.start(run_manager, deps)
                worker = Worker(
                    config,
                    worker_dir,
                    pool,
                    manager,
                    mempool,
                    evictor,
                    cache,
                    puller,
                    metrics,
                    package_puller,
                    shutdown,
                    recorder,
                    records,
                    request_ids,
                    secrets,
                    access,
                )
                try:
                    yield worker
                except BaseException:
                    worker.begin_shutdown(trio.current_time())  # failed or cancelled: no grace
                    raise
                finally:
                    # Queued calls are served until the one shutdown deadline (set when
                    # shutdown was requested, e.g. by serve); then the actors are
                    # cancelled, and instances still running stop at once.
                    worker.begin_shutdown()
                    with trio.CancelScope(deadline=worker.shutdown.at, shield=True):
                        await manager.drain()
                    nursery.cancel_scope.cancel()


def _secret_store(config: Config, worker_dir: Path) -> SecretStore:
    """The secret store in the state dir, sealed with the key file (made on first need)."""
    state = StateDir(state_path(config.state.dir, worker_dir))
    key_file = key_file_path(config.secrets.key_file, worker_dir)
    return SecretStore(state, key_file, config.registry.cache_s)


async def _open_records(store: RecordStore, keep_per_function: int) -> RecentIds:
    """Open the records database; the request ids it holds.  A database that
    cannot be opened is logged, not fatal: the recorder counts its failures."""
    try:
        await trio.to_thread.run_sync(store.open)
        seed = await trio.to_thread.run_sync(store.recent_ids, keep_per_function)
    except sqlite3.Error as exc:
        log.warning("call records: %s cannot be read (%s); recording degrades", store.path, exc)
        seed = {}
    return RecentIds(keep_per_function, seed)
