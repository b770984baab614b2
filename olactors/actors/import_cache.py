"""ImportCache and ZygoteActors: the tree of zygotes leaves are forked from.

One ZygoteActor per (tree node, network mode), spawned on first use.  A
zygote is created lazily — forked from its parent node's zygote, the root
one fresh — after reserving ``limits.zygote_mem_mb`` from the memory pool.
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .._config import Config
from .._errors import OlactorsError, SandboxError
from .._zygote_tree import ZygoteNode, ZygoteTree
from ..sock import Sandbox, SandboxLimits, SandboxMeta, SandboxPool, SandboxState
from ._calls import Reply, ask
from .mempool import MemPoolRef

log = logging.getLogger("olactors.import_cache")


@dataclass(frozen=True, slots=True)
class Acquire:
    reply: Reply[Sandbox]


@dataclass(frozen=True, slots=True)
class ReleaseLease:
    pass


@dataclass(frozen=True, slots=True)
class GetZygoteActor:
    node: str
    network: str
    reply: Reply[ZygoteRef]


class ZygoteRef:
    def __init__(self, node: ZygoteNode, network: str, inbox: trio.MemorySendChannel) -> None:
        self.node = node
        self.network = network
        self._inbox = inbox

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Sandbox]:
        sandbox = await ask(self._inbox, Acquire(Reply()))
        try:
            yield sandbox
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self._inbox.send(ReleaseLease())
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass


class ImportCacheRef:
    def __init__(self, tree: ZygoteTree, inbox: trio.MemorySendChannel) -> None:
        self.tree = tree
        self._inbox = inbox

    async def actor(self, node: str, network: str) -> ZygoteRef:
        return await ask(self._inbox, GetZygoteActor(node, network, Reply()))

    @asynccontextmanager
    async def zygote(self, packages: frozenset[str], network: str) -> AsyncIterator[Sandbox]:
        """Lease the running zygote for a function with ``packages`` (raises if unavailable)."""
        node = self.tree.node_for(packages)
        ref = await self.actor(node.name, network)
        async with ref.lease() as sandbox:
            yield sandbox


class Zygote:
    """State of one ZygoteActor."""

    def __init__(
        self,
        node: ZygoteNode,
        network: str,
        parent: ZygoteRef | None,
        pool: SandboxPool,
        mempool: MemPoolRef,
        config: Config,
    ) -> None:
        self.node = node
        self.network = network
        self.parent = parent
        self.pool = pool
        self.mempool = mempool
        self.config = config
        self.sandbox: Sandbox | None = None
        self.leases = 0
        self.builds = 0
        self.failed_until = -float("inf")
        self.last_error: OlactorsError | None = None

    @property
    def label(self) -> str:
        return f"zygote:{self.node.name}:{self.network}"

    def meta(self) -> SandboxMeta:
        lim = self.config.limits
        return SandboxMeta(
            limits=SandboxLimits(
                mem_mb=lim.zygote_mem_mb,
                procs=lim.zygote_procs,
                cpu_percent=0,
                tmp_mb=self.config.sandbox.tmp_mb,
            ),
            network=self.network,
            imports=self.node.imports,
            label=self.label,
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
        now = trio.current_time()
        if now < self.failed_until and self.last_error is not None:
            raise self.last_error
        try:
            self.sandbox = await self._create()
        except OlactorsError as exc:
            self.failed_until = now + self.config.functions.failure_cooldown_s
            self.last_error = SandboxError(f"{self.label} could not be built: {exc.message}")
            log.error("%s", self.last_error.message)
            raise self.last_error from exc
        self.builds += 1
        return self.sandbox

    async def _create(self) -> Sandbox:
        res = await self.mempool.reserve(self.config.limits.zygote_mem_mb, self.label)
        try:
            if self.parent is None:
                sb = await self.pool.create(None, False, None, None, self.meta())
            else:
                async with self.parent.lease() as parent_sb:
                    sb = await self.pool.create(parent_sb, False, None, None, self.meta())
        except BaseException:
            await self.mempool.release(res)
            raise
        await self.mempool.bind(res, sb)
        return sb

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
    task_status.started(ZygoteRef(zygote.node, zygote.network, send))
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
    finally:
        inbox.close()
        while True:
            try:
                msg = inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(msg, Acquire):
                msg.reply.close("the import cache stopped")
        if zygote.sandbox is not None:
            await zygote.sandbox.destroy("import cache stopped")


class ImportCache:
    """State of the ImportCache actor: one ZygoteActor per (node, network)."""

    def __init__(
        self, tree: ZygoteTree, pool: SandboxPool, mempool: MemPoolRef, config: Config
    ) -> None:
        self.tree = tree
        self.pool = pool
        self.mempool = mempool
        self.config = config
        self.actors: dict[tuple[str, str], ZygoteRef] = {}
        self.zygotes: dict[tuple[str, str], Zygote] = {}

    async def actor(self, nursery: trio.Nursery, name: str, network: str) -> ZygoteRef:
        """The actor for node ``name``, spawned (after its missing ancestors) on first use."""
        ref = self.actors.get((name, network))
        if ref is not None:
            return ref
        node = self.tree.nodes[name]
        parent = None
        if node.parent_name is not None:
            parent = await self.actor(nursery, node.parent_name, network)
        zygote = Zygote(node, network, parent, self.pool, self.mempool, self.config)
        ref = await nursery.start(run_zygote, zygote)
        self.actors[(name, network)] = ref
        self.zygotes[(name, network)] = zygote
        return ref

    def describe(self) -> list[dict[str, object]]:
        return [
            {
                "node": z.node.name,
                "network": z.network,
                "sandbox": z.sandbox.id if z.sandbox is not None else None,
                "state": z.sandbox.state.value if z.sandbox is not None else "none",
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
        task_status.started(ImportCacheRef(cache.tree, send))
        try:
            async for msg in inbox:
                msg.reply.send(await cache.actor(nursery, msg.node, msg.network))
        finally:
            inbox.close()
