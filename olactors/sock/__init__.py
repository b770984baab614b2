"""SOCK sandboxes: cgroups, namespaces, chroot, seccomp and zygote forks.

Public API: the :class:`SandboxPool` / :class:`Sandbox` interface and its real
implementation, opened with :func:`open_sock_pool`.
"""

from ._api import (
    PACKAGES_MOUNT,
    Invocation,
    InvocationResult,
    PackageMount,
    Preload,
    Sandbox,
    SandboxCallUsage,
    SandboxChildExited,
    SandboxCreated,
    SandboxDestroyed,
    SandboxEvent,
    SandboxForked,
    SandboxLimits,
    SandboxMeta,
    SandboxPaused,
    SandboxPool,
    SandboxState,
    SandboxUnpaused,
    SandboxUsage,
)
from ._events import EventHub
from ._pool import SockPool, open_sock_pool
from ._process import prepare_worker_process, worker_id
from ._recovery import AlreadyRunning, WorkerDirLock, recover_worker_dir
from ._safe import RawSandbox, SafeSandbox
from ._sock import SockSandbox

__all__ = [
    "PACKAGES_MOUNT",
    "AlreadyRunning",
    "EventHub",
    "Invocation",
    "InvocationResult",
    "PackageMount",
    "Preload",
    "RawSandbox",
    "SafeSandbox",
    "Sandbox",
    "SandboxChildExited",
    "SandboxCreated",
    "SandboxDestroyed",
    "SandboxEvent",
    "SandboxCallUsage",
    "SandboxForked",
    "SandboxLimits",
    "SandboxMeta",
    "SandboxPaused",
    "SandboxPool",
    "SandboxState",
    "SandboxUnpaused",
    "SandboxUsage",
    "SockPool",
    "SockSandbox",
    "WorkerDirLock",
    "open_sock_pool",
    "prepare_worker_process",
    "recover_worker_dir",
    "worker_id",
]
