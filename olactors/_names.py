"""Function names (pure).

A function name is used as a URL path segment (``/run/<name>``), a registry
file name (``<name>/`` or ``<name>.tar.gz``) and a directory name under
``run/code``, so it is restricted to ``[A-Za-z0-9._-]``, at most
:data:`MAX_NAME_LENGTH` characters, and may not start with a dot (no hidden
files, no ``.`` or ``..``).
"""

from __future__ import annotations

import re

from ._errors import BadFunctionName

MAX_NAME_LENGTH = 128
_ALLOWED = re.compile(r"[A-Za-z0-9._-]+")
_FORBIDDEN_CHAR = re.compile(r"[^A-Za-z0-9._-]")


def validate_function_name(name: str) -> str:
    """Return ``name`` unchanged if it is a valid function name.

    Raises :class:`BadFunctionName` (400) naming the problem otherwise.
    """
    if not isinstance(name, str):
        raise BadFunctionName(f"function name must be a string, got {type(name).__name__}")
    if not name:
        raise BadFunctionName("function name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise BadFunctionName(
            f"function name is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
        )
    if name.startswith("."):
        raise BadFunctionName(f"function name {name!r} starts with a dot")
    if not _ALLOWED.fullmatch(name):
        bad = _FORBIDDEN_CHAR.search(name)
        char = bad.group() if bad else name
        raise BadFunctionName(
            f"function name {name!r} contains {char!r} (allowed: letters, digits, '.', '_', '-')"
        )
    return name
