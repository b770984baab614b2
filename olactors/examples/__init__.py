"""Example functions shipped with olactors, installed into a new worker's registry.

Each subdirectory is one function (its ``f.py``); ``olactors serve`` copies
them into ``<worker>/registry/`` when that registry is empty.
"""

from __future__ import annotations

import shutil
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir() and (p / "f.py").is_file())


def install_examples(registry_dir: Path) -> list[str]:
    """Copy every example not already present into ``registry_dir``; returns the names copied.

    Each copy is made under a temporary name and renamed into place, so a
    registry never holds a half-copied function.
    """
    registry_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in example_names():
        target = registry_dir / name
        if target.exists():
            continue
        tmp = registry_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(
            EXAMPLES_DIR / name, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        tmp.rename(target)
        copied.append(name)
    return copied
