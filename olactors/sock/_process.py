"""Process-wide preparation for a worker that creates SOCK sandboxes."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from .. import native
from .._errors import SandboxError

_private_mount_ns = False


def prepare_worker_process() -> None:
    """Enter a private mount namespace (once per process, before threads start).

    Every sandbox mount then lives in this namespace: invisible to the host,
    and gone when the worker and its sandboxes are gone.
    """
    global _private_mount_ns
    if _private_mount_ns:
        return
    if threading.active_count() > 1:
        raise SandboxError(
            "prepare_worker_process() must run before any thread starts "
            "(call it first thing, before trio.run)"
        )
    try:
        native.enter_private_mount_namespace()
    except OSError as exc:
        raise SandboxError(f"cannot create the worker's private mount namespace: {exc}") from exc
    _private_mount_ns = True


def worker_id(worker_dir: Path) -> str:
    """Stable short id of a worker dir: names its cgroup subtree ``olactors-<id>``."""
    real = os.path.realpath(worker_dir)
    return hashlib.sha256(real.encode()).hexdigest()[:10]
