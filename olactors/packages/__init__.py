"""Packages a function declares, resolved with pip and locked.

- :func:`read_function_packages` / :func:`read_declaration`: what a function
  directory declares (``requirements.txt``, ``ol.yaml`` ``packages:`` or
  ``# ol-install:`` in ``f.py``) and its ``ol.lock``, checked against each other.
- :func:`resolve` / :func:`resolve_async`: pip's resolver, binary wheels only,
  with the worker's :class:`IndexOptions`.
- :func:`lock_function_dir`: what ``olactors lock`` does.
"""

from __future__ import annotations

from ._declare import (
    OL_YAML,
    REQUIREMENTS_FILE,
    SINGLE_FILE,
    Declaration,
    DeclaredRequirement,
    FunctionPackages,
    parse_ol_install,
    parse_requirements_txt,
    read_declaration,
    read_function_packages,
)
from ._index import IndexOptions, pip_environment
from ._lock import LOCK_FILE, Lock, Pin, check_lock, format_lock, parse_lock, read_lock, write_lock
from ._locking import LockResult, lock_function_dir
from ._requirement import parse_requirement
from ._resolve import Resolution, ResolvedDistribution, parse_report, resolve, resolve_async

__all__ = [
    "LOCK_FILE",
    "OL_YAML",
    "REQUIREMENTS_FILE",
    "SINGLE_FILE",
    "Declaration",
    "DeclaredRequirement",
    "FunctionPackages",
    "IndexOptions",
    "Lock",
    "LockResult",
    "Pin",
    "Resolution",
    "ResolvedDistribution",
    "check_lock",
    "format_lock",
    "lock_function_dir",
    "parse_lock",
    "parse_ol_install",
    "parse_report",
    "parse_requirement",
    "parse_requirements_txt",
    "pip_environment",
    "read_declaration",
    "read_function_packages",
    "read_lock",
    "resolve",
    "resolve_async",
    "write_lock",
]
