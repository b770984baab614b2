"""The pure core is type-checked strictly: pyproject's strict mypy override
must name exactly the modules ``olactors/_*.py`` (mypy's module patterns cannot
say "every private top-level module", so a new core module must be added there)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def strict_modules() -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    for override in config["tool"]["mypy"]["overrides"]:
        if override.get("disallow_untyped_defs"):
            return set(override["module"])
    raise AssertionError("pyproject.toml has no strict mypy override")


def test_every_core_module_is_checked_strictly() -> None:
    core = {f"olactors.{p.stem}" for p in (REPO / "olactors").glob("_*.py") if p.stem != "__init__"}
    assert strict_modules() == core
