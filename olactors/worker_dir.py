"""The worker directory: ``olactors init`` and ``olactors cleanup``.

Layout::

    <worker>/worker.yaml   configuration (documented defaults from olactors/config/)
    <worker>/registry/     functions (<name>/ dirs or <name>.tar.gz), unless
                           ``registry.location`` names another place
    <worker>/base/         the assembled base root skeleton (host parts bound at start)
    <worker>/empty/        read-only empty dir used to mask host site-packages
    <worker>/run/          runtime state: sandbox dirs, sockets (removed at shutdown)
    <worker>/worker.lock   flock held by the live worker (see olactors.sock.WorkerDirLock)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ._config import DEFAULTS_PATH, Config, apply_overrides_to_text, load_worker_config
from ._files import write_atomically
from .sock import WorkerDirLock, recover_worker_dir
from .sock._rootfs import make_base_skeleton

log = logging.getLogger("olactors.worker_dir")
DEFAULT_PATH = Path("olactors-worker")


def init_worker_dir(
    path: Path, overrides: Sequence[str] = (), *, write_overrides: bool = False
) -> Config:
    """Create the worker dir (idempotent); worker.yaml starts as the documented
    defaults, and an existing one is validated and kept. The returned config
    has ``overrides`` (``--set section.key=value``) applied; with
    ``write_overrides`` (``olactors init --set``) they are also written into
    worker.yaml (only those keys' lines change), so a later ``serve`` uses them."""
    path.mkdir(parents=True, exist_ok=True)
    config_file = path / "worker.yaml"
    text = config_file.read_text() if config_file.exists() else DEFAULTS_PATH.read_text()
    new_text = apply_overrides_to_text(text, overrides) if write_overrides and overrides else text
    if not config_file.exists() or new_text != text:
        write_atomically(config_file, new_text.encode())
    config = load_worker_config(path, () if write_overrides else overrides)
    (path / "registry").mkdir(exist_ok=True)
    if not config.sandbox.base_dir:
        make_base_skeleton(path / "base")
    return config


async def cleanup_worker_dir(path: Path, config: Config) -> list[str]:
    """Remove what a dead worker left behind; safe to run twice.  Returns what was done.

    Takes the worker dir's lock first, so a live worker is never touched
    (:class:`~olactors.sock.AlreadyRunning`); then does what a starting worker
    does by itself (see :func:`olactors.sock.recover_worker_dir`), and also
    removes a stale admin socket.
    """
    path = path.resolve()
    with WorkerDirLock.acquire(path) as lock:
        done = await recover_worker_dir(path, config, lock)
        admin = path / "admin.sock"
        if admin.exists() or admin.is_symlink():
            admin.unlink()
            done.append(f"removed {admin}")
    return done
