"""The lock file ``ol.lock``: the exact distributions a function uses (pure but for file I/O).

Format (version 1), UTF-8 text, written by ``olactors lock``::

    # olactors lock v1: exact versions for this function, written by `olactors lock`.
    # Markers were evaluated for cpython 3.11 on linux x86_64.
    alpha==1.0 --hash=sha256:1265dcaa4145c8dfbcd9626427ae9f578935666b81119fa99111341124b9233f
    gamma==1.0 --hash=sha256:5769c34023016868014f81f2eca231331248acbb798165321743e0aa5ba2026a

The first line must start with ``# olactors lock v1``. Every other line is
blank, a ``#`` comment, or one pin: a canonical project name, ``==``, a
normalised PEP 440 version, and optionally `` --hash=sha256:<64 lowercase
hex>`` (the wheel's digest as the index reported it). A name may be pinned
once. Written files list pins sorted by name and end with a newline, so the
same resolution always gives the same bytes. The pin lines are also valid
pip requirement lines (``pip install --no-deps --require-hashes -r ol.lock``).

Every problem is a :class:`BadFunction` naming the file and line.
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .._errors import BadFunction
from .._files import write_atomically

LOCK_FILE = "ol.lock"
LOCK_HEADER = "# olactors lock v1"
_PIN = re.compile(r"(?P<name>[^=\s]+)==(?P<version>[^\s]+)(?P<rest>.*)")
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_HASH = re.compile(r"--hash=sha256:(?P<digest>[0-9a-f]{64})")
_MAX_LOCK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Pin:
    """One locked distribution: canonical ``name``, normalised ``version``,
    and the sha256 hex digest of its wheel when known."""

    name: str
    version: str
    sha256: str | None = None

    def line(self) -> str:
        """The pin as a lock file line (without the newline)."""
        text = f"{self.name}=={self.version}"
        return f"{text} --hash=sha256:{self.sha256}" if self.sha256 else text


@dataclass(frozen=True, slots=True)
class Lock:
    """A parsed lock: pins sorted by name, each name once."""

    pins: tuple[Pin, ...] = ()

    def get(self, name: str) -> Pin | None:
        """The pin of the project ``name`` (any spelling), or ``None``."""
        wanted = canonicalize_name(name)
        return next((pin for pin in self.pins if pin.name == wanted), None)


class _Declared(Protocol):
    @property
    def requirement(self) -> Requirement: ...
    @property
    def origin(self) -> str: ...


def format_lock(pins: Iterable[Pin]) -> str:
    """The lock file text for ``pins`` (sorted by name; duplicates refused)."""
    ordered = sorted(pins, key=lambda pin: pin.name)
    names = [pin.name for pin in ordered]
    for first, second in zip(names, names[1:], strict=False):
        if first == second:
            raise ValueError(f"{first} is pinned twice")
    interpreter = (
        f"{sys.implementation.name} {sys.version_info.major}.{sys.version_info.minor} "
        f"on {sys.platform} {platform.machine()}"
    )
    lines = [
        f"{LOCK_HEADER}: exact versions for this function, written by `olactors lock`.",
        f"# Markers were evaluated for {interpreter}.",
        *(pin.line() for pin in ordered),
    ]
    return "\n".join(lines) + "\n"


def parse_lock(text: str, origin: str = LOCK_FILE) -> Lock:
    """Parse lock file ``text`` strictly (see the module doc)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith(LOCK_HEADER):
        raise BadFunction(
            f"{origin} line 1: not an olactors lock file (expected it to start with "
            f"{LOCK_HEADER!r}; regenerate it with `olactors lock`)"
        )
    seen: dict[str, int] = {}
    pins = []
    for number, line in enumerate(lines[1:], start=2):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pin = _parse_pin(stripped, f"{origin} line {number}")
        if pin.name in seen:
            raise BadFunction(
                f"{origin} line {number}: {pin.name} is already pinned on line {seen[pin.name]}"
            )
        seen[pin.name] = number
        pins.append(pin)
    return Lock(tuple(sorted(pins, key=lambda pin: pin.name)))


def read_lock(function_dir: Path) -> Lock | None:
    """Parse ``function_dir/ol.lock``; ``None`` when there is none."""
    path = function_dir / LOCK_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_LOCK_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadFunction(f"cannot read {LOCK_FILE}: {exc.strerror or exc}") from None
    if len(data) > _MAX_LOCK_BYTES:
        raise BadFunction(f"{LOCK_FILE} is larger than {_MAX_LOCK_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFunction(f"{LOCK_FILE} is not UTF-8 text (byte {exc.start})") from None
    return parse_lock(text, LOCK_FILE)


def write_lock(function_dir: Path, pins: Iterable[Pin]) -> Path:
    """Write ``function_dir/ol.lock`` atomically and return its path.

    The text goes to a temporary file in the same directory, is flushed to
    disk and renamed over the lock; on any failure the temporary file is
    removed and an existing lock is left as it was.
    """
    text = format_lock(pins)
    path = function_dir / LOCK_FILE
    write_atomically(path, text.encode("utf-8"), durable=True)
    return path


def check_lock(lock: Lock, declared: Iterable[_Declared], origin: str = LOCK_FILE) -> None:
    """Check that ``lock`` satisfies every declared requirement that applies here.

    A requirement whose marker is false for this interpreter is skipped; any
    other must have a pin of its name whose version is in its range
    (pre-releases included: a pin is explicit). Extras are not checked (that
    would need each distribution's metadata). Raises :class:`BadFunction`
    naming the package, the pin and the declaration.
    """
    for item in declared:
        requirement = item.requirement
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pin = lock.get(requirement.name)
        if pin is None:
            raise BadFunction(
                f"{origin} does not pin {requirement.name}, which {item.origin} requires "
                f"({requirement}); run `olactors lock` again"
            )
        if not requirement.specifier.contains(pin.version, prereleases=True):
            raise BadFunction(
                f"{origin} pins {pin.name}=={pin.version}, which does not satisfy "
                f"{requirement} ({item.origin}); run `olactors lock` again"
            )


def _parse_pin(text: str, where: str) -> Pin:
    match = _PIN.fullmatch(text)
    if match is None:
        raise BadFunction(
            f"{where}: expected 'name==version' optionally followed by "
            f"'--hash=sha256:<hex>', got {text!r}"
        )
    name, version, rest = match.group("name", "version", "rest")
    if not _NAME.fullmatch(name):
        raise BadFunction(f"{where}: {name!r} is not a valid project name")
    canonical = canonicalize_name(name)
    if name != canonical:
        raise BadFunction(f"{where}: project name {name!r} is not canonical (write {canonical!r})")
    try:
        normal = str(Version(version))
    except InvalidVersion:
        raise BadFunction(f"{where}: {version!r} is not a valid version") from None
    if normal != version:
        raise BadFunction(f"{where}: version {version!r} is not normalised (write {normal!r})")
    rest = rest.strip()
    digest = None
    if rest:
        hashed = _HASH.fullmatch(rest)
        if hashed is None:
            raise BadFunction(
                f"{where}: after the version only '--hash=sha256:<64 lowercase hex digits>' "
                f"may follow, got {rest!r}"
            )
        digest = hashed.group("digest")
    return Pin(name, version, digest)
