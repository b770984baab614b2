"""Resolving requirements to exact distributions with pip's own resolver.

pip runs as ``python -I -m pip install --dry-run --ignore-installed
--only-binary=:all: --report FILE`` with this interpreter, so ranges, extras
and environment markers are decided by pip for the interpreter the sandboxes
run. ``--only-binary=:all:`` means resolution never builds an sdist (which
would run a package's setup code on the host). pip reads no configuration
file and none of the caller's ``PIP_*`` settings except network transport
ones (see :func:`._index.pip_environment`); it reaches only the indexes
:class:`IndexOptions` allows (none when offline).

:func:`resolve` blocks; :func:`resolve_async` runs pip with
``trio.run_process`` and kills it on timeout or cancellation. Both raise
:class:`PackageResolutionFailed` (424) naming the requirements, with the
last lines of pip's output, when pip fails or takes longer than
``timeout_s``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .._errors import PackageResolutionFailed
from ._index import IndexOptions, pip_environment
from ._lock import Pin

if TYPE_CHECKING:
    import trio

TAIL_LINES = 15
# pip's progress lines: dropped from the tail so that the reason remains.
_PROGRESS = (
    "Looking in ",
    "Processing ",
    "Collecting ",
    "Downloading ",
    "Using cached ",
    "Obtaining ",
    "Would install ",
    "Ignoring ",
)


@dataclass(frozen=True, slots=True)
class ResolvedDistribution:
    """One distribution pip chose: canonical ``name``, normalised ``version``,
    the wheel's ``url`` and ``filename``, its ``sha256`` when the index gave
    one, and whether a requirement named it (else it is a dependency)."""

    name: str
    version: str
    url: str
    filename: str
    sha256: str | None
    requested: bool

    def pin(self) -> Pin:
        """This distribution as a lock file pin."""
        return Pin(self.name, self.version, self.sha256)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The requirements resolved and the distributions chosen, sorted by name."""

    requirements: tuple[str, ...]
    distributions: tuple[ResolvedDistribution, ...]

    def pins(self) -> tuple[Pin, ...]:
        """The lock file pins of every distribution."""
        return tuple(dist.pin() for dist in self.distributions)

    def get(self, name: str) -> ResolvedDistribution | None:
        """The distribution of project ``name`` (any spelling), or ``None``."""
        wanted = canonicalize_name(name)
        return next((d for d in self.distributions if d.name == wanted), None)


def pip_command(requirements: Sequence[str], index: IndexOptions, report: Path) -> list[str]:
    """The pip command line that resolves ``requirements`` into the JSON ``report``."""
    for text in requirements:
        if not text or text.lstrip().startswith("-"):
            raise ValueError(f"not a requirement: {text!r}")
    return [
        sys.executable,
        "-I",
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--only-binary=:all:",
        f"--report={report}",
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar=off",
        *index.pip_args(),
        "--",
        *requirements,
    ]


def resolve(requirements: Sequence[str], index: IndexOptions, timeout_s: float) -> Resolution:
    """Resolve ``requirements`` (requirement strings) with pip; blocks.

    No requirements resolve to nothing without running pip.
    """
    requirements = tuple(requirements)
    if not requirements:
        return Resolution((), ())
    workdir = Path(tempfile.mkdtemp(prefix="olactors-resolve-"))
    try:
        report, log = workdir / "report.json", workdir / "pip.log"
        command = pip_command(requirements, index, report)
        with open(log, "wb") as output:
            try:
                completed = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=pip_environment(),
                    cwd=workdir,
                    timeout=timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired:  # subprocess.run has killed pip
                returncode = None
            else:
                returncode = completed.returncode
        return _outcome(requirements, returncode, workdir, timeout_s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def resolve_async(
    requirements: Sequence[str], index: IndexOptions, timeout_s: float
) -> Resolution:
    """:func:`resolve` for trio: pip runs under ``trio.run_process`` and is
    killed (SIGKILL) when ``timeout_s`` passes or the caller is cancelled."""
    import trio  # here: the rest of this package is usable without trio

    requirements = tuple(requirements)
    if not requirements:
        return Resolution((), ())
    workdir = Path(await trio.to_thread.run_sync(tempfile.mkdtemp, "", "olactors-resolve-"))
    try:
        report, log = workdir / "report.json", workdir / "pip.log"
        command = pip_command(requirements, index, report)
        output = await trio.to_thread.run_sync(open, log, "wb")
        returncode: int | None = None
        try:
            with trio.move_on_after(timeout_s):
                completed = await trio.run_process(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=pip_environment(),
                    cwd=workdir,
                    check=False,
                    deliver_cancel=_kill,
                )
                returncode = completed.returncode
        finally:
            output.close()
        return await trio.to_thread.run_sync(_outcome, requirements, returncode, workdir, timeout_s)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, workdir, True)


async def _kill(process: trio.Process) -> None:
    process.kill()


def _outcome(
    requirements: tuple[str, ...], returncode: int | None, workdir: Path, timeout_s: float
) -> Resolution:
    """The resolution in ``workdir/report.json``, or the failure pip's log explains."""
    tail = pip_tail((workdir / "pip.log").read_bytes().decode("utf-8", errors="replace"))
    if returncode is None:
        raise _failure(requirements, f"pip took longer than {timeout_s:g} s", tail)
    if returncode != 0:
        raise _failure(requirements, f"pip exited with status {returncode}", tail)
    try:
        data = json.loads((workdir / "report.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise _failure(requirements, f"pip wrote no readable report ({exc})", tail) from None
    return parse_report(data, requirements)


def parse_report(data: Any, requirements: Sequence[str] = ()) -> Resolution:
    """The :class:`Resolution` in pip's installation report ``data`` (parsed JSON).

    Raises :class:`PackageResolutionFailed` when the report lacks what is needed.
    """
    requirements = tuple(requirements)
    try:
        items = data["install"]
        distributions = [_distribution(item) for item in items]
    except (KeyError, TypeError, ValueError, InvalidVersion) as exc:
        raise _failure(requirements, f"pip's report is not as expected ({exc!r})", "") from None
    distributions.sort(key=lambda dist: dist.name)
    return Resolution(requirements, tuple(distributions))


def _distribution(item: dict[str, Any]) -> ResolvedDistribution:
    metadata = item["metadata"]
    info = item["download_info"]
    url = info["url"]
    hashes = (info.get("archive_info") or {}).get("hashes") or {}
    legacy = (info.get("archive_info") or {}).get("hash") or ""
    sha256 = hashes.get("sha256") or (legacy[7:] if legacy.startswith("sha256=") else None)
    return ResolvedDistribution(
        name=canonicalize_name(metadata["name"]),
        version=str(Version(metadata["version"])),
        url=url,
        filename=unquote(urlsplit(url).path.rsplit("/", 1)[-1]),
        sha256=sha256.lower() if sha256 else None,
        requested=bool(item.get("requested", False)),
    )


def pip_tail(output: str) -> str:
    lines = [
        line.rstrip()
        for line in output.splitlines()
        if line.strip() and not line.lstrip().startswith(_PROGRESS)
    ]
    return "\n".join(lines[-TAIL_LINES:])


def _failure(requirements: tuple[str, ...], what: str, tail: str) -> PackageResolutionFailed:
    named = ", ".join(requirements) or "(nothing)"
    message = f"cannot resolve {named}: {what}"
    if tail:
        message += ":\n" + "\n".join(f"  {line}" for line in tail.splitlines())
    return PackageResolutionFailed(message, requirements, tail)
