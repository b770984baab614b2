"""The one owner of getting a sandbox: memory, limits, creation, release.

Every sandbox the actors create goes through :meth:`SandboxAcquirer.acquire`:
the instance's leaves, the import cache's zygotes and the package puller's
installers.  It reserves the sandbox's memory limit from the memory pool,
creates the sandbox with its kind's limits and binds the reservation to the
sandbox, whose release then gives the memory back.  A failure or a
cancellation anywhere before the bind releases the reservation, so the
memory ledger balances by construction: every MB reserved is either bound to
a live sandbox (and freed with it) or given back before ``acquire`` returns.

The kinds pick their limits from the config:

* ``LEAF``: the function's resolved limits (``limits`` in its ol.yaml, or
  the worker's defaults), passed by the instance;
* ``ZYGOTE``: ``limits.zygote_mem_mb`` and ``limits.zygote_procs``, no CPU
  share of its own (its leaves get theirs);
* ``INSTALLER``: ``packages.install_mem_mb`` and :data:`INSTALLER_PROCS`.

A leaf is forked from a zygote when a lease of one is given, else started
fresh; a fork that fails with SandboxError falls back to a fresh start, the
reservation held across both attempts.  A zygote forks from its parent zygote
when one is given, with no fallback (its modules must be its parent's).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, replace

import trio

from .._config import Config
from .._errors import SandboxError
from ..sock import Sandbox, SandboxLimits, SandboxMeta, SandboxPool
from .mempool import MemPoolRef

log = logging.getLogger("olactors.acquire")

#: Processes and threads an installer (pip and its build backends) may start.
INSTALLER_PROCS = 64

#: A lease of a zygote to fork from, held while the fork runs.
ZygoteLease = Callable[[], AbstractAsyncContextManager[Sandbox]]


class SandboxKind(enum.Enum):
    LEAF = "leaf"
    ZYGOTE = "zygote"
    INSTALLER = "installer"


@dataclass(frozen=True, slots=True)
class SandboxAcquirer:
    """Gets sandboxes of every kind from ``pool``, their memory from ``mempool``."""

    pool: SandboxPool
    mempool: MemPoolRef
    config: Config

    def limits(self, kind: SandboxKind, leaf: SandboxLimits | None = None) -> SandboxLimits:
        """The limits a sandbox of ``kind`` gets (``leaf``: a function's resolved ones)."""
        config = self.config
        if kind is SandboxKind.LEAF:
            if leaf is None:
                raise ValueError("a leaf's limits are its function's: pass them")
            return leaf
        if kind is SandboxKind.ZYGOTE:
            return SandboxLimits(
                mem_mb=config.limits.zygote_mem_mb,
                procs=config.limits.zygote_procs,
                cpu_percent=0,
                tmp_mb=config.sandbox.tmp_mb,
                tmp_inodes=config.sandbox.tmp_inodes,
            )
        return SandboxLimits(
            mem_mb=config.packages.install_mem_mb,
            procs=INSTALLER_PROCS,
            cpu_percent=100,
            tmp_mb=config.sandbox.tmp_mb,
            tmp_inodes=config.sandbox.tmp_inodes,
        )

    async def acquire(
        self,
        kind: SandboxKind,
        meta: SandboxMeta,
        *,
        leaf_limits: SandboxLimits | None = None,
        code_dir: str | None = None,
        scratch_dir: str | None = None,
        fork_from: ZygoteLease | None = None,
        on_attempt: Callable[[], None] | None = None,
    ) -> Sandbox:
        """A running sandbox of ``kind`` made from ``meta`` (whose limits are
        replaced by the kind's), its memory reserved and bound to it.

        ``fork_from`` leases the zygote to fork from: for a leaf, a fork that
        raises SandboxError falls back to a fresh start; for a zygote it is
        its parent (no fallback).  ``on_attempt`` is called before each
        creation attempt (the sandbox-start metric).  Raises what the memory
        pool (MemoryExhausted) or the sandbox pool (SandboxError, InitFailed)
        raised; the reservation is then given back.
        """
        meta = replace(meta, limits=self.limits(kind, leaf_limits))
        is_leaf = kind is not SandboxKind.ZYGOTE
        # One memory-wait budget for the whole acquisition: a leaf waits for a
        # zygote (which may itself wait for memory to be built) only for what
        # is left of it, then starts fresh, so waits never stack on a call.
        wait_until = trio.current_time() + self.config.memory.reserve_timeout_s
        res = await self.mempool.reserve(meta.limits.mem_mb, meta.label or kind.value)
        try:
            sb = None
            if fork_from is not None:
                try:
                    async with AsyncExitStack() as lease:
                        zygote = await self._lease(lease, fork_from, kind, wait_until)
                        if on_attempt is not None:
                            on_attempt()
                        sb = await self.pool.create(zygote, is_leaf, code_dir, scratch_dir, meta)
                except SandboxError as exc:
                    if kind is not SandboxKind.LEAF:
                        raise
                    log.warning(
                        "%s: forking from a zygote failed (%s); starting fresh",
                        meta.label,
                        exc.message,
                    )
            if sb is None:
                if on_attempt is not None:
                    on_attempt()
                sb = await self.pool.create(None, is_leaf, code_dir, scratch_dir, meta)
        except BaseException:
            await self.mempool.release(res)
            raise
        await self.mempool.bind(res, sb)
        return sb

    @staticmethod
    async def _lease(
        stack: AsyncExitStack, fork_from: ZygoteLease, kind: SandboxKind, wait_until: float
    ) -> Sandbox:
        """The zygote of ``fork_from``, leased until ``stack`` closes; a leaf
        waits for it until ``wait_until`` at most (SandboxError after)."""
        if kind is not SandboxKind.LEAF:
            return await stack.enter_async_context(fork_from())
        with trio.move_on_at(wait_until):
            return await stack.enter_async_context(fork_from())
        raise SandboxError("no zygote was ready within the memory wait (memory.reserve_timeout_s)")
