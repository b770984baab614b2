"""One declared requirement: validation shared by every declaration source (pure).

Only index requirements are accepted: a project name, optional extras, an
optional version range and an optional environment marker
(``beta[fast]>=1,<3; python_version >= "3.10"``). pip options, URLs, local
paths, VCS references and direct references (``name @ url``) are refused:
the worker installs from its configured index only.
"""

from __future__ import annotations

import re

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .._errors import BadFunction

_OPTION = re.compile(r"(?:^|\s)(--?[A-Za-z][\w-]*)")
# A distribution file name: a version after a dash, then an archive suffix.
_ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2")
_VERSION_DASH = re.compile(r"-\d")
# packaging parses markers by recursive descent: deeper nesting exhausts the stack.
_MAX_NESTING = 32
_VCS = re.compile(r"[A-Za-z][\w.-]*\+[A-Za-z]+:")  # git+ssh:..., hg+http:...
_EXAMPLE = "a name with optional extras, version range and marker, like 'name[extra]>=1.0'"


def parse_requirement(text: str, where: str) -> Requirement:
    """Parse one requirement; its name and extras are canonicalised.

    ``where`` starts every error message (``"requirements.txt line 3"``).
    Raises :class:`BadFunction` (500) saying what is wrong.
    """
    text = text.strip()
    if not text:
        raise BadFunction(f"{where}: empty requirement")
    option = _OPTION.search(text)
    if option:
        raise BadFunction(
            f"{where}: pip option {option.group(1)!r} is not supported; "
            f"declare requirements only ({_EXAMPLE})"
        )
    if _looks_like_location(text):
        raise BadFunction(
            f"{where}: {text!r} is a URL or a path; only requirements resolved from "
            f"the worker's package index are supported ({_EXAMPLE})"
        )
    if _nesting(text) > _MAX_NESTING:
        raise BadFunction(
            f"{where}: brackets or parentheses nest deeper than {_MAX_NESTING} levels"
        )
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise BadFunction(
            f"{where}: {text!r} is not a valid requirement: {_describe(exc)}"
        ) from None
    if requirement.url:
        raise BadFunction(
            f"{where}: {text!r} is a direct reference (name @ URL); only requirements "
            "resolved from the worker's package index are supported"
        )
    requirement.name = canonicalize_name(requirement.name)
    requirement.extras = {canonicalize_name(extra) for extra in requirement.extras}
    return requirement


def split_requirement_list(text: str) -> list[str]:
    """Split a comma-separated list of requirements (``a, b>=2,<3, c[x,y]``).

    A comma inside brackets, parentheses or quotes does not split, and a piece
    that starts with a version operator continues the previous requirement's
    range (``b>=2,<3`` stays whole). Pieces are stripped; empty ones are kept
    (as ``""``) so that the caller can report them.
    """
    pieces: list[str] = []
    depth = 0
    quote = ""
    start = 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[(":
            depth += 1
        elif char in "])":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            pieces.append(text[start:index])
            start = index + 1
    pieces.append(text[start:])
    merged: list[list[str]] = []  # each requirement's comma-separated parts
    for piece in pieces:
        stripped = piece.strip()
        if merged and stripped[:1] in ("<", ">", "=", "!", "~") and ";" not in merged[-1][-1]:
            merged[-1].append(stripped)
        else:
            merged.append([stripped])
    return [",".join(parts) for parts in merged]


def _looks_like_location(text: str) -> bool:
    first = text.split(";", 1)[0].strip()
    return (
        "://" in first
        or first.startswith((".", "/", "~", "\\"))
        or _is_archive_name(first)
        or _VCS.match(first) is not None
    )


def _is_archive_name(text: str) -> bool:
    """A distribution file name: an archive suffix, and a dash then a digit
    in the last path segment before it (linear time, unlike one regex)."""
    lowered = text.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lowered.endswith(suffix):
            stem = text[: -len(suffix)].rpartition("/")[2]
            if _VERSION_DASH.search(stem):
                return True
    return False


def _nesting(text: str) -> int:
    """The deepest nesting of brackets and parentheses in ``text``."""
    depth = deepest = 0
    for char in text:
        if char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth = max(0, depth - 1)
    return deepest


def _describe(exc: InvalidRequirement) -> str:
    """packaging's first message line, plus the column its caret points at."""
    lines = str(exc).splitlines()
    message = lines[0].strip() if lines else "invalid"
    if len(lines) >= 3 and "^" in lines[-1]:
        column = lines[-1].index("^") - (len(lines[-2]) - len(lines[-2].lstrip())) + 1
        if column >= 1:
            message += f" (at column {column})"
    return message
