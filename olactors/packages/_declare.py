"""What a function directory declares it needs (pure: no trio; reads files only).

A function declares its packages in exactly one of three places:

- ``requirements.txt``: pip's requirement syntax, one requirement per line,
  with ``#`` comments, blank lines and ``\\`` line continuations. pip options
  (``-r``, ``-e``, ``--index-url``, ``--hash``...), URLs, paths and VCS
  references are refused: the worker installs from its configured index only.
- ``packages:`` in ``ol.yaml``: a list of requirement strings.
- ``# ol-install: a, b>=2,<3`` in ``f.py``: comment lines at the top of the
  file, before any code (a docstring is code); several such lines add up.
  Requirements are separated by commas; a comma inside brackets or quotes,
  or one followed by a version operator (``b>=2,<3``), does not separate.

A source counts as a declaration when it names at least one requirement; two
sources doing so is an error. Names and extras are canonicalised
(``Foo_Bar[Fast]`` becomes ``foo-bar[fast]``). Every problem is a
:class:`BadFunction` (500) whose message names the file, the line or list
index, and what is wrong. A function declaring nothing has no requirements.

The lock file (:mod:`._lock`), when present, wins: :func:`read_function_packages`
checks that its pins satisfy the declaration and returns both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from .._errors import BadFunction
from ._lock import LOCK_FILE, Lock, check_lock, read_lock
from ._requirement import parse_requirement, split_requirement_list

REQUIREMENTS_FILE = "requirements.txt"
OL_YAML = "ol.yaml"
SINGLE_FILE = "f.py"
_COMMENT = re.compile(r"(^|\s)#.*$")  # one \s, not \s+: linear time on long lines
_OL_INSTALL = re.compile(r"#\s*ol-install\s*:(.*)$")
_MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class DeclaredRequirement:
    """One requirement and where it was declared (``"requirements.txt line 3"``)."""

    requirement: Requirement
    origin: str

    @property
    def name(self) -> str:
        """The canonical project name."""
        return self.requirement.name

    @property
    def text(self) -> str:
        """The normalised requirement string, as handed to pip."""
        return str(self.requirement)


@dataclass(frozen=True, slots=True)
class Declaration:
    """A function's declared requirements, in declaration order.

    ``source`` is the file they come from (``requirements.txt``, ``ol.yaml``
    or ``f.py``), ``None`` when the function declares nothing.
    """

    source: str | None = None
    requirements: tuple[DeclaredRequirement, ...] = ()

    def texts(self) -> tuple[str, ...]:
        """The requirement strings, in declaration order."""
        return tuple(item.text for item in self.requirements)


@dataclass(frozen=True, slots=True)
class FunctionPackages:
    """What a function uses: its declaration and, when it has one, its lock.

    With a lock, exactly the lock's pins are used; the lock has been checked
    against the declaration.
    """

    declaration: Declaration
    lock: Lock | None = None


def read_function_packages(function_dir: Path) -> FunctionPackages:
    """Read ``function_dir``'s declaration and ``ol.lock`` and check they agree.

    Raises :class:`BadFunction` for a malformed source or lock, or for a
    lock that does not satisfy the declaration (naming the package).
    """
    declaration = read_declaration(function_dir)
    lock = read_lock(function_dir)
    if lock is not None:
        check_lock(lock, declaration.requirements, LOCK_FILE)
    return FunctionPackages(declaration, lock)


def read_declaration(function_dir: Path) -> Declaration:
    """Read the one declaration source of ``function_dir`` (see the module doc)."""
    found: list[Declaration] = []
    text = _read_text(function_dir / REQUIREMENTS_FILE, REQUIREMENTS_FILE)
    if text is not None:
        found.append(parse_requirements_txt(text, REQUIREMENTS_FILE))
    text = _read_text(function_dir / OL_YAML, OL_YAML)
    if text is not None:
        found.append(_from_ol_yaml(text))
    text = _read_text(function_dir / SINGLE_FILE, SINGLE_FILE)
    if text is not None:
        found.append(parse_ol_install(text, SINGLE_FILE))
    declaring = [item for item in found if item.requirements]
    if len(declaring) > 1:
        sources = " and ".join(_describe_source(item.source) for item in declaring)
        raise BadFunction(
            f"packages are declared in both {sources}; declare them in one place only"
        )
    return declaring[0] if declaring else Declaration()


def parse_requirements_txt(text: str, origin: str = REQUIREMENTS_FILE) -> Declaration:
    """Parse the text of a ``requirements.txt`` (see the module doc)."""
    items = []
    for number, line in _logical_lines(text):
        line = _COMMENT.sub("", line).strip()
        if line:
            where = f"{origin} line {number}"
            items.append(DeclaredRequirement(parse_requirement(line, where), where))
    return Declaration(origin, tuple(items))


def parse_ol_install(text: str, origin: str = SINGLE_FILE) -> Declaration:
    """The ``# ol-install:`` requirements in the leading comment block of ``text``."""
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break  # the first line of code ends the header
        match = _OL_INSTALL.match(stripped)
        if match is None:
            continue
        where = f"{origin} line {number}"
        if not match.group(1).strip():
            raise BadFunction(f"{where}: '# ol-install:' lists no packages")
        for index, piece in enumerate(split_requirement_list(match.group(1)), start=1):
            if not piece:
                raise BadFunction(f"{where}: item {index} of '# ol-install:' is empty")
            items.append(DeclaredRequirement(parse_requirement(piece, where), where))
    return Declaration(origin, tuple(items))


def declaration_from_strings(texts: tuple[str, ...], origin: str) -> Declaration:
    """A declaration from a list of requirement strings (``ol.yaml``'s ``packages:``)."""
    items = []
    for index, text in enumerate(texts):
        where = f"{origin} packages[{index}]"
        items.append(DeclaredRequirement(parse_requirement(text, where), where))
    return Declaration(origin, tuple(items))


def _from_ol_yaml(text: str) -> Declaration:
    # Imported here: _function_config validates its packages with ._requirement,
    # so importing it at module level would make the two packages import each other.
    from .._function_config import parse_function_config

    return declaration_from_strings(parse_function_config(text, OL_YAML).packages, OL_YAML)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """pip's line joining: a line ending in ``\\`` (and not a comment) continues
    on the next; each logical line carries the number of its first line."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    first = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.endswith("\\") and not _COMMENT.search(line):
            if not pending:
                first = number
            pending.append(line[:-1])
            continue
        if pending:
            lines.append((first, "".join(pending) + line))
            pending = []
        else:
            lines.append((number, line))
    if pending:
        lines.append((first, "".join(pending)))
    return lines


def _read_text(path: Path, origin: str) -> str | None:
    """The UTF-8 text of ``path``, ``None`` when it does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise BadFunction(f"{origin} is a directory, not a file") from None
    except OSError as exc:
        raise BadFunction(f"cannot read {origin}: {exc.strerror}") from None
    if len(data) > _MAX_FILE_BYTES and origin != SINGLE_FILE:
        raise BadFunction(f"{origin} is larger than {_MAX_FILE_BYTES} bytes")
    if origin == SINGLE_FILE:  # only its leading comments matter; code may be any encoding
        return data.decode("utf-8", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadFunction(f"{origin} is not UTF-8 text (byte {exc.start})") from None


def _describe_source(source: str | None) -> str:
    return {
        REQUIREMENTS_FILE: REQUIREMENTS_FILE,
        OL_YAML: "ol.yaml (packages:)",
        SINGLE_FILE: "f.py (# ol-install:)",
    }.get(source or "", str(source))
