"""Functions the benchmarks install into a worker's registry."""

from __future__ import annotations

from pathlib import Path

ECHO_HANDLER = "def f(event):\n    return event\n"


def write_echo_functions(registry: Path, count: int, prefix: str = "fn") -> list[str]:
    """``count`` copies of an echo function, ``<prefix>0`` to ``<prefix>N-1``; their names."""
    names = [f"{prefix}{i}" for i in range(count)]
    for name in names:
        (registry / name).mkdir(parents=True)
        (registry / name / "f.py").write_text(ECHO_HANDLER)
    return names
