"""Installed distributions on disk: ``<worker>/packages/<name>/<version>/``.

Each version lives in its own directory: ``site/`` (the ``sys.path`` entry a
sandbox sees at ``/packages/<name>/<version>``) and ``meta.json`` (size and
top-level modules).  A version appears there only complete: the installer
works in ``.staging/``, and :meth:`PackageStore.commit` checks what pip
produced and renames it into place in one step; removal renames it back out
before deleting.  A directory without a readable ``meta.json`` (a crash at
the wrong moment) is removed when the store opens.

The store also keeps the disk budget (least recently used versions that
nothing holds go first) and the packages found unfit for zygotes
(``unsuitable.json``).  Blocking I/O: call from a thread.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._lock import Pin

STAGING = ".staging"
UNSUITABLE_FILE = "unsuitable.json"
META_FILE = "meta.json"
SITE_DIR = "site"


class BadInstall(Exception):
    """What pip left is not the distribution asked for (message says why)."""


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    """One installed version: its ``site`` dir and top-level ``modules``."""

    name: str
    version: str
    site: Path
    modules: tuple[str, ...]
    size_bytes: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


class PackageStore:
    """The ``packages/`` dir of a worker (thread-safe; blocking)."""

    def __init__(self, root: Path, max_disk_mb: int) -> None:
        self.root = root
        self.budget_bytes = max_disk_mb << 20
        self._lock = threading.Lock()
        self._installed: dict[tuple[str, str], InstalledPackage] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self._holds: Counter[tuple[str, str]] = Counter()
        self.unsuitable: dict[str, dict[str, str]] = {}
        self.evicted = 0

    # ----------------------------------------------------------------- open
    def open(self) -> None:
        """Load what is installed; drop staging leftovers and incomplete versions."""
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
        (self.root / STAGING).mkdir()
        for name_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if name_dir.name.startswith("."):
                continue  # staging, tools
            for version_dir in sorted(p for p in name_dir.iterdir()):
                package = _read_installed(version_dir)
                if package is None:
                    shutil.rmtree(version_dir, ignore_errors=True)
                    continue
                self._installed[package.key] = package
                self._last_used[package.key] = version_dir.stat().st_mtime
        self.unsuitable = _read_unsuitable(self.root / UNSUITABLE_FILE)

    # ------------------------------------------------------------- queries
    def get(self, pin: Pin) -> InstalledPackage | None:
        with self._lock:
            return self._installed.get((pin.name, pin.version))

    def used_bytes(self) -> int:
        with self._lock:
            return sum(p.size_bytes for p in self._installed.values())

    def describe(self) -> dict[str, object]:
        with self._lock:
            return {
                "installed": [
                    {
                        "name": p.name,
                        "version": p.version,
                        "size_bytes": p.size_bytes,
                        "modules": list(p.modules),
                        "held": self._holds[p.key],
                    }
                    for p in sorted(self._installed.values(), key=lambda p: p.key)
                ],
                "used_bytes": sum(p.size_bytes for p in self._installed.values()),
                "budget_bytes": self.budget_bytes,
                "evicted": self.evicted,
                "unsuitable": dict(sorted(self.unsuitable.items())),
            }

    # ---------------------------------------------------------------- holds
    def hold(self, keys: list[tuple[str, str]]) -> None:
        """Keep these versions from eviction until :meth:`unhold` (counted)."""
        now = time.time()
        with self._lock:
            for key in keys:
                self._holds[key] += 1
                self._last_used[key] = now

    def unhold(self, keys: list[tuple[str, str]]) -> None:
        with self._lock:
            for key in keys:
                self._holds[key] -= 1
                if self._holds[key] <= 0:
                    del self._holds[key]

    # -------------------------------------------------------------- install
    def new_staging(self, pin: Pin) -> Path:
        """An empty working dir for installing ``pin``, with its ``req.txt``."""
        staging = self.root / STAGING / f"{pin.name}-{pin.version}-{secrets.token_hex(4)}"
        staging.mkdir()
        (staging / "req.txt").write_text(pin.line() + "\n")
        return staging

    def commit(self, pin: Pin, staging: Path) -> InstalledPackage:
        """Check what pip installed into ``staging/site`` and move it into place.

        Raises :class:`BadInstall` (and leaves nothing) when the site dir does
        not hold exactly ``pin``'s distribution.
        """
        site = staging / SITE_DIR
        try:
            _own_by_worker(site)
            modules = _check_site(site, pin)
            size = _tree_size(site)
            final_tmp = self.root / STAGING / f"{staging.name}.done"
            final_tmp.mkdir()
            os.rename(site, final_tmp / SITE_DIR)
            meta: dict[str, object] = {
                "name": pin.name,
                "version": pin.version,
                "modules": list(modules),
            }
            meta["size_bytes"] = size
            (final_tmp / META_FILE).write_text(json.dumps(meta))
            dest = self.root / pin.name / pin.version
            dest.parent.mkdir(exist_ok=True)
            os.rename(final_tmp, dest)
        finally:
            self.discard_staging(staging)
            shutil.rmtree(self.root / STAGING / f"{staging.name}.done", ignore_errors=True)
        package = InstalledPackage(pin.name, pin.version, dest / SITE_DIR, modules, size)
        with self._lock:
            self._installed[package.key] = package
            self._last_used[package.key] = time.time()
        return package

    def discard_staging(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------- eviction
    def evict_to_budget(self, mounted: set[str]) -> list[tuple[str, str]]:
        """Remove least recently used versions that are neither held nor
        ``mounted`` (site dirs live sandboxes mount) until the store fits its
        budget; returns what went."""
        removed = []
        with self._lock:
            used = sum(p.size_bytes for p in self._installed.values())
            candidates = sorted(
                (
                    key
                    for key, package in self._installed.items()
                    if key not in self._holds and str(package.site) not in mounted
                ),
                key=lambda key: self._last_used.get(key, 0.0),
            )
            for key in candidates:
                if used <= self.budget_bytes:
                    break
                package = self._installed.pop(key)
                self._last_used.pop(key, None)
                used -= package.size_bytes
                removed.append(key)
        for name, version in removed:
            doomed = self.root / STAGING / f"evicted-{name}-{version}-{secrets.token_hex(4)}"
            os.rename(self.root / name / version, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            try:
                (self.root / name).rmdir()
            except OSError:
                pass
        self.evicted += len(removed)
        return removed

    # ------------------------------------------------------------ unsuitable
    def mark_unsuitable(self, package: str, version: str, reason: str) -> None:
        """Record (persistently) that ``package`` must not be preloaded in zygotes."""
        with self._lock:
            self.unsuitable[canonicalize_name(package)] = {"version": version, "reason": reason}
            data = json.dumps(self.unsuitable, indent=1, sort_keys=True)
        path = self.root / UNSUITABLE_FILE
        tmp = path.with_name(f".{UNSUITABLE_FILE}.{secrets.token_hex(4)}")
        tmp.write_text(data)
        os.rename(tmp, path)

    def unsuitable_names(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self.unsuitable)


# ------------------------------------------------------------------ helpers
def _read_installed(version_dir: Path) -> InstalledPackage | None:
    try:
        meta = json.loads((version_dir / META_FILE).read_text())
        site = version_dir / SITE_DIR
        if not site.is_dir() or meta["version"] != version_dir.name:
            return None
        return InstalledPackage(
            meta["name"], meta["version"], site, tuple(meta["modules"]), int(meta["size_bytes"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_unsuitable(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(name): {"version": str(v.get("version", "")), "reason": str(v.get("reason", ""))}
        for name, v in data.items()
        if isinstance(v, dict)
    }


def _own_by_worker(site: Path) -> None:
    """The installer ran unprivileged: give the tree to root, never following links."""
    if not site.is_dir() or site.is_symlink():
        raise BadInstall("pip installed nothing")
    for dirpath, dirnames, filenames in os.walk(site):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), 0, 0)
    os.lchown(site, 0, 0)


def _check_site(site: Path, pin: Pin) -> tuple[str, ...]:
    """Exactly ``pin``'s dist-info must be there; returns its top-level modules."""
    infos = [p for p in site.iterdir() if p.name.endswith(".dist-info") and p.is_dir()]
    if len(infos) != 1:
        raise BadInstall(f"expected one .dist-info, found {len(infos)}")
    info = infos[0]
    stem = info.name[: -len(".dist-info")]
    name, _, version = stem.rpartition("-")
    try:
        same_version = Version(version) == Version(pin.version)
    except InvalidVersion:
        same_version = False
    if canonicalize_name(name) != pin.name or not same_version:
        raise BadInstall(f"pip installed {stem}, not {pin.name}=={pin.version}")
    return top_level_modules(site, info)


def top_level_modules(site: Path, info: Path) -> tuple[str, ...]:
    """Importable top-level modules of the distribution whose metadata is ``info``:
    ``top_level.txt`` when it has one, else the first parts of ``RECORD``'s paths."""
    try:
        candidates = (info / "top_level.txt").read_text().split()
    except OSError:
        try:
            record = (info / "RECORD").read_text().splitlines()
        except OSError:
            record = []
        candidates = [line.split(",", 1)[0].split("/", 1)[0] for line in record]
    found = set()
    for entry in candidates:
        name = entry.strip()
        if name.endswith((".py", ".so", ".pyd")):
            name = name.split(".", 1)[0]  # mod.py, mod.cpython-311-x86_64-linux-gnu.so
        if not name.isidentifier() or name.startswith("__"):
            continue
        if (site / name / "__init__.py").is_file() or (site / f"{name}.py").is_file():
            found.add(name)
        elif any(site.glob(f"{name}.*.so")) or (site / f"{name}.so").is_file():
            found.add(name)
    return tuple(sorted(found))


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
