"""The registry on disk: safe unpacking, snapshots, fingerprints, LocalRegistry."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest

from olactors._errors import BadFunction, BadFunctionName
from olactors.registry import (
    MAX_MEMBERS,
    LocalRegistry,
    fingerprint_dir,
    pack_function_dir,
    safe_unpack,
    snapshot_dir,
    validate_function_dir,
)

MB = 1 << 20
F_PY = b"def f(event):\n    return 'hi'\n"


# ------------------------------------------------------------------ helpers
def member(name: str, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def directory(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, type=tarfile.DIRTYPE, mode=0o755)


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, type=tarfile.SYMTYPE, linkname=target)


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, type=tarfile.LNKTYPE, linkname=target)


def targz(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


def tree(path: Path) -> dict[str, bytes | str]:
    """Relative path -> file bytes, "dir", or "-> target" for symlinks."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(path))
            if full.is_symlink():
                found[rel] = f"-> {os.readlink(full)}"
            elif full.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = full.read_bytes()
    return found


def refused(archive, dest: Path, max_bytes: int = MB) -> str:
    """Unpacking must fail with BadFunction and leave ``dest`` empty; returns the message."""
    with pytest.raises(BadFunction) as info:
        safe_unpack(archive, dest, max_bytes)
    assert list(dest.iterdir()) == [], "a refused archive left files behind"
    return info.value.message


class Zeros(io.RawIOBase):
    """A readable stream of ``size`` zero bytes (without holding them in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


@pytest.fixture(scope="module")
def zero_bomb() -> bytes:
    """200 MB of zeros in one member: a few hundred KB compressed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("f.py")
        info.size = 200 * MB
        tf.addfile(info, io.BufferedReader(Zeros(info.size), 1 << 20))
    data = buffer.getvalue()
    assert len(data) < 2 * MB
    return data


# ------------------------------------------------------------------ unpacking
def test_unpack_plain_archive(tmp_path):
    data = targz(
        member("f.py", F_PY),
        directory("pkg"),
        member("pkg/__init__.py", b"X = 1\n"),
        member("run.sh", b"#!/bin/sh\n", mode=0o4777),
        member("deep/er/file.txt", b"implied parents"),
        symlink("alias.py", "f.py"),
        hardlink("copy.py", "f.py"),
    )
    dest = tmp_path / "out"
    safe_unpack(data, dest, MB)
    assert tree(dest) == {
        "f.py": F_PY,
        "pkg": "dir",
        "pkg/__init__.py": b"X = 1\n",
        "run.sh": b"#!/bin/sh\n",
        "deep": "dir",
        "deep/er": "dir",
        "deep/er/file.txt": b"implied parents",
        "alias.py": "-> f.py",
        "copy.py": F_PY,
    }
    assert stat.S_IMODE(os.stat(dest / "f.py").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(dest / "run.sh").st_mode) == 0o755  # no setuid, no o+w
    assert stat.S_IMODE(os.stat(dest / "pkg").st_mode) == 0o755


def test_unpack_from_a_path(tmp_path):
    archive = tmp_path / "fn.tar.gz"
    archive.write_bytes(targz(member("f.py", F_PY)))
    safe_unpack(archive, tmp_path / "out", MB)
    assert tree(tmp_path / "out") == {"f.py": F_PY}


def test_one_top_level_dir_is_the_function(tmp_path):
    data = targz(
        directory("myfn"),
        member("myfn/f.py", F_PY),
        member("myfn/myfn/inner.txt", b"x"),
        hardlink("myfn/again.py", "myfn/f.py"),
    )
    safe_unpack(data, tmp_path / "a", MB)
    assert tree(tmp_path / "a") == {
        "f.py": F_PY,
        "myfn": "dir",
        "myfn/inner.txt": b"x",
        "again.py": F_PY,
    }
    # Without an explicit directory member, and with "./" prefixes.
    safe_unpack(targz(member("./fn/f.py", F_PY)), tmp_path / "b", MB)
    assert tree(tmp_path / "b") == {"f.py": F_PY}
    # `tar -C dir .` style: the top level is "." itself.
    safe_unpack(targz(directory("."), member("./f.py", F_PY)), tmp_path / "c", MB)
    assert tree(tmp_path / "c") == {"f.py": F_PY}


def test_top_level_with_more_than_one_entry_is_kept(tmp_path):
    data = targz(directory("pkg"), member("pkg/m.py", b""), member("f.py", F_PY))
    safe_unpack(data, tmp_path / "out", MB)
    assert set(tree(tmp_path / "out")) == {"pkg", "pkg/m.py", "f.py"}


def test_a_single_top_level_file_is_not_stripped(tmp_path):
    safe_unpack(targz(member("f.py", F_PY)), tmp_path / "out", MB)
    assert tree(tmp_path / "out") == {"f.py": F_PY}


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([member("/etc/evil", b"x")], "member '/etc/evil' has an absolute path"),
        ([member("../x", b"x")], "member '../x' leaves the archive ('..' in '../x')"),
        ([member("a/../../x", b"x")], "member 'a/../../x' leaves the archive"),
        ([member("f.py", F_PY), member("ok/../f2", b"")], "member 'ok/../f2' leaves the archive"),
        (
            [member("f.py", F_PY), symlink("passwd", "/etc/passwd")],
            "symlink 'passwd' points outside the archive (absolute target '/etc/passwd')",
        ),
        (
            [member("f.py", F_PY), symlink("sub/up", "../../etc/passwd")],
            "symlink 'sub/up' points outside the archive (target '../../etc/passwd')",
        ),
        (
            [member("f.py", F_PY), hardlink("pw", "/etc/passwd")],
            "hardlink 'pw' points outside the archive (target '/etc/passwd')",
        ),
        (
            [member("f.py", F_PY), hardlink("pw", "../../etc/passwd")],
            "hardlink 'pw' points outside the archive (target '../../etc/passwd')",
        ),
        (
            [member("f.py", F_PY), hardlink("pw", "later.py"), member("later.py", b"")],
            "hardlink 'pw' -> 'later.py' does not name an earlier regular file",
        ),
        (
            [member("f.py", F_PY), member("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
            "member 'null' is a device node",
        ),
        (
            [member("f.py", F_PY), member("sda", type=tarfile.BLKTYPE, devmajor=8)],
            "member 'sda' is a device node",
        ),
        ([member("f.py", F_PY), member("pipe", type=tarfile.FIFOTYPE)], "member 'pipe' is a fifo"),
        (
            [member("f.py", F_PY), symlink("d", "."), member("d/x.py", b"")],
            "member 'd/x.py' is inside 'd', which is not a directory",
        ),
        (
            [member("f.py", F_PY), member("f.py", b"again")],
            "member 'f.py' appears more than once in the archive",
        ),
        (
            [member("f.py", F_PY), directory("f.py")],
            "member 'f.py' appears more than once in the archive",
        ),
    ],
)
def test_unsafe_members_are_refused(tmp_path, members, message):
    assert refused(targz(*members), tmp_path / "out").startswith(message)


def test_symlink_chain_leaving_the_archive_is_refused_and_cleaned(tmp_path):
    # Each link looks inside on its own; together `a` resolves to dest/.. .
    data = targz(
        member("f.py", F_PY),
        member("big.bin", b"1" * 1000),
        symlink("s", "."),
        symlink("a", "s/.."),
    )
    message = refused(data, tmp_path / "out")
    assert message.startswith("symlink 'a' points outside the archive (through other links")


def test_links_inside_the_archive_are_allowed(tmp_path):
    data = targz(
        directory("lib"),
        member("lib/impl.py", b"X = 2\n"),
        symlink("f.py", "lib/impl.py"),
        symlink("lib/up", ".."),
        symlink("dangling", "nowhere"),
    )
    safe_unpack(data, tmp_path / "out", MB)
    assert (tmp_path / "out" / "f.py").read_bytes() == b"X = 2\n"


def test_gzip_bomb_is_refused_fast_and_writes_nothing(tmp_path, zero_bomb):
    dest = tmp_path / "out"
    start = time.monotonic()
    message = refused(zero_bomb, dest, max_bytes=MB)
    assert time.monotonic() - start < 5
    assert message.startswith(f"archive unpacks to more than {MB} bytes (the limit)")
    assert "member 'f.py'" in message


def test_oversized_extended_header_is_refused(tmp_path):
    # tarfile would read a pax header into memory whole: 3 MB here, 2 GB in an attack.
    info, data = member("f.py", F_PY)
    info.pax_headers = {"comment": "x" * (3 * MB)}
    message = refused(targz((info, data)), tmp_path / "out", max_bytes=10 * MB)
    assert message == f"archive has a header larger than {MB} bytes"


def test_many_members_over_the_size_limit_are_refused(tmp_path):
    members = [member(f"part{i}.bin", b"z" * 100_000) for i in range(20)]
    message = refused(targz(*members), tmp_path / "out", max_bytes=MB)
    assert message.startswith(f"archive unpacks to more than {MB} bytes")
    assert "part10.bin" in message


def test_too_many_members_are_refused(tmp_path):
    members = [directory("d")] + [member(f"d/{i}", b"") for i in range(MAX_MEMBERS)]
    message = refused(targz(*members), tmp_path / "out")
    assert message == f"archive has more than {MAX_MEMBERS} members"


def test_exactly_the_limits_are_accepted(tmp_path):
    data = targz(member("f.py", b"x" * 1000), member("g.py", b"y" * 24))
    safe_unpack(data, tmp_path / "out", max_bytes=1024)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"def f(e): pass\n",
        b"PK\x03\x04 a zip file",
        gzip.compress(b"plain text, not a tar file" * 40),
        gzip.compress(b""),
    ],
)
def test_not_a_tar_gz(tmp_path, data):
    assert refused(data, tmp_path / "out") == "not a gzip-compressed tar archive"


def test_truncated_archive(tmp_path):
    data = targz(member("f.py", F_PY), member("big.bin", os.urandom(200_000)))
    message = refused(data[: len(data) // 2], tmp_path / "out")
    assert message.startswith("archive is truncated or corrupt")


def test_unpack_requires_an_empty_dest(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("x")
    with pytest.raises(ValueError):
        safe_unpack(targz(member("f.py", F_PY)), tmp_path / "out", MB)
    assert (tmp_path / "out" / "old").exists()


# ------------------------------------------------------------------ function dirs
def make_function(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for rel, text in (files or {"f.py": F_PY.decode()}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def test_fingerprint_changes_on_every_edit(tmp_path):
    fn = make_function(tmp_path / "fn", {"f.py": "a = 1\n", "pkg/m.py": "b = 2\n"})
    first = fingerprint_dir(fn)
    assert len(first) == 16 and int(first, 16) >= 0
    assert fingerprint_dir(fn) == first
    seen = {first}

    def changed() -> None:
        now = fingerprint_dir(fn)
        assert now not in seen
        seen.add(now)

    (fn / "f.py").write_text("a = 22\n")  # content and size
    changed()
    st = os.stat(fn / "f.py")
    (fn / "f.py").write_text("a = 33\n")  # same size: the mtime moves
    os.utime(fn / "f.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed()
    (fn / "new.py").write_text("")
    changed()
    (fn / "pkg" / "m.py").unlink()
    changed()
    os.chmod(fn / "f.py", 0o755)
    changed()
    os.symlink("f.py", fn / "alias")
    changed()


def test_fingerprint_of_a_missing_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        fingerprint_dir(tmp_path / "missing")


def test_snapshot_dir_copies(tmp_path):
    fn = make_function(tmp_path / "fn", {"f.py": "x = 1\n", "lib/a.py": "y = 2\n"})
    os.chmod(fn / "f.py", 0o700)
    os.symlink(fn / "lib" / "a.py", fn / "abs_inside")  # absolute, but inside
    os.symlink("lib", fn / "libdir")
    dest = tmp_path / "snap"
    snapshot_dir(fn, dest, MB)
    assert tree(dest) == {
        "f.py": b"x = 1\n",
        "lib": "dir",
        "lib/a.py": b"y = 2\n",
        "abs_inside": "-> lib/a.py",
        "libdir": "-> lib",
    }
    assert stat.S_IMODE(os.stat(dest / "f.py").st_mode) == 0o755
    (fn / "f.py").write_text("changed")
    assert (dest / "f.py").read_text() == "x = 1\n"


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.txt"])
def test_snapshot_dir_refuses_links_leaving(tmp_path, target):
    (tmp_path / "outside.txt").write_text("secret")
    fn = make_function(tmp_path / "fn")
    os.symlink(target, fn / "leak")
    with pytest.raises(BadFunction, match="symlink 'leak' points outside the function directory"):
        snapshot_dir(fn, tmp_path / "snap", MB)
    assert list((tmp_path / "snap").iterdir()) == []


def test_snapshot_dir_limits(tmp_path):
    fn = make_function(tmp_path / "fn", {"f.py": "", "big.bin": "x" * 5000})
    with pytest.raises(BadFunction, match="holds more than 4096 bytes"):
        snapshot_dir(fn, tmp_path / "snap", 4096)
    assert list((tmp_path / "snap").iterdir()) == []
    os.mkfifo(fn / "pipe")
    with pytest.raises(BadFunction, match="'pipe' is not a regular file, directory or symlink"):
        snapshot_dir(fn, tmp_path / "snap2", MB)


def test_validate_function_dir(tmp_path):
    assert validate_function_dir(make_function(tmp_path / "a")).entry is None
    empty = tmp_path / "b"
    empty.mkdir()
    with pytest.raises(BadFunction, match=r"^no f.py and no entry in ol.yaml$"):
        validate_function_dir(empty)
    (empty / "ol.yaml").write_text("entry: pkg.mod:main\n")
    with pytest.raises(BadFunction) as info:
        validate_function_dir(empty)
    assert info.value.message == (
        "ol.yaml: entry 'pkg.mod:main': module 'pkg.mod' not found "
        "(neither pkg/mod.py nor pkg/mod/__init__.py exists)"
    )
    make_function(empty, {"pkg/mod.py": ""})
    assert validate_function_dir(empty).entry == "pkg.mod:main"
    pkg = make_function(tmp_path / "c", {"ol.yaml": "entry: app:run\n", "app/__init__.py": ""})
    assert validate_function_dir(pkg).entry == "app:run"
    bad = make_function(tmp_path / "d", {"f.py": "", "ol.yaml": "limits: {memory: 1}\n"})
    with pytest.raises(BadFunction, match="ol.yaml: unknown key 'limits.memory'"):
        validate_function_dir(bad)
    (bad / "ol.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(BadFunction, match="ol.yaml: not valid UTF-8"):
        validate_function_dir(bad)


def test_pack_round_trip(tmp_path):
    fn = make_function(
        tmp_path / "fn",
        {"f.py": "x = 1\n", "ol.yaml": "reuse_sandbox: false\n", "pkg/__init__.py": ""},
    )
    os.chmod(fn / "f.py", 0o750)
    os.symlink("pkg/__init__.py", fn / "alias.py")
    data = pack_function_dir(fn, MB)
    assert pack_function_dir(fn, MB) == data  # deterministic
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
        assert all(m.uid == 0 and m.gid == 0 for m in tf.getmembers())
    assert names == ["alias.py", "f.py", "ol.yaml", "pkg", "pkg/__init__.py"]
    safe_unpack(data, tmp_path / "out", MB)
    assert tree(tmp_path / "out") == tree(fn)
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "f.py").st_mode) == 0o755


def test_pack_refuses_bad_dirs(tmp_path):
    with pytest.raises(BadFunction) as info:
        pack_function_dir(make_function(tmp_path / "a", {"g.py": ""}), MB)
    assert (info.value.message, info.value.status) == ("no f.py and no entry in ol.yaml", 400)
    leaky = make_function(tmp_path / "b")
    os.symlink("/etc/passwd", leaky / "pw")
    with pytest.raises(BadFunction, match="symlink 'pw' points outside") as info:
        pack_function_dir(leaky, MB)
    assert info.value.status == 400
    big = make_function(tmp_path / "c", {"f.py": "x" * 2000})
    with pytest.raises(BadFunction, match="holds more than 1000 bytes"):
        pack_function_dir(big, 1000)


# ------------------------------------------------------------------ LocalRegistry
def good_archive(text: str = "x = 1\n") -> bytes:
    return targz(member("f.py", text.encode()))


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("."))


def test_install_list_delete(tmp_path):
    reg = LocalRegistry(tmp_path / "reg", MB)
    assert reg.list() == []
    data = good_archive()
    reg.install("hello", data)
    assert (tmp_path / "reg" / "hello.tar.gz").read_bytes() == data
    [entry] = reg.list()
    assert entry["name"] == "hello" and entry["kind"] == "archive"
    assert entry["size_bytes"] == len(data)
    assert abs(entry["modified"] - os.stat(tmp_path / "reg" / "hello.tar.gz").st_mtime) < 1e-6
    assert reg.find("hello") == ("archive", tmp_path / "reg" / "hello.tar.gz")
    assert reg.delete("hello") is True
    assert reg.delete("hello") is False
    assert reg.list() == [] and reg.find("hello") is None
    assert leftovers(tmp_path / "reg") == []


def test_install_replaces_a_directory(tmp_path):
    reg = LocalRegistry(tmp_path / "reg", MB)
    make_function(tmp_path / "reg" / "hello")
    assert reg.find("hello") == ("dir", tmp_path / "reg" / "hello")
    reg.install("hello", good_archive())
    assert not (tmp_path / "reg" / "hello").exists()
    assert [e["kind"] for e in reg.list()] == ["archive"]
    assert leftovers(tmp_path / "reg") == []


def test_list_sorting_and_ignored_entries(tmp_path):
    reg_dir = tmp_path / "reg"
    make_function(reg_dir / "zeta", {"f.py": "abc", "sub/x": "12345"})
    make_function(reg_dir / "alpha")
    (reg_dir / "both.tar.gz").write_bytes(good_archive())
    make_function(reg_dir / "both")
    make_function(reg_dir / ".install-x-123")
    (reg_dir / ".install-x-123.tar.gz").write_bytes(b"tmp")
    (reg_dir / "README.txt").write_text("not a function")
    make_function(reg_dir / "bad name")
    listing = LocalRegistry(reg_dir, MB).list()
    assert [(e["name"], e["kind"]) for e in listing] == [
        ("alpha", "dir"),
        ("both", "archive"),
        ("zeta", "dir"),
    ]
    assert listing[2]["size_bytes"] == 8
    assert isinstance(listing[2]["modified"], float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not gzip", "not a gzip-compressed tar archive"),
        (targz(member("g.py", b"")), "no f.py and no entry in ol.yaml"),
        (targz(member("f.py", b""), member("ol.yaml", b"x: 1")), "ol.yaml: unknown key 'x'"),
        (targz(member("../evil", b"")), "member '../evil' leaves the archive"),
        (targz(member("f.py", b"x" * (MB + 1))), "archive unpacks to more than"),
    ],
)
def test_bad_upload_leaves_the_old_version(tmp_path, data, message):
    reg = LocalRegistry(tmp_path / "reg", MB)
    old = good_archive("old = True\n")
    reg.install("hello", old)
    before = os.stat(tmp_path / "reg" / "hello.tar.gz")
    with pytest.raises(BadFunction) as info:
        reg.install("hello", data)
    assert info.value.message.startswith(message)
    assert info.value.status == 400
    assert (tmp_path / "reg" / "hello.tar.gz").read_bytes() == old
    assert os.stat(tmp_path / "reg" / "hello.tar.gz").st_ino == before.st_ino
    assert leftovers(tmp_path / "reg") == []
    assert not (tmp_path / "evil").exists()


def test_bad_upload_status_can_be_500(tmp_path):
    reg = LocalRegistry(tmp_path / "reg", MB)
    with pytest.raises(BadFunction) as info:
        reg.install("hello", b"junk", status_for_bad=500)
    assert info.value.status == 500


def test_failed_write_leaves_the_old_version(tmp_path, monkeypatch):
    reg = LocalRegistry(tmp_path / "reg", MB)
    old = good_archive("old = True\n")
    reg.install("hello", old)
    make_function(tmp_path / "reg" / "other")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        reg.install("hello", good_archive("new = True\n"))
    with pytest.raises(OSError):
        reg.install("other", good_archive("new = True\n"))
    assert (tmp_path / "reg" / "hello.tar.gz").read_bytes() == old
    assert (tmp_path / "reg" / "other" / "f.py").exists()
    assert leftovers(tmp_path / "reg") == []


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b", "x" * 200])
def test_bad_names_are_refused(tmp_path, name):
    reg = LocalRegistry(tmp_path / "reg", MB)
    with pytest.raises(BadFunctionName):
        reg.install(name, good_archive())
    with pytest.raises(BadFunctionName):
        reg.delete(name)
    with pytest.raises(BadFunctionName):
        reg.find(name)
