"""The function registry on disk, and safe handling of function archives.

Plain synchronous functions (callers in trio run them with
``trio.to_thread.run_sync``). Every problem with a function's code is a
:class:`BadFunction` with status 500 (an invocation found it); upload paths
re-raise it as 400.

A local registry directory holds ``<name>/`` directories and/or
``<name>.tar.gz`` archives; when both exist the archive wins (an upload
writes the archive, then removes the directory). Dot-prefixed entries are
temporary files of this module and are never functions.

**Archive layout rule.** An archive holds the function's files at its top
level, or inside exactly one top-level directory: when the archive's top
level is a single directory (``myfn/f.py``, ``myfn/ol.yaml``...), that
directory's content is the function. A leading ``./`` is ignored.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import secrets
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ._errors import BadFunction, BadFunctionName
from ._function_config import FunctionConfig, parse_function_config
from ._names import validate_function_name
from .packages import read_function_packages

MAX_MEMBERS = 10_000
_MAX_READ = 1 << 20  # larger single reads happen only for oversized tar headers
_OVERHEAD_PER_MEMBER = 8 * 512  # header, extended header, padding: generous
_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_NOT_TAR_GZ = "not a gzip-compressed tar archive"
_ARCHIVE_SUFFIX = ".tar.gz"


# ================================================================ unpacking
@dataclass(slots=True)
class _Planned:
    member: tarfile.TarInfo
    parts: tuple[str, ...]  # path inside the function, after the layout rule
    link: tuple[str, ...] = ()  # hardlink target, same coordinates


def safe_unpack(archive: bytes | Path | BinaryIO, dest: Path, max_bytes: int) -> None:
    """Unpack the tar.gz ``archive`` (bytes, a path, or a binary file at its
    start) into the empty directory ``dest`` (created if missing), applying
    the layout rule of this module.

    Refused with :class:`BadFunction` naming the member: absolute paths,
    ``..``, links leaving the archive, device nodes, fifos, sparse files,
    duplicate paths, more than :data:`MAX_MEMBERS` members, more than
    ``max_bytes`` of file data (checked from the headers before anything is
    written, and counted again while writing), corrupt data. On any error
    ``dest`` is left empty. Files get mode 0644 (0755 if executable),
    directories 0755.
    """
    if isinstance(archive, (bytes, bytearray, memoryview)):
        _unpack_fileobj(io.BytesIO(bytes(archive)), dest, max_bytes)
    elif isinstance(archive, (str, Path)):
        try:
            f = open(archive, "rb")
        except OSError as exc:
            raise BadFunction(f"cannot read archive {archive}: {exc.strerror}") from None
        with f:
            _unpack_fileobj(f, dest, max_bytes)
    else:
        _unpack_fileobj(archive, dest, max_bytes)


def _unpack_fileobj(fileobj: BinaryIO, dest: Path, max_bytes: int) -> None:
    dest.mkdir(mode=0o755, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"safe_unpack: {dest} is not empty")
    start = fileobj.tell()
    magic = fileobj.read(2)
    fileobj.seek(start)
    if magic != _GZIP_MAGIC:
        raise BadFunction(_NOT_TAR_GZ)
    stream = _CappedStream(gzip.GzipFile(fileobj=fileobj, mode="rb"), max_bytes)
    try:
        try:
            tf = tarfile.open(fileobj=stream, mode="r:")  # type: ignore[call-overload]
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError):
            raise BadFunction(_NOT_TAR_GZ) from None
        with tf:
            try:
                plan = _plan(tf, dest, max_bytes)
                _extract(tf, plan, dest, max_bytes)
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise BadFunction(f"archive is truncated or corrupt: {exc}") from None
    except BaseException:
        _empty_dir(dest)
        raise


class _CappedStream:
    """The decompressed tar stream, refusing to go past what an acceptable
    archive can hold (``max_bytes`` of data plus header and padding blocks for
    :data:`MAX_MEMBERS` members) or to read more than :data:`_MAX_READ` at once.

    tarfile reads a member's extended (pax, GNU long name) header into memory
    before the member can be checked; the read limit bounds that memory, the
    position limit bounds the decompression work.
    """

    def __init__(self, raw: gzip.GzipFile, max_bytes: int) -> None:
        self._raw = raw
        self._cap = max_bytes + (MAX_MEMBERS + 1) * _OVERHEAD_PER_MEMBER

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_READ:
            raise BadFunction(f"archive has a header larger than {_MAX_READ} bytes")
        self._check(self._raw.tell() + size)
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._check(offset)
        elif whence == os.SEEK_CUR:
            self._check(self._raw.tell() + offset)
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def _check(self, position: int) -> None:
        if position > self._cap:
            raise BadFunction(
                f"archive unpacks to more than {self._cap} bytes including tar headers"
            )


def _plan(tf: tarfile.TarFile, dest: Path, max_bytes: int) -> list[_Planned]:
    """Pass 1: read every header, refuse anything unsafe, apply the layout rule."""
    plan: list[_Planned] = []
    kinds: dict[tuple[str, ...], str] = {}  # path -> "dir" | "file" | "link"
    total = 0
    for count, member in enumerate(tf, 1):
        if count > MAX_MEMBERS:
            raise BadFunction(f"archive has more than {MAX_MEMBERS} members")
        parts = _member_parts(member.name, member.name)
        if not parts:
            if not member.isdir():
                raise BadFunction(f"member {member.name!r} has an empty path")
            continue
        kind = _member_kind(member)
        if kind == "file":
            total += member.size
            if total > max_bytes:
                raise BadFunction(
                    f"archive unpacks to more than {max_bytes} bytes (the limit) "
                    f"at member {member.name!r} ({member.size} bytes)"
                )
        link: tuple[str, ...] = ()
        if member.islnk():
            link = _link_parts(member)
            if kinds.get(link) != "file":
                raise BadFunction(
                    f"hardlink {member.name!r} -> {member.linkname!r} does not name an "
                    "earlier regular file of the archive"
                )
        if member.issym():
            _check_symlink_target(parts, member.linkname, member.name)
        _add_path(kinds, parts, kind, member.name)
        try:
            tarfile.data_filter(member, str(dest))
        except tarfile.FilterError as exc:
            raise BadFunction(f"member {member.name!r} refused: {exc}") from None
        plan.append(_Planned(member, parts, link))
    tops = {item.parts[0] for item in plan}
    if len(tops) == 1:
        (top,) = tops
        if kinds[(top,)] == "dir":
            plan = [_strip(item, top) for item in plan if item.parts != (top,)]
    for item in plan:  # again: the layout rule removed one level
        if item.member.issym():
            _check_symlink_target(item.parts, item.member.linkname, item.member.name)
    return plan


def _member_parts(name: str, member_name: str) -> tuple[str, ...]:
    if name.startswith("/"):
        raise BadFunction(f"member {member_name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise BadFunction(f"member {member_name!r} leaves the archive ('..' in {name!r})")
    return parts


def _link_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    target = member.linkname
    parts = tuple(p for p in target.split("/") if p not in ("", "."))
    if target.startswith("/") or ".." in parts:
        raise BadFunction(
            f"hardlink {member.name!r} points outside the archive (target {target!r})"
        )
    return parts


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issparse():
        raise BadFunction(f"member {member.name!r} is a sparse file (not supported)")
    if member.isreg() or member.islnk():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        if member.linkname.startswith("/"):
            raise BadFunction(
                f"symlink {member.name!r} points outside the archive "
                f"(absolute target {member.linkname!r})"
            )
        return "link"
    if member.ischr() or member.isblk():
        raise BadFunction(f"member {member.name!r} is a device node")
    if member.isfifo():
        raise BadFunction(f"member {member.name!r} is a fifo")
    raise BadFunction(f"member {member.name!r} has an unsupported type {member.type!r}")


def _add_path(
    kinds: dict[tuple[str, ...], str], parts: tuple[str, ...], kind: str, name: str
) -> None:
    for depth in range(1, len(parts)):
        prefix = parts[:depth]
        found = kinds.setdefault(prefix, "dir")
        if found != "dir":
            raise BadFunction(
                f"member {name!r} is inside {'/'.join(prefix)!r}, which is not a directory"
            )
    existing = kinds.get(parts)
    if existing is not None and not (existing == "dir" and kind == "dir"):
        raise BadFunction(f"member {name!r} appears more than once in the archive")
    kinds[parts] = kind


def _strip(item: _Planned, top: str) -> _Planned:
    link = item.link
    if link:
        link = link[1:]  # a hardlink target is an earlier file, so under `top` too
    return _Planned(item.member, item.parts[1:], link)


def _check_symlink_target(parts: tuple[str, ...], target: str, name: str) -> None:
    resolved = list(parts[:-1])
    for piece in target.split("/"):
        if piece in ("", "."):
            continue
        if piece == "..":
            if not resolved:
                raise BadFunction(
                    f"symlink {name!r} points outside the archive (target {target!r})"
                )
            resolved.pop()
        else:
            resolved.append(piece)


def _extract(tf: tarfile.TarFile, plan: list[_Planned], dest: Path, max_bytes: int) -> None:
    """Pass 2: write dirs and files (counting bytes), then hardlinks, then symlinks."""
    written = 0
    symlinks: list[_Planned] = []
    for item in plan:
        path = dest.joinpath(*item.parts)
        member = item.member
        if member.isdir():
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(path, 0o755)
        elif member.issym():
            symlinks.append(item)
        elif member.islnk():
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.link(dest.joinpath(*item.link), path, follow_symlinks=False)
        else:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            source = tf.extractfile(member)
            if source is None:
                raise BadFunction(f"member {member.name!r} has no data")
            mode = 0o755 if member.mode & 0o111 else 0o644
            with source, _create(path, mode) as out:
                count = 0
                while chunk := source.read(_CHUNK):
                    count += len(chunk)
                    written += len(chunk)
                    if written > max_bytes:
                        raise BadFunction(
                            f"archive unpacks to more than {max_bytes} bytes (the limit) "
                            f"at member {member.name!r}"
                        )
                    out.write(chunk)
            if count != member.size:
                raise BadFunction(f"archive is truncated at member {member.name!r}")
    for item in symlinks:
        path = dest.joinpath(*item.parts)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.symlink(item.member.linkname, path)
    root = os.path.realpath(dest)
    for item in symlinks:
        if not _inside(os.path.realpath(dest.joinpath(*item.parts)), root):
            raise BadFunction(
                f"symlink {item.member.name!r} points outside the archive "
                f"(through other links: {item.member.linkname!r})"
            )


def _create(path: Path, mode: int) -> BinaryIO:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    os.fchmod(fd, mode)
    return os.fdopen(fd, "wb")


def _empty_dir(path: Path) -> None:
    """Remove everything inside ``path`` (never following symlinks); keep ``path``."""
    try:
        children = list(path.iterdir())
    except FileNotFoundError:
        return
    for child in children:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            try:
                child.unlink()
            except FileNotFoundError:
                pass


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# ============================================================ function dirs
def _raise(exc: OSError) -> None:
    if not isinstance(exc, FileNotFoundError):  # a directory removed while walking
        raise exc


def _walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """Every entry below ``root`` as (relative path, full path, lstat), sorted per
    directory, parents before children; never follows symlinks. Entries that
    vanish while walking are skipped; more than MAX_MEMBERS is refused."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            count += 1
            if count > MAX_MEMBERS:
                raise BadFunction(f"function directory has more than {MAX_MEMBERS} entries")
            yield os.path.relpath(full, root), full, st


def _inner_link(root: str, full: str, rel: str) -> str:
    """The target of the symlink ``full`` rewritten relative to its directory;
    refused if it resolves outside ``root``."""
    real = os.path.realpath(full)
    if not _inside(real, root):
        raise BadFunction(f"symlink {rel!r} points outside the function directory")
    return os.path.relpath(real, os.path.dirname(full))


def _open_regular(full: str, rel: str) -> BinaryIO | None:
    """``full`` opened for reading without following a symlink; None if it vanished."""
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadFunction(f"cannot read {rel!r}: {exc.strerror}") from None
    return os.fdopen(fd, "rb")


def snapshot_dir(src: Path, dest: Path, max_bytes: int) -> None:
    """Copy the function directory ``src`` into the empty directory ``dest``
    (created if missing).

    Copies directories, regular files (mode normalised to 0644/0755) and
    symlinks that resolve inside ``src`` (re-created relative). Refused with
    :class:`BadFunction`: symlinks resolving outside ``src``, other file
    types, more than ``max_bytes`` of file data (counted while copying), more
    than :data:`MAX_MEMBERS` entries. On any error ``dest`` is left empty.
    Files that vanish while copying are skipped.
    """
    root = os.path.realpath(src)
    dest.mkdir(mode=0o755, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"snapshot_dir: {dest} is not empty")
    if not os.path.isdir(root):
        raise BadFunction(f"{src} is not a directory")
    total = 0
    try:
        for rel, full, st in _walk(root):
            target = dest / rel
            if stat.S_ISLNK(st.st_mode):
                os.symlink(_inner_link(root, full, rel), target)
            elif stat.S_ISDIR(st.st_mode):
                target.mkdir(mode=0o755)
                os.chmod(target, 0o755)
            elif stat.S_ISREG(st.st_mode):
                source = _open_regular(full, rel)
                if source is None:
                    continue
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                with source, _create(target, mode) as out:
                    while chunk := source.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise BadFunction(
                                f"function directory holds more than {max_bytes} bytes "
                                f"(the limit) at {rel!r}"
                            )
                        out.write(chunk)
            else:
                raise BadFunction(f"{rel!r} is not a regular file, directory or symlink")
    except BaseException:
        _empty_dir(dest)
        raise


def fingerprint_dir(src: Path) -> str:
    """A 16-hex-digit digest over (relative path, size, mtime_ns, mode, link
    target) of every entry below ``src``: it changes whenever a file is
    edited, added, removed or re-linked. Never refuses anything."""
    root = os.path.realpath(src)
    os.stat(root)  # a missing directory is an error, not an empty fingerprint
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
                link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
            except FileNotFoundError:
                continue
            rel = os.path.relpath(full, root)
            line = f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\0{link}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def validate_function_dir(path: Path) -> FunctionConfig:
    """Parse ``path/ol.yaml`` (if any) and check the function has an entry:
    ``f.py``, or the module named by ol.yaml's ``entry`` (``a/b.py`` or
    ``a/b/__init__.py`` for ``a.b``); read its package declaration and lock.
    Raises :class:`BadFunction` (500)."""
    if not path.is_dir():
        raise BadFunction(f"{path} is not a directory")
    config_path = path / "ol.yaml"
    text = None
    if config_path.exists() or config_path.is_symlink():
        if not config_path.is_file():
            raise BadFunction("ol.yaml is not a regular file")
        try:
            text = config_path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise BadFunction("ol.yaml: not valid UTF-8") from None
    fc = parse_function_config(text)
    if fc.entry is not None:
        module = fc.entry.partition(":")[0]
        rel = module.replace(".", "/")
        if not (path / f"{rel}.py").is_file() and not (path / rel / "__init__.py").is_file():
            raise BadFunction(
                f"ol.yaml: entry {fc.entry!r}: module {module!r} not found "
                f"(neither {rel}.py nor {rel}/__init__.py exists)"
            )
    elif not (path / "f.py").is_file():
        raise BadFunction("no f.py and no entry in ol.yaml")
    return dataclasses.replace(fc, dependencies=read_function_packages(path))


def pack_function_dir(path: Path, max_bytes: int) -> bytes:
    """A tar.gz of the function directory ``path`` for upload: files at the top
    level, sorted, owner 0, modes 0644/0755, symlinks only if they resolve
    inside ``path``, gzip header without a timestamp. Validated first with
    :func:`validate_function_dir`; every refusal is a :class:`BadFunction` (400)."""
    try:
        validate_function_dir(path)
        root = os.path.realpath(path)
        buffer = io.BytesIO()
        total = 0
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for rel, full, st in _walk(root):
                    info = tarfile.TarInfo(rel)
                    info.mtime = int(st.st_mtime)
                    data = b""
                    if stat.S_ISLNK(st.st_mode):
                        info.type = tarfile.SYMTYPE
                        info.linkname = _inner_link(root, full, rel)
                        info.mode = 0o777
                    elif stat.S_ISDIR(st.st_mode):
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                    elif stat.S_ISREG(st.st_mode):
                        source = _open_regular(full, rel)
                        if source is None:
                            continue
                        with source:
                            data = source.read(max_bytes - total + 1)
                        total += len(data)
                        if total > max_bytes:
                            raise BadFunction(
                                f"function directory holds more than {max_bytes} bytes "
                                f"(the limit) at {rel!r}"
                            )
                        info.size = len(data)
                        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                    else:
                        raise BadFunction(f"{rel!r} is not a regular file, directory or symlink")
                    tf.addfile(info, io.BytesIO(data) if data else None)
        return buffer.getvalue()
    except BadFunction as exc:
        exc.status = 400
        raise
    except OSError as exc:
        raise BadFunction(f"cannot read {path}: {exc}", status=400) from None


# ========================================================== local registry
REMOTE_SCHEMES = ("http://", "https://")


def registry_path(location: str, worker_dir: Path) -> Path | None:
    """The local registry directory that ``registry.location`` names, or ``None``
    when it names a remote (``http(s)://``) registry.

    ``""`` is ``<worker_dir>/registry``; ``~`` is expanded; a relative path is
    relative to ``worker_dir``, never to the current directory, so admin
    uploads and the code puller always agree. Give ``worker_dir`` resolved
    (absolute): the answer is then absolute too.
    """
    if location.startswith(REMOTE_SCHEMES):
        return None
    return worker_dir / (Path(location).expanduser() if location else Path("registry"))


class LocalRegistry:
    """A registry directory of ``<name>/`` dirs and ``<name>.tar.gz`` archives.

    Reading (``find``, ``list``) never writes; the directory need not exist
    until the first ``install``. ``max_bytes`` limits a function's unpacked size.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def find(self, name: str) -> tuple[str, Path] | None:
        """``("archive", path)`` or ``("dir", path)`` for a valid ``name``, archive
        first; ``None`` if the registry has neither."""
        validate_function_name(name)
        archive = self.path / f"{name}{_ARCHIVE_SUFFIX}"
        if archive.is_file():
            return "archive", archive
        directory = self.path / name
        if directory.is_dir():
            return "dir", directory
        return None

    def list(self) -> list[dict]:
        """One dict per function, sorted by name: ``name``, ``kind`` ("dir" or
        "archive"), ``size_bytes`` (archive size, or the total of a dir's files)
        and ``modified`` (unix time of the newest entry). Dot-prefixed entries
        and names that are not valid function names are ignored."""
        found: dict[str, dict] = {}
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.name.endswith(_ARCHIVE_SUFFIX) and entry.is_file():
                name, kind = entry.name[: -len(_ARCHIVE_SUFFIX)], "archive"
            elif entry.is_dir():
                name, kind = entry.name, "dir"
            else:
                continue
            if not _valid_name(name) or found.get(name, {}).get("kind") == "archive":
                continue
            try:
                size, modified = _measure(Path(entry.path), kind)
            except OSError:
                continue
            found[name] = {"name": name, "kind": kind, "size_bytes": size, "modified": modified}
        return [found[name] for name in sorted(found)]

    def install(self, name: str, data: bytes, status_for_bad: int = 400) -> None:
        """Install the tar.gz ``data`` as function ``name``, atomically.

        The archive is unpacked into a temporary directory and validated; then
        it is written to a temporary file, fsynced and renamed onto
        ``<name>.tar.gz``, and a ``<name>/`` directory is removed. A refused
        upload raises :class:`BadFunction` with ``status_for_bad`` (or
        :class:`BadFunctionName`) and leaves the previous version untouched;
        no temporary file survives either way.
        """
        validate_function_name(name)
        self.path.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(6)
        staging = self.path / f".install-{name}-{token}"
        temp_file = self.path / f".install-{name}-{token}{_ARCHIVE_SUFFIX}"
        try:
            try:
                safe_unpack(data, staging, self.max_bytes)
                validate_function_dir(staging)
            except BadFunction as exc:
                exc.status = status_for_bad
                raise
            fd = os.open(temp_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp_file, self.path / f"{name}{_ARCHIVE_SUFFIX}")
            _fsync_dir(self.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            temp_file.unlink(missing_ok=True)
        self._remove_dir(name)

    def delete(self, name: str) -> bool:
        """Remove both forms of ``name``; False if neither existed."""
        validate_function_name(name)
        existed = False
        try:
            (self.path / f"{name}{_ARCHIVE_SUFFIX}").unlink()
            existed = True
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            pass
        return self._remove_dir(name) or existed

    def _remove_dir(self, name: str) -> bool:
        directory = self.path / name
        if directory.is_symlink():
            directory.unlink()
            return True
        if not directory.is_dir():
            return False
        doomed = self.path / f".delete-{name}-{secrets.token_hex(6)}"
        os.rename(directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return True


def _valid_name(name: str) -> bool:
    try:
        validate_function_name(name)
    except BadFunctionName:
        return False
    return True


def _measure(path: Path, kind: str) -> tuple[int, float]:
    st = path.stat()
    if kind == "archive":
        return st.st_size, st.st_mtime
    size, modified = 0, st.st_mtime
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                file_st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            modified = max(modified, file_st.st_mtime)
            if stat.S_ISREG(file_st.st_mode):
                size += file_st.st_size
    return size, modified


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
