"""The sandbox interface: what actors see, implemented by the SOCK pool and
(later) by a simulated pool.  Pure types plus two Protocols.

Contract shared by every implementation (the "safe sandbox" rules):

* calls on one sandbox are serialised;
* any error from a call destroys the sandbox, and the call raises
  :class:`~olactors._errors.SandboxError` (the caller can just drop it);
* every call on a destroyed sandbox raises :class:`SandboxDead` and harms nothing;
* ``invoke`` on a paused sandbox raises :class:`SandboxStateError` (refused,
  the sandbox survives);
* lifecycle events go to every subscriber of the pool, in order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio

from .._causes import Cause
from .._records import NO_OUTPUT, CallOutput
from .._secrets import SecretFile
from .cgroups._api import CallUsage, CgroupUsage


class SandboxState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """cgroup limits, the writable space's (``/tmp``, ``/dev/shm`` and the
    scratch dir together: ``tmp_mb`` bytes, ``tmp_inodes`` files), and
    ``init_s``: how long a leaf may take to import its handler once its
    runtime started (the init phase; a longer import raises
    :class:`~olactors._errors.InitTimeout` from ``create``)."""

    mem_mb: int = 128
    procs: int = 64
    cpu_percent: int = 100
    tmp_mb: int = 64
    tmp_inodes: int = 16384
    init_s: float = 60.0


#: Where package dirs appear inside a sandbox.
PACKAGES_MOUNT = "/packages"


@dataclass(frozen=True, slots=True)
class PackageMount:
    """A host directory bound read-only at ``target`` (under ``/packages``)
    inside the sandbox, and put on its ``sys.path`` when ``on_path``."""

    source: str
    target: str
    on_path: bool = True


@dataclass(frozen=True, slots=True)
class Preload:
    """Modules of one package a zygote imports; the worker then checks the
    process is still fit to fork (see :class:`ZygoteUnsuitable`)."""

    package: str
    modules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SandboxMeta:
    """What to create: limits, network (``none``/``egress``, see
    :mod:`olactors._network`), environment, the package dirs it sees, and for
    leaves the entry (``module:attr``) and the secrets it gets at
    ``/run/secrets`` (never a zygote's), for zygotes the modules to
    pre-import: stdlib ``imports`` and then, package by package, ``preload``.

    Leaves with the same ``network_scope`` (their function's name) and
    network share one network namespace, kept until the pool's
    ``forget_network(scope)``; a leaf without a scope gets one of its own.
    Zygotes have no network (both fields are ignored for them)."""

    limits: SandboxLimits = SandboxLimits()
    network: str = "none"
    network_scope: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    entry: str = "f:f"
    imports: tuple[str, ...] = ()
    label: str = ""
    packages: tuple[PackageMount, ...] = ()
    preload: tuple[Preload, ...] = ()
    secrets: tuple[SecretFile, ...] = ()


@dataclass(frozen=True, slots=True)
class Invocation:
    """One HTTP request forwarded into a leaf."""

    method: str = "POST"
    path: str = "/"
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class InvocationResult:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: What the call wrote to stdout and stderr, each cut at
    #: ``debug.max_output_bytes`` (see ``_stdio.py``).
    output: CallOutput = NO_OUTPUT


#: Resource use since the sandbox was created: the counters of its cgroup,
#: whose baseline is reset when a sandbox takes it (one type, not a copy).
SandboxUsage = CgroupUsage
#: Its CPU time and peak memory alone (what a call's record reads after each call).
SandboxCallUsage = CallUsage


# ---------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class SandboxCreated:
    sandbox: Sandbox
    parent: Sandbox | None


@dataclass(frozen=True, slots=True)
class SandboxPaused:
    sandbox: Sandbox


@dataclass(frozen=True, slots=True)
class SandboxUnpaused:
    sandbox: Sandbox


@dataclass(frozen=True, slots=True)
class SandboxForked:
    """``parent`` (a zygote) forked ``child``."""

    parent: Sandbox
    child: Sandbox


@dataclass(frozen=True, slots=True)
class SandboxChildExited:
    """A child of the zygote ``parent`` is gone."""

    parent: Sandbox
    child: Sandbox


@dataclass(frozen=True, slots=True)
class SandboxDestroyed:
    """``sandbox`` was released: its processes are gone and its memory free.
    ``leftovers`` names what could not be cleaned up (a mount, a dir, a
    cgroup; kept for a later retry or ``olactors cleanup``); empty if none.
    ``cause`` is why it ended (set by whoever destroyed or diagnosed it)."""

    sandbox: Sandbox
    cause: Cause
    leftovers: tuple[str, ...] = ()


SandboxEvent = (
    SandboxCreated
    | SandboxPaused
    | SandboxUnpaused
    | SandboxForked
    | SandboxChildExited
    | SandboxDestroyed
)


class Sandbox(Protocol):
    """One sandbox; see the module docstring for the safety contract."""

    @property
    def id(self) -> str: ...

    @property
    def is_leaf(self) -> bool: ...

    @property
    def state(self) -> SandboxState: ...

    @property
    def live_children(self) -> int: ...

    @property
    def death_cause(self) -> Cause | None:
        """Why it is dead (None while it lives)."""
        ...

    @property
    def meta(self) -> SandboxMeta: ...

    #: When it was last used (created, a call started, unpaused, forked from), trio time.
    last_used: float
    #: Calls started on it, plus forks from it for a zygote.
    uses: int
    #: How long its creation took, in seconds.
    startup_s: float

    async def invoke(self, request: Invocation, limit_s: float | None = None) -> InvocationResult:
        """Forward one request; past ``limit_s`` (the runtime limit) the sandbox
        is destroyed with cause ``timeout`` and SandboxDead raised."""
        ...

    async def pause(self) -> None: ...

    async def unpause(self) -> None: ...

    async def destroy(self, cause: Cause) -> None: ...

    async def destroy_if_paused(self, cause: Cause) -> bool: ...

    async def destroy_if_childless(self, cause: Cause) -> bool: ...

    def usage(self) -> SandboxUsage: ...

    def call_usage(self) -> SandboxCallUsage:
        """:meth:`usage`'s CPU time and peak memory, read alone (cheaper)."""
        ...

    def log(self, max_bytes: int) -> str:
        """The last ``max_bytes`` of what it wrote outside any call (import
        time, threads between calls); "" once it is released."""
        ...


class SandboxPool(Protocol):
    """Creates sandboxes; fresh when ``parent`` is None, else forked from the zygote ``parent``."""

    async def create(
        self,
        parent: Sandbox | None,
        is_leaf: bool,
        code_dir: str | None,
        scratch_dir: str | None,
        meta: SandboxMeta,
    ) -> Sandbox: ...

    def subscribe(self, buffer: int = 256) -> trio.MemoryReceiveChannel[SandboxEvent]:
        """Every event over a bounded channel; a subscriber that falls behind
        has its channel closed."""
        ...

    def listen(self, listener: Callable[[SandboxEvent], None]) -> Callable[[], None]:
        """Call ``listener(event)`` synchronously on every event (it must not
        block); returns the function that stops it."""
        ...

    def sandboxes(self) -> list[Sandbox]: ...

    async def forget_network(self, scope: str) -> None:
        """The function ``scope`` stopped: its network namespaces go with its
        last sandbox (at once if none is left)."""
        ...
