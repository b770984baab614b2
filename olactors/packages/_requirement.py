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
_ARCHIVE = re.compile(r"-\d[^/]*\.(?:whl|zip|tar\.gz|tgz|tar\.bz2)$", re.IGNORECASE)
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
    merged: list[str] = []
    for piece in pieces:
        stripped = piece.strip()
        if merged and stripped[:1] in ("<", ">", "=", "!", "~") and ";" not in merged[-1]:
            merged[-1] = f"{merged[-1]},{stripped}"
        else:
            merged.append(stripped)
    return merged


def _looks_like_location(text: str) -> bool:
    first = text.split(";", 1)[0].strip()
    return (
        "://" in first
        or first.startswith((".", "/", "~", "\\"))
        or _ARCHIVE.search(first) is not None
        or _VCS.match(first) is not None
    )


def _describe(exc: InvalidRequirement) -> str:
    """packaging's first message line, plus the column its caret points at."""
    lines = str(exc).splitlines()
    message = lines[0].strip() if lines else "invalid"
    if len(lines) >= 3 and "^" in lines[-1]:
        column = lines[-1].index("^") - (len(lines[-2]) - len(lines[-2].lstrip())) + 1
        if column >= 1:
            message += f" (at column {column})"
    return message
