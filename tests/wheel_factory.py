"""Small pure-Python wheels for offline package tests.

Each is one generated ``<module>/__init__.py`` written by
:func:`olactors.packages._wheel.write_wheel` (complete enough for pip, and
byte-for-byte reproducible, so a lock file of them is identical across runs).
A directory of them is a pip index with ``--no-index --find-links DIR``.

:func:`build_standard_wheels` builds the set the package tests share (see
:data:`STANDARD_SET`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from olactors.packages._wheel import write_wheel

# Real work at import: a small table, a digest over it, and a function that uses them.
_MODULE = '''\
"""{name} {version}: a generated test package."""

import hashlib

NAME = "{name}"
VERSION = "{version}"
TABLE = [(i * i + {seed}) % 9973 for i in range(2000)]
DIGEST = hashlib.sha256(repr(TABLE).encode()).hexdigest()
{extra}

def describe():
    """This package's name, version and the digest computed at import."""
    return {{"name": NAME, "version": VERSION, "digest": DIGEST[:12]}}
'''


@dataclass(frozen=True)
class WheelSpec:
    """One distribution to build: ``requires`` are ``Requires-Dist`` lines,
    ``extras`` maps an extra's name to the requirements it adds, ``extra_code``
    is appended to the generated module."""

    name: str
    version: str
    requires: tuple[str, ...] = ()
    extras: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_code: str = ""

    @property
    def module(self) -> str:
        return self.name.replace("-", "_")

    @property
    def filename(self) -> str:
        return f"{self.module}-{self.version}-py3-none-any.whl"


STANDARD_SET: tuple[WheelSpec, ...] = (
    WheelSpec("alpha", "1.0"),
    WheelSpec("alpha", "2.0"),
    WheelSpec(
        "beta",
        "1.0",
        extras={"fast": ("gamma>=1.0",)},
        extra_code=(
            "try:\n    import gamma as _gamma\nexcept ImportError:\n    _gamma = None\n"
            "FAST = _gamma is not None\n"
        ),
    ),
    WheelSpec("gamma", "1.0"),
    WheelSpec(
        "delta",
        "1.0",
        requires=('alpha<2; python_version >= "3"',),
        extra_code="import alpha as _alpha\nALPHA_VERSION = _alpha.VERSION\n",
    ),
    WheelSpec("epsilon", "1.0", requires=('zeta; sys_platform == "win32"',)),
    WheelSpec("zeta", "1.0"),
    WheelSpec("conflict-a", "1.0", requires=("alpha>=2",)),
    WheelSpec("conflict-b", "1.0", requires=("alpha<2",)),
)
"""alpha 1.0 and 2.0 side by side; beta with an extra ``fast`` pulling gamma;
delta needing ``alpha<2`` under a marker true here; epsilon needing zeta under
a marker false here (win32); conflict-a and conflict-b, which cannot be
installed together."""


def build_standard_wheels(dest: Path) -> Path:
    """Build :data:`STANDARD_SET` into ``dest`` (created if missing) and return ``dest``."""
    for spec in STANDARD_SET:
        build_wheel(spec, dest)
    return dest


def build_wheel(spec: WheelSpec, dest: Path) -> Path:
    """Write ``spec``'s wheel into ``dest`` and return its path."""
    seed = int(hashlib.sha256(f"{spec.name}{spec.version}".encode()).hexdigest()[:6], 16)
    module = _MODULE.format(
        name=spec.name, version=spec.version, seed=seed, extra=spec.extra_code
    ).encode()
    return write_wheel(
        dest,
        spec.name,
        spec.version,
        {f"{spec.module}/__init__.py": module},
        requires=spec.requires,
        extras=spec.extras,
    )
