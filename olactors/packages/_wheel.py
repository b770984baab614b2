"""Writing a pure-Python wheel with :mod:`zipfile` (for tests and ``olactors bench imports``).

Complete enough for pip: the files, and a ``<dist>-<version>.dist-info`` with
``METADATA`` (name, version, ``Requires-Dist``, ``Provides-Extra``), ``WHEEL``,
``top_level.txt`` and a ``RECORD`` holding each file's sha256.  Archives are
byte-for-byte reproducible (fixed timestamps and modes, sorted members).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path

_DATE = (1980, 1, 1, 0, 0, 0)


def write_wheel(
    dest: Path,
    name: str,
    version: str,
    files: Mapping[str, bytes],
    *,
    requires: tuple[str, ...] = (),
    extras: Mapping[str, tuple[str, ...]] | None = None,
    top_level: tuple[str, ...] = (),
) -> Path:
    """Write the wheel of ``name`` ``version`` holding ``files`` (archive path
    -> content) into ``dest`` (created if missing); returns its path."""
    dest.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    members = dict(files)
    members[f"{info}/METADATA"] = _metadata(name, version, requires, extras or {}).encode()
    members[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: olactors\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    members[f"{info}/top_level.txt"] = "".join(f"{t}\n" for t in top_level or (module,)).encode()
    record = f"{info}/RECORD"
    members[record] = _record(members, record).encode()
    path = dest / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in sorted(members):
            entry = zipfile.ZipInfo(member, date_time=_DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, members[member])
    return path


def _metadata(
    name: str, version: str, requires: tuple[str, ...], extras: Mapping[str, tuple[str, ...]]
) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines.append(f"Summary: generated package {name}")
    lines += [f"Requires-Dist: {req}" for req in requires]
    for extra, reqs in extras.items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [_with_extra(req, extra) for req in reqs]
    return "\n".join(lines) + "\n"


def _with_extra(requirement: str, extra: str) -> str:
    base, sep, marker = requirement.partition(";")
    condition = f'extra == "{extra}"'
    if sep:
        condition = f"({marker.strip()}) and {condition}"
    return f"Requires-Dist: {base.strip()}; {condition}"


def _record(files: Mapping[str, bytes], record: str) -> str:
    rows = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in sorted(files.items())]
    return "\n".join([*rows, f"{record},,"]) + "\n"


def _digest(data: bytes) -> str:
    raw = hashlib.sha256(data).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
