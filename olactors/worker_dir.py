"""The worker directory: ``olactors init`` and ``olactors cleanup``.

Layout::

    <worker>/worker.yaml   configuration (documented defaults from config/)
    <worker>/registry/     functions (<name>/ dirs or <name>.tar.gz)
    <worker>/base/         the assembled base root skeleton (host parts bound at start)
    <worker>/empty/        read-only empty dir used to mask host site-packages
    <worker>/run/          runtime state: sandbox dirs, sockets (removed at shutdown)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from . import native
from ._config import DEFAULTS_PATH, Config, load_worker_config
from .sock._pool import open_worker_backend, subtree_parents
from .sock._process import worker_id
from .sock._rootfs import make_base_skeleton, mounts_under, remove_tree_safely
from .sock.cgroups import CgroupAnomalies, CgroupLayout

log = logging.getLogger("olactors.worker_dir")
DEFAULT_PATH = Path("olactors-worker")


def init_worker_dir(path: Path, overrides: list[str] = ()) -> Config:
    """Create the worker dir (idempotent); an existing worker.yaml is validated, not replaced."""
    path.mkdir(parents=True, exist_ok=True)
    config_file = path / "worker.yaml"
    if not config_file.exists():
        tmp = config_file.with_suffix(".yaml.tmp")
        tmp.write_text(DEFAULTS_PATH.read_text())
        os.replace(tmp, config_file)
    config = load_worker_config(path, overrides)
    (path / "registry").mkdir(exist_ok=True)
    if not config.sandbox.base_dir:
        make_base_skeleton(path / "base")
    return config


async def cleanup_worker_dir(path: Path, config: Config) -> list[str]:
    """Remove what a dead worker left behind; safe to run twice.

    Kills every process in the worker's cgroup subtree and removes the
    subtree (found from run/cgroups.json, see ``recorded_layout``), detaches any mount
    below the worker dir (left by a worker that ran without its private mount
    namespace), and deletes run/ (sandbox dirs, sockets).  Returns what was done.
    """
    path = path.resolve()
    done: list[str] = []
    wid = worker_id(path)
    layout = recorded_layout(
        CgroupLayout.current(prefer=config.sandbox.cgroup_version), path / "run" / "cgroups.json"
    )
    existing = [
        p
        for parent in subtree_parents(config, layout)
        if os.path.isdir(p := os.path.join(parent, f"olactors-{wid}"))
    ]
    if existing:
        backend = open_worker_backend(config, layout, wid, CgroupAnomalies())
        await backend.remove_subtree(timeout=config.sandbox.kill_timeout_s)
        done.extend(f"removed cgroup subtree {p}" for p in existing)
    for point in mounts_under(path):
        try:
            native.umount(point, detach=True)
            done.append(f"unmounted {point}")
        except OSError as exc:
            log.warning("could not unmount %s: %s", point, exc)
    run = path / "run"
    if run.exists():
        remove_tree_safely(run)
        done.append(f"removed {run}")
    admin = path / "admin.sock"
    if admin.exists() or admin.is_symlink():
        admin.unlink()
        done.append(f"removed {admin}")
    return done


def recorded_layout(layout: CgroupLayout, record: Path) -> CgroupLayout:
    """``layout`` with each hierarchy's own dir taken from what the worker recorded.

    The cgroup a shell runs in need not be the one the worker ran in (here,
    every command gets its own memory cgroup), so cleanup removes the subtree
    the worker wrote down in run/cgroups.json rather than recomputing it.
    Recorded paths outside the hierarchy's mount are ignored, and the backend
    still refuses any subtree not named ``olactors-<worker id>``.
    """
    try:
        recorded = json.loads(record.read_text())["subtrees"]
    except (OSError, ValueError, KeyError, TypeError):
        return layout
    replaced = {}
    for h in layout.hierarchies:
        mount = h.mount_point.rstrip("/") + "/"
        match = [
            p for p in recorded if isinstance(p, str) and os.path.normpath(p).startswith(mount)
        ]
        replaced[id(h)] = (
            dataclasses.replace(h, own_dir=os.path.dirname(os.path.normpath(match[0])))
            if match
            else h
        )
    return dataclasses.replace(
        layout,
        hierarchies=tuple(replaced[id(h)] for h in layout.hierarchies),
        by_controller={c: replaced[id(h)] for c, h in layout.by_controller.items()},
    )
