"""PackagePuller: a function's packages, resolved and installed once per worker.

``prepare(dependencies)`` answers with the function's :class:`PackageSet`:
the pins of its ``ol.lock`` when it has one, else pip's resolution of its
declaration (cached per declaration), each pinned distribution installed in
``packages/<name>/<version>/``.  Each install runs in its own installer
sandbox (with egress networking whatever sandbox.network says, unless the
index is offline and local: then none) with
``packages.install_mem_mb`` reserved from the memory pool and
``packages.install_timeout_s`` to finish.

Every resolution and install is a task of the actor's own, shared by every
request that needs it ("flights"), so concurrent cold starts of functions
using the same distribution wait for one install, a caller that gives up
cancels nothing others wait for, and one function's slow install never
holds up another function.  A failure is remembered for
``functions.failure_cooldown_s``: callers meanwhile get the same error at
once.  After each install the store is trimmed to ``packages.max_disk_mb``,
never removing a version held by a caller (between ``prepare`` and its
sandbox's creation) or mounted in a live sandbox.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .._causes import CauseCode, released
from .._config import Config
from .._errors import InitFailed, OlactorsError, SandboxError
from .._network import EgressPolicy, Network
from ..packages import FunctionPackages, IndexOptions, Pin, resolve_async
from ..packages._install import (
    INSTALLER_ENTRY,
    PIP_TARGET,
    install_failed,
    installer_environment,
    pip_install_args,
    pip_tool_dir,
    read_installer_answer,
    sandboxed_index,
)
from ..packages._store import BadInstall, InstalledPackage, PackageStore
from ..sock import (
    PACKAGES_MOUNT,
    Invocation,
    PackageMount,
    SandboxMeta,
    SandboxPool,
)
from ._acquire import SandboxAcquirer, SandboxKind
from ._calls import Reply, ask, drain
from .mempool import MemPoolRef

log = logging.getLogger("olactors.packages")


@dataclass(frozen=True, slots=True)
class PackageSet:
    """Installed distributions a sandbox sees, sorted by name."""

    packages: tuple[InstalledPackage, ...] = ()

    @property
    def versions(self) -> dict[str, str]:
        return {p.name: p.version for p in self.packages}

    @property
    def keys(self) -> list[tuple[str, str]]:
        return [p.key for p in self.packages]

    def get(self, name: str) -> InstalledPackage:
        return next(p for p in self.packages if p.name == name)

    def only(self, names: frozenset[str]) -> PackageSet:
        return PackageSet(tuple(p for p in self.packages if p.name in names))

    def mounts(self) -> tuple[PackageMount, ...]:
        return tuple(
            PackageMount(str(p.site), f"{PACKAGES_MOUNT}/{p.name}/{p.version}")
            for p in self.packages
        )


NO_PACKAGES = PackageSet()


@dataclass(frozen=True, slots=True)
class Prepare:
    dependencies: FunctionPackages
    reply: Reply[PackageSet]


class PackagePullerRef:
    def __init__(self, store: PackageStore, inbox: trio.MemorySendChannel[Prepare]) -> None:
        self.store = store
        self._inbox = inbox

    async def prepare(self, dependencies: FunctionPackages | None) -> PackageSet:
        """The installed packages for ``dependencies``, held against eviction
        until :meth:`release`.  Raises PackageResolutionFailed,
        PackageInstallFailed or MemoryExhausted."""
        if dependencies is None or not (
            dependencies.declaration.requirements or (dependencies.lock and dependencies.lock.pins)
        ):
            return NO_PACKAGES
        return await ask(self._inbox, Prepare(dependencies, Reply()))

    def release(self, packages: PackageSet) -> None:
        if packages.packages:
            self.store.unhold(packages.keys)

    @asynccontextmanager
    async def holding(self, dependencies: FunctionPackages | None) -> AsyncIterator[PackageSet]:
        packages = await self.prepare(dependencies)
        try:
            yield packages
        finally:
            self.release(packages)


class _Flight:
    """One shared piece of work: ``done`` once ``value`` or ``error`` is set."""

    __slots__ = ("done", "error", "until", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: OlactorsError | None = None
        self.until = 0.0


class PackagePuller:
    """State of the PackagePuller actor."""

    def __init__(
        self,
        config: Config,
        worker_dir: Path,
        store: PackageStore,
        pool: SandboxPool,
        mempool: MemPoolRef,
    ) -> None:
        self.config = config
        self.store = store
        self.pool = pool
        self.mempool = mempool
        self.acquirer = SandboxAcquirer(pool, mempool, config)
        self.index = IndexOptions.from_config(config, worker_dir)
        # The installer reaches services on this machine's loopback (a proxy,
        # an index) at the egress gateway (their port in egress_allow_host).
        gateway = str(EgressPolicy.from_config(config).gateway)
        self.sandbox_index, self.link_mounts = sandboxed_index(self.index, gateway)
        self.env, self.cert_mounts = installer_environment(os.environ, gateway)
        self.pip_dir: Path | None = None
        self._pip_lock = trio.Lock()
        self.resolutions: dict[tuple[str, ...], tuple[Pin, ...]] = {}
        self.installs = 0
        self._flights: dict[tuple, _Flight] = {}
        self._nursery: trio.Nursery | None = None

    # ---------------------------------------------------------- preparing
    async def prepare(self, msg: Prepare) -> None:
        try:
            pins = await self._pins(msg.dependencies)
        except OlactorsError as exc:
            msg.reply.fail(exc)
            return
        except BaseException:
            msg.reply.close("the package puller stopped")  # cancelled: never leave a waiter
            raise
        # Held from now on, before they are even installed: no trim removes them
        # between their install and the caller's sandbox.
        keys = [(pin.name, pin.version) for pin in pins]
        self.store.hold(keys)
        try:
            packages = await self._install_all(pins)
        except BaseException as exc:
            self.store.unhold(keys)
            if isinstance(exc, OlactorsError):
                msg.reply.fail(exc)
                return
            msg.reply.close("the package puller stopped")
            raise
        if not msg.reply.send(packages):
            self.store.unhold(keys)

    async def _install_all(self, pins: tuple[Pin, ...]) -> PackageSet:
        installed: dict[str, InstalledPackage] = {}
        errors: list[OlactorsError] = []

        async def one(pin: Pin) -> None:
            try:
                installed[pin.name] = await self._installed(pin)
            except OlactorsError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for pin in pins:
                nursery.start_soon(one, pin)
        if errors:
            raise errors[0]
        return PackageSet(tuple(installed[name] for name in sorted(installed)))

    async def _pins(self, dependencies: FunctionPackages) -> tuple[Pin, ...]:
        if dependencies.lock is not None:
            return dependencies.lock.pins
        texts = dependencies.declaration.texts()
        pins = self.resolutions.get(texts)
        if pins is None:
            pins = await self._once(("resolve", texts), lambda: self._resolve(texts))
        return pins

    async def _resolve(self, texts: tuple[str, ...]) -> tuple[Pin, ...]:
        timeout = self.config.packages.resolve_timeout_s
        pins = (await resolve_async(texts, self.index, timeout)).pins()
        self.resolutions[texts] = pins
        return pins

    async def _installed(self, pin: Pin) -> InstalledPackage:
        package = self.store.get(pin)
        if package is None:
            package = await self._once(("install", pin), lambda: self._install(pin))
        return package

    async def _once(self, key: tuple, work: Callable[[], Awaitable[Any]]) -> Any:
        flight = self._flights.get(key)
        if flight is None or (flight.done.is_set() and trio.current_time() >= flight.until):
            flight = self._flights[key] = _Flight()
            assert self._nursery is not None
            self._nursery.start_soon(self._fly, key, flight, work)
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.value

    async def _fly(self, key: tuple, flight: _Flight, work: Callable[[], Awaitable[Any]]) -> None:
        try:
            flight.value = await work()
        except OlactorsError as exc:
            flight.error = exc
        except Exception as exc:  # a bug must not take the worker down; it is logged
            log.exception("package work %r failed", key)
            flight.error = OlactorsError(f"preparing packages failed: {type(exc).__name__}: {exc}")
        if flight.error is not None:
            flight.until = trio.current_time() + self.config.functions.failure_cooldown_s
            log.warning("%s", flight.error.message)
        else:
            del self._flights[key]  # the result is kept by the store or the resolutions
        flight.done.set()

    # ---------------------------------------------------------- installing
    async def _install(self, pin: Pin) -> InstalledPackage:
        async with self._pip_lock:  # one copy, made before the first install
            if self.pip_dir is None:
                self.pip_dir = await trio.to_thread.run_sync(pip_tool_dir, self.store.root)
        staging = await trio.to_thread.run_sync(self.store.new_staging, pin)
        try:
            await self._run_installer(pin, staging)
            try:
                package = await trio.to_thread.run_sync(self.store.commit, pin, staging)
            except BadInstall as exc:
                raise install_failed(pin, str(exc)) from None
        finally:
            await trio.to_thread.run_sync(self.store.discard_staging, staging)
        self.installs += 1
        log.info("installed %s==%s (%d bytes)", pin.name, pin.version, package.size_bytes)
        await self._trim()
        return package

    def installer_meta(self, pin: Pin) -> SandboxMeta:
        assert self.pip_dir is not None
        return SandboxMeta(
            limits=self.acquirer.limits(SandboxKind.INSTALLER),
            # A namespace of its own (no scope); NAT to the index only if pip needs one.
            network=Network.EGRESS if self.sandbox_index.needs_network else Network.NONE,
            env=self.env,
            entry=INSTALLER_ENTRY,
            label=f"installer {pin.name}=={pin.version}",
            packages=(
                PackageMount(str(self.pip_dir), PIP_TARGET),
                *self.link_mounts,
                *self.cert_mounts,
            ),
        )

    async def _run_installer(self, pin: Pin, staging: Path) -> None:
        meta = self.installer_meta(pin)
        timeout = self.config.packages.install_timeout_s
        request = Invocation(
            body=json.dumps({"args": pip_install_args(pin, self.sandbox_index)}).encode()
        )
        try:
            sandbox = await self.acquirer.acquire(
                SandboxKind.INSTALLER, meta, scratch_dir=str(staging)
            )
        except (SandboxError, InitFailed) as exc:  # not the caller's function
            raise install_failed(
                pin, f"the installer did not start: {exc.message}", "", 500
            ) from exc
        try:
            result = await sandbox.invoke(request, limit_s=timeout)
        except SandboxError as exc:
            if exc.cause is not None and exc.cause.code is CauseCode.TIMEOUT:
                why = f"it took longer than packages.install_timeout_s ({timeout:g} s)"
            else:
                why = "the installer died: " + (exc.cause.summary() if exc.cause else exc.message)
            raise install_failed(pin, why, "", 500) from exc
        finally:
            with trio.CancelScope(shield=True):
                await sandbox.destroy(released("install finished"))
        read_installer_answer(pin, result)

    async def _trim(self) -> None:
        """Keep the store within its disk budget (versions in use stay)."""
        mounted = {m.source for sb in self.pool.sandboxes() for m in sb.meta.packages}
        removed = await trio.to_thread.run_sync(self.store.evict_to_budget, mounted)
        for name, version in removed:
            log.info("evicted package %s==%s (packages.max_disk_mb)", name, version)


async def run_package_puller(
    puller: PackagePuller,
    *,
    task_status: trio.TaskStatus[PackagePullerRef] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled; work in flight is cancelled with it."""
    send, inbox = trio.open_memory_channel[Prepare](4096)
    async with trio.open_nursery() as nursery:
        puller._nursery = nursery
        task_status.started(PackagePullerRef(puller.store, send))
        try:
            async for msg in inbox:
                nursery.start_soon(puller.prepare, msg)
        finally:
            inbox.close()
            for msg in drain(inbox):
                msg.reply.close("the package puller stopped")
