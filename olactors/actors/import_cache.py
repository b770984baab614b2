"""ImportCache and ZygoteActors: the tree of zygotes leaves are forked from.

One ZygoteActor per (tree node, exact versions of the node's packages),
spawned on first use: a node serving numpy 2.1 and 2.2 has two.  Zygotes
have no network (package imports run without one); each forked leaf enters
its own function's network namespace, whatever its mode.
A zygote mounts exactly its node's package dirs and preloads its own
packages' top-level modules, one package at a time; a package that leaves
the process unfit to fork (see :mod:`olactors.sock._suitability`) is
reported through ``on_unsuitable`` (recorded for good), the build fails
with :class:`ZygoteUnsuitable`, and :meth:`ImportCacheRef.zygote` picks the
node again without it.  A zygote is created lazily — forked from its parent
node's zygote, the root one fresh — after reserving ``limits.zygote_mem_mb`` from the memory pool.
Users take a *lease* (:meth:`ImportCacheRef.zygote`): while any lease is
held the zygote runs; with none for ``import_cache.pause_after_s`` it is
paused (and so becomes evictable).  A dead or evicted zygote is rebuilt on the
next lease.  A zygote that fails to build is not retried for
``functions.failure_cooldown_s``: leases fail fast meanwhile and callers fall
back to fresh sandboxes.  Concurrent leases of a node that is being built wait
for that one build.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .._causes import released
from .._config import Config
from .._errors import OlactorsError, SandboxError, ZygoteUnsuitable
from .._zygote_tree import ZygoteNode, ZygoteTree
from ..sock import Preload, Sandbox, SandboxMeta, SandboxPool, SandboxState
from ._acquire import SandboxAcquirer, SandboxKind
from ._calls import Reply, ask, drain
from .mempool import MemPoolRef
from .package_puller import NO_PACKAGES, PackageSet

log = logging.getLogger("olactors.import_cache")
#: Forks from one zygote that may fail in a row before it is given up and rebuilt.
FORK_FAILURES_TO_REBUILD = 2


@dataclass(frozen=True, slots=True)
class Acquire:
    reply: Reply[Sandbox]


@dataclass(frozen=True, slots=True)
class ReleaseLease:
    sandbox_id: str
    fork_failed: bool = False  # the leaseholder's fork from this zygote failed


@dataclass(frozen=True, slots=True)
class GetZygoteActor:
    node: str
    packages: PackageSet  # the function's; the zygote takes its node's part
    reply: Reply[ZygoteRef]


class ZygoteRef:
    def __init__(self, node: ZygoteNode, inbox: trio.MemorySendChannel) -> None:
        self.node = node
        self._inbox = inbox

    async def acquire(self) -> Sandbox:
        """The running zygote, leased until :meth:`release`."""
        return await ask(self._inbox, Acquire(Reply()))

    async def release(self, sandbox: Sandbox, fork_failed: bool = False) -> None:
        """End a lease of ``sandbox``; ``fork_failed`` tells the zygote a fork from it failed."""
        with trio.CancelScope(shield=True):
            try:
                await self._inbox.send(ReleaseLease(sandbox.id, fork_failed))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Sandbox]:
        """The running zygote, leased while the block runs (see :meth:`holding`)."""
        async with self.holding(await self.acquire()) as sandbox:
            yield sandbox

    @asynccontextmanager
    async def holding(self, sandbox: Sandbox) -> AsyncIterator[Sandbox]:
        """Release the lease of ``sandbox`` (acquired) when the block ends.  A
        SandboxError out of the block counts as a failed fork from it (see
        :data:`FORK_FAILURES_TO_REBUILD`)."""
        failed = False
        try:
            yield sandbox
        except SandboxError:
            failed = True
            raise
        finally:
            await self.release(sandbox, failed)


def _none_unsuitable() -> frozenset[str]:
    return frozenset()


class ImportCacheRef:
    def __init__(
        self,
        tree: ZygoteTree,
        inbox: trio.MemorySendChannel,
        unsuitable: Callable[[], frozenset[str]] = _none_unsuitable,
    ) -> None:
        self.tree = tree
        self._inbox = inbox
        self._unsuitable = unsuitable

    async def actor(self, node: str, packages: PackageSet = NO_PACKAGES) -> ZygoteRef:
        return await ask(self._inbox, GetZygoteActor(node, packages, Reply()))

    @asynccontextmanager
    async def zygote(self, packages: PackageSet) -> AsyncIterator[Sandbox]:
        """Lease the running zygote for a function with ``packages`` (raises if unavailable).

        A zygote that turns out to preload an unsuitable package is given up
        and the node chosen again (each round rules out one more package; the
        root preloads none)."""
        tried = set()
        while True:
            node = self.tree.node_for(packages.versions, self._unsuitable())
            ref = await self.actor(node.name, packages)
            try:
                sandbox = await ref.acquire()
            except ZygoteUnsuitable:
                if node.name in tried:  # not recorded as unsuitable: no other node to try
                    raise
                tried.add(node.name)
                continue
            break
        async with ref.holding(sandbox):
            yield sandbox


class Zygote:
    """State of one ZygoteActor."""

    def __init__(
        self,
        node: ZygoteNode,
        parent: ZygoteRef | None,
        pool: SandboxPool,
        mempool: MemPoolRef,
        config: Config,
        packages: PackageSet = NO_PACKAGES,
        on_unsuitable: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.node = node
        self.parent = parent
        self.pool = pool
        self.mempool = mempool
        self.config = config
        self.acquirer = SandboxAcquirer(pool, mempool, config)
        self.packages = packages  # exactly the node's packages, at the versions it serves
        self.on_unsuitable = on_unsuitable
        self.sandbox: Sandbox | None = None
        self.leases = 0
        self.builds = 0
        self.failed_until = -float("inf")
        self.last_error: OlactorsError | None = None
        self.fork_failures = 0  # in a row, from the current sandbox

    @property
    def label(self) -> str:
        versions = "".join(f":{p.name}=={p.version}" for p in self.packages.packages)
        return f"zygote:{self.node.name}{versions}"

    def meta(self) -> SandboxMeta:
        return SandboxMeta(
            limits=self.acquirer.limits(SandboxKind.ZYGOTE),
            imports=self.node.imports,
            label=self.label,
            packages=self.packages.mounts(),
            preload=tuple(
                Preload(name, self.packages.get(name).modules) for name in self.node.packages
            ),
        )

    async def ensure(self) -> Sandbox:
        sb = self.sandbox
        if sb is not None and sb.state is not SandboxState.DEAD:
            if sb.state is SandboxState.PAUSED:
                try:
                    await sb.unpause()
                except SandboxError as exc:
                    log.warning("%s: unpausing failed (%s); rebuilding", self.label, exc)
                    return await self._build()
            return sb
        return await self._build()

    async def _build(self) -> Sandbox:
        self.sandbox = None
        self.fork_failures = 0
        now = trio.current_time()
        if now < self.failed_until and self.last_error is not None:
            raise self.last_error
        try:
            self.sandbox = await self._create()
        except ZygoteUnsuitable as exc:
            version = self.packages.get(exc.package).version
            log.warning("%s: %s; it is imported in leaves from now on", self.label, exc.message)
            if self.on_unsuitable is not None:
                self.on_unsuitable(exc.package, version, exc.reason)
            raise
        except OlactorsError as exc:
            self.failed_until = now + self.config.functions.failure_cooldown_s
            self.last_error = SandboxError(f"{self.label} could not be built: {exc.message}")
            log.error("%s", self.last_error.message)
            raise self.last_error from exc
        self.builds += 1
        return self.sandbox

    async def _create(self) -> Sandbox:
        """A new zygote: forked from the parent node's, or fresh for the root."""
        return await self.acquirer.acquire(
            SandboxKind.ZYGOTE,
            self.meta(),
            fork_from=None if self.parent is None else self.parent.lease,
        )

    async def fork_done(self, sandbox_id: str, failed: bool) -> None:
        """Count forks from the current sandbox that failed in a row; give the
        zygote up after :data:`FORK_FAILURES_TO_REBUILD` of them.

        A zygote can look alive and still be unable to fork: SIGKILLed, its
        process cannot finish exiting (so its death is not seen) while a child
        in its PID namespace is frozen, yet its socket is already closed.
        Every fork from it would fail and fall back to a fresh sandbox until
        the children happen to be thawed; the next lease builds a new one.
        """
        sb = self.sandbox
        if sb is None or sb.id != sandbox_id:
            return  # a sandbox given up already
        self.fork_failures = self.fork_failures + 1 if failed else 0
        if self.fork_failures >= FORK_FAILURES_TO_REBUILD:
            log.warning(
                "%s: %d forks from %s failed in a row; building a new zygote",
                self.label,
                self.fork_failures,
                sb.id,
            )
            self.sandbox = None
            self.fork_failures = 0
            await sb.destroy(released(f"{FORK_FAILURES_TO_REBUILD} forks from it failed in a row"))

    async def pause_if_unused(self) -> None:
        sb = self.sandbox
        if self.leases or sb is None or sb.state is not SandboxState.RUNNING:
            return
        try:
            await sb.pause()
        except SandboxError as exc:
            log.warning("%s: pausing failed: %s", self.label, exc)
            self.sandbox = None


async def run_zygote(
    zygote: Zygote,
    *,
    task_status: trio.TaskStatus[ZygoteRef] = trio.TASK_STATUS_IGNORED,
) -> None:
    send, inbox = trio.open_memory_channel(4096)
    task_status.started(ZygoteRef(zygote.node, send))
    pause_after = zygote.config.import_cache.pause_after_s
    try:
        while True:
            sb = zygote.sandbox
            idle = zygote.leases == 0 and sb is not None and sb.state is SandboxState.RUNNING
            msg = None
            with trio.move_on_after(pause_after if idle else float("inf")):
                msg = await inbox.receive()
            if msg is None:
                await zygote.pause_if_unused()
            elif isinstance(msg, Acquire):
                try:
                    sandbox = await zygote.ensure()
                except OlactorsError as exc:
                    msg.reply.fail(exc)
                    continue
                zygote.leases += 1
                if not msg.reply.send(sandbox):
                    zygote.leases -= 1  # the caller gave up meanwhile
            elif isinstance(msg, ReleaseLease):
                zygote.leases -= 1
                await zygote.fork_done(msg.sandbox_id, msg.fork_failed)
    finally:
        inbox.close()
        for msg in drain(inbox):
            if isinstance(msg, Acquire):
                msg.reply.close("the import cache stopped")
        if zygote.sandbox is not None:
            await zygote.sandbox.destroy(released("import cache stopped"))


class ImportCache:
    """State of the ImportCache actor: one ZygoteActor per (node, versions)."""

    def __init__(
        self,
        tree: ZygoteTree,
        pool: SandboxPool,
        mempool: MemPoolRef,
        config: Config,
        unsuitable: Callable[[], frozenset[str]] = _none_unsuitable,
        on_unsuitable: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.tree = tree
        self.pool = pool
        self.mempool = mempool
        self.config = config
        self.unsuitable = unsuitable
        self.on_unsuitable = on_unsuitable
        self.actors: dict[tuple, ZygoteRef] = {}
        self.zygotes: dict[tuple, Zygote] = {}

    async def actor(self, nursery: trio.Nursery, name: str, packages: PackageSet) -> ZygoteRef:
        """The actor for node ``name`` at the versions ``packages`` holds,
        spawned (after its missing ancestors) on first use."""
        node = self.tree.nodes[name]
        key = (name, node.pins(packages.versions))
        ref = self.actors.get(key)
        if ref is not None:
            return ref
        parent = None
        if node.parent_name is not None:
            parent = await self.actor(nursery, node.parent_name, packages)
        own = packages.only(node.all_packages)
        zygote = Zygote(node, parent, self.pool, self.mempool, self.config, own, self.on_unsuitable)
        ref = await nursery.start(run_zygote, zygote)
        self.actors[key] = ref
        self.zygotes[key] = zygote
        return ref

    def describe(self) -> list[dict[str, object]]:
        return [
            {
                "node": z.node.name,
                "sandbox": z.sandbox.id if z.sandbox is not None else None,
                "state": z.sandbox.state.value if z.sandbox is not None else "none",
                "packages": z.packages.versions,
                "leases": z.leases,
                "builds": z.builds,
            }
            for z in self.zygotes.values()
        ]


async def run_import_cache(
    cache: ImportCache,
    *,
    task_status: trio.TaskStatus[ImportCacheRef] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled; zygote actors destroy their zygotes on the way out."""
    send, inbox = trio.open_memory_channel[GetZygoteActor](4096)
    async with trio.open_nursery() as nursery:
        task_status.started(ImportCacheRef(cache.tree, send, cache.unsuitable))
        try:
            async for msg in inbox:
                msg.reply.send(await cache.actor(nursery, msg.node, msg.packages))
        finally:
            inbox.close()
