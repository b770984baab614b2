"""SockPool: creates SOCK sandboxes (fresh or forked from a zygote).

Use ``async with open_sock_pool(config, worker_dir) as pool``; leaving the
block destroys every sandbox and removes every cgroup, mount, socket and
scratch dir the pool made.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from .._causes import Cause, CauseCode
from .._config import Config
from .._errors import (
    InitFailed,
    OlactorsError,
    SandboxDead,
    SandboxError,
    SandboxStateError,
    ZygoteUnsuitable,
)
from .._groups import lone_errors_unwrapped
from .._network import EgressPolicy, Network
from .._secrets import Redactor
from . import seccomp
from ._api import (
    Sandbox,
    SandboxCreated,
    SandboxForked,
    SandboxMeta,
)
from ._egress import Egress, check_subnet_free
from ._events import EventHub, PoolEvents
from ._netns import NetworkNamespaces
from ._output import SandboxLog, Stream
from ._process import prepare_worker_process, worker_id
from ._procfs import ProcMounter
from ._recovery import WorkerDirLock, open_worker_backend, recover_worker_dir
from ._rootfs import (
    RUNTIME_SOURCE,
    BaseRoot,
    SandboxRoot,
    make_base_skeleton,
    python_executable,
    remove_tree_safely,
)
from ._safe import ReleaseFailed, SafeSandbox, check_create, destroy_all
from ._sock import LOG_TAIL_BYTES, ReleaseReport, SockSandbox, release_sandbox
from ._start import ZygoteGone, shutting_down, start
from ._stdio import SandboxStdio
from ._watchdog_keeper import WatchdogKeeper
from .cgroups import (
    CgroupAnomalies,
    CgroupLayout,
    CgroupLimits,
    CgroupPool,
)

log = logging.getLogger("olactors.sock")


class SockPool(PoolEvents):
    """Implements :class:`olactors.sock.SandboxPool` with real SOCK sandboxes."""

    def __init__(
        self,
        config: Config,
        worker_dir: Path,
        nursery: trio.Nursery,
        cgroups: CgroupPool,
        anomalies: CgroupAnomalies,
        base: BaseRoot,
        networks: NetworkNamespaces,
        watchdog: WatchdogKeeper,
    ) -> None:
        self.config = config
        self.worker_dir = worker_dir
        self.run_dir = worker_dir / "run" / "sandboxes"
        self.anomalies = anomalies
        self._nursery = nursery
        self._cgroups = cgroups
        self._base = base
        self.networks = networks
        self._watchdog = watchdog
        self._hub = EventHub()
        self._ids = itertools.count(1)
        self._live: dict[str, SafeSandbox] = {}
        self.python = config.sandbox.python or python_executable()
        self.bpf = seccomp.compile_profiles()  # ConfigError: never a sandbox unfiltered
        self.closing = False
        self.procs = ProcMounter()  # forked sandboxes' /proc (fresh ones mount their own)

    def sandbox_anomalies(self) -> dict[str, int]:
        """The shared anomalies, and how often the watchdog had to be restarted and
        the egress rules loaded again."""
        return {
            **super().sandbox_anomalies(),
            "watchdog_restarts": self._watchdog.restarts,
            "egress_rules_restored": self.networks.egress.rules_restored,
        }

    # ------------------------------------------------------------- interface
    def sandboxes(self) -> list[Sandbox]:
        return list(self._live.values())

    async def create(
        self,
        parent: Sandbox | None,
        is_leaf: bool,
        code_dir: str | None,
        scratch_dir: str | None,
        meta: SandboxMeta,
    ) -> SafeSandbox:
        """Create a sandbox and return it once its runtime listens (and a
        leaf's code is imported: see :func:`olactors.sock._start.start`).

        Fresh when ``parent`` is None, else forked from the zygote ``parent``
        (which must be running, not a leaf, and on the same network).  On any
        failure everything made so far is undone and SandboxError is raised,
        or :class:`InitFailed` when the function's code failed its init phase.
        """
        if self.closing:
            raise shutting_down()
        parent = check_create(self._live, parent, meta)
        if code_dir is not None and not os.path.isdir(code_dir):
            raise SandboxError(f"code dir {code_dir} does not exist")
        sb = self._new_raw(is_leaf, code_dir, scratch_dir, meta)
        started = trio.current_time()
        try:
            if is_leaf:
                sb.netns = await self.networks.acquire(meta.network_scope, Network(meta.network))
            await self._prepare(sb)
            await start(sb, self, parent)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                died = await sb.diagnose(exc)
                tail = sb.log_tail()
                await self.release_resources(sb, reuse_cgroup=False)
            if isinstance(exc, ZygoteGone) and parent is not None:
                self._nursery.start_soon(self._zygote_gone, parent, exc.exiting)
            if not isinstance(exc, Exception) or isinstance(
                exc, (SandboxDead, SandboxStateError, ZygoteUnsuitable, InitFailed)
            ):
                raise  # cancelled, the parent's state changed, a verdict on a package or function
            detail = f"\n--- sandbox log ---\n{tail}" if tail.strip() else ""
            err = SandboxError(f"creating sandbox {sb.id} failed: {died.summary()}{detail}")
            err.cause = (
                exc.cause
                if isinstance(exc, OlactorsError) and exc.cause is not None
                else Cause.of(
                    CauseCode.STARTUP_FAILED,
                    output=tail[-LOG_TAIL_BYTES:],
                    error=str(exc)[:500],
                    died=died.as_json(),
                )
            )
            raise err from exc
        safe = SafeSandbox(sb, self._hub, parent, trio.current_time() - started)
        self._live[sb.id] = safe
        sb.watching = True
        self._nursery.start_soon(sb.watch, safe.died)
        self._hub.emit(SandboxCreated(safe, parent))
        if parent is not None:
            self._hub.emit(SandboxForked(parent, safe))
        return safe

    def netns_fd(self, sb: SockSandbox) -> int:
        """The network namespace ``sb`` joins: its function's for a leaf (see
        :mod:`._netns`), the empty one of every zygote otherwise."""
        if sb.netns is not None:
            return sb.netns.fd
        if sb.is_leaf:
            raise SandboxError(f"leaf {sb.id} has no network namespace")
        return self.networks.zygote_fd

    async def forget_network(self, scope: str) -> None:
        """The function ``scope`` stopped: its network namespaces are destroyed
        with its last sandbox (at once if it has none)."""
        await self.networks.forget(scope)

    # ------------------------------------------------------------- internals
    async def _zygote_gone(self, zygote: SafeSandbox, exiting: bool) -> None:
        """``zygote`` refused a fork (:class:`ZygoteGone`): no fork may use it again.

        If its process is exiting, every descendant is dead already (the
        kernel kills its PID namespace) but a frozen one cannot finish dying,
        and holds the zygote with it: destroying them thaws and kills them,
        so the zygote's exit completes and its watcher reports it.  A zygote
        that is alive but no longer listens is destroyed itself (released
        after its last child, as any zygote)."""
        cause = Cause.of(CauseCode.ZYGOTE_DIED, zygote=zygote.id)
        if exiting:
            log.warning("zygote %s is exiting: destroying its descendants", zygote.id)
            for sb in [sb for sb in self._live.values() if sb.descends_from(zygote)]:
                await sb.destroy(cause)
        else:
            reason = "its fork socket refused connections while it ran"
            await zygote.destroy(Cause.of(CauseCode.BAD_RESPONSE, reason=reason))

    def _new_raw(
        self, is_leaf: bool, code_dir: str | None, scratch_dir: str | None, meta: SandboxMeta
    ) -> SockSandbox:
        sid = f"sb-{next(self._ids)}"
        sb_dir = self.run_dir / sid
        sb_dir.mkdir(parents=True)
        root = SandboxRoot(sb_dir / "root")
        # Its own scratch dir is in its writable space, made by _prepare.
        scratch = root.own_scratch if scratch_dir is None else Path(scratch_dir)
        if scratch_dir is not None:
            scratch.mkdir(exist_ok=True)
        return SockSandbox(
            id=sid,
            is_leaf=is_leaf,
            meta=meta,
            dir=sb_dir,
            scratch=scratch,
            root=root,
            code_dir=code_dir,
            cgroup=None,
            pool=self,
            network=meta.network,
            own_scratch=scratch_dir is None,
        )

    async def _prepare(self, sb: SockSandbox) -> None:
        redactor = Redactor(sb.meta.secrets) if sb.meta.secrets else None
        sb.stdio = SandboxStdio(
            SandboxLog(sb.dir / "log", redactor=redactor),
            self.config.debug.max_output_bytes,
            redactor,
        )
        for stream in Stream:  # read from the start: a full pipe would block the sandbox
            self._nursery.start_soon(sb.stdio.read, stream)
        limits = sb.meta.limits
        sb.cgroup = self._cgroups.acquire(
            CgroupLimits(
                mem_bytes=limits.mem_mb << 20, pids=limits.procs, cpu_percent=limits.cpu_percent
            )
        )
        sb.root.mount(
            self._base,
            code_dir=sb.code_dir,
            scratch=None if sb.own_scratch else str(sb.scratch),
            tmp_bytes=limits.tmp_mb << 20,
            tmp_inodes=limits.tmp_inodes,
            packages=sb.meta.packages,
        )
        if sb.is_leaf:
            os.chown(sb.scratch, self.config.sandbox.leaf_uid, self.config.sandbox.leaf_gid)
        sb.scratch_fd = os.open(sb.scratch, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    async def release_resources(
        self, sb: SockSandbox, *, reuse_cgroup: bool = True
    ) -> ReleaseReport:
        """Kill the sandbox's processes and free its cgroup, mounts and dirs
        (:func:`release_sandbox`: every step runs, the report names what
        stayed).  The sandbox leaves the pool's list only once its processes
        are gone.  The cgroup of a sandbox that failed to start is removed,
        never reused: a child still starting could join it later; what such a
        sandbox leaves is counted and listed here (no SafeSandbox reports it).
        """
        handed_out = sb.id in self._live
        with trio.CancelScope(shield=True):
            report = await release_sandbox(
                sb, self._cgroups, self.config.sandbox.kill_timeout_s, reuse_cgroup=reuse_cgroup
            )
        if sb.netns is not None:
            lease, sb.netns = sb.netns, None
            with trio.CancelScope(shield=True):
                await self.networks.release(lease)
        if report.processes_gone:
            self._live.pop(sb.id, None)
            if sb.stdio is not None:
                sb.stdio.close()  # no writer is left: what they wrote is read
        if report.leftovers and not handed_out:
            gone = report.processes_gone
            failure = ReleaseFailed(sb.id, report.leftovers, gone)
            self._hub.release_failed(sb.id, f"{failure} after a failed start", gone)
        return report

    async def aclose(self) -> None:
        """Destroy every sandbox: leaves first, then zygotes (which are only
        released once their last child is gone).  Sandboxes whose creation was
        in flight see ``closing`` and destroy themselves."""
        self.closing = True
        await destroy_all(self._live, Cause.of(CauseCode.WORKER_SHUTDOWN))
        self._hub.close()


def precompile_runtime() -> None:
    """Write the in-sandbox runtime's bytecode next to it (idempotent).

    Sandboxes see ``/runtime`` read-only and never write bytecode, so without
    this every fresh leaf and zygote would compile the runtime again (~3-7 ms).
    """
    import compileall

    compileall.compile_dir(str(RUNTIME_SOURCE), quiet=2, workers=1)


@asynccontextmanager
async def open_sock_pool(config: Config, worker_dir: Path) -> AsyncIterator[SockPool]:
    """Start the sandbox machinery for ``worker_dir`` and tear it all down on exit.

    The worker dir's lock is taken first and held until everything is torn
    down: :class:`AlreadyRunning` (409) if another live process holds it,
    before anything in the dir is touched.  What a dead worker left (its
    ``run/`` and cgroup subtree) is then recovered before anything starts.
    """
    prepare_worker_process()
    worker_dir = worker_dir.resolve()
    worker_dir.mkdir(parents=True, exist_ok=True)
    with WorkerDirLock.acquire(worker_dir) as lock:
        for step in await recover_worker_dir(worker_dir, config, lock):
            log.warning("recovering from a worker that did not shut down: %s", step)
        async with _open_locked_pool(config, worker_dir) as pool:
            yield pool


@asynccontextmanager
async def _open_locked_pool(config: Config, worker_dir: Path) -> AsyncIterator[SockPool]:
    precompile_runtime()
    wid = worker_id(worker_dir)
    run_dir = worker_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    anomalies = CgroupAnomalies(slow_threshold=config.sandbox.anomaly_threshold_ms / 1000)
    layout = CgroupLayout.current(prefer=config.sandbox.cgroup_version)
    backend = open_worker_backend(config, layout, wid, anomalies)
    (run_dir / "cgroups.json").write_text(
        json.dumps({"worker_id": wid, "subtrees": backend.subtree_paths()})
    )
    cgroups = CgroupPool(
        backend, config.sandbox.cgroup_pool_size, anomalies, timeout=config.sandbox.kill_timeout_s
    )
    base_dir = config.sandbox.base_dir
    if base_dir:
        base_path, assembled = Path(base_dir), False
    else:
        base_path, assembled = worker_dir / "base", True
        make_base_skeleton(base_path)
    networks = None
    base = None
    watchdog = None
    try:
        await cgroups.start()
        watchdog = WatchdogKeeper(sys.executable, backend.subtree_paths())
        base = BaseRoot.mount(base_path, assembled=assembled)
        policy = EgressPolicy.from_config(config)
        await trio.to_thread.run_sync(check_subnet_free, policy)  # ConfigError: serve exits 2
        networks = NetworkNamespaces(Egress(wid, policy))
        with lone_errors_unwrapped():  # the watchers never raise
            async with trio.open_nursery() as nursery:
                pool = SockPool(
                    config, worker_dir, nursery, cgroups, anomalies, base, networks, watchdog
                )
                nursery.start_soon(watchdog.keep)
                nursery.start_soon(networks.egress.guard)
                try:
                    yield pool
                finally:
                    with trio.CancelScope(shield=True):
                        await pool.aclose()
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if base is not None:
                base.unmount()
            if networks is not None:
                try:
                    await networks.aclose()
                except OlactorsError as exc:
                    log.warning("removing the sandbox networks failed: %s", exc.message)
            await cgroups.close()
            if watchdog is not None:
                await trio.to_thread.run_sync(watchdog.stop, config.sandbox.kill_timeout_s)
            remove_tree_safely(run_dir)
