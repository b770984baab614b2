"""Secrets through real workers (root, real sandboxes): a granted function reads
its secret at /run/secrets; an ungranted one, a sibling sandbox of another
function with ``network: none`` trying every path it can think of, and the
zygote its leaf was forked from cannot; the value is in no environment, log,
record (redacted), /stats or admin answer; rotation and revocation reach new
calls; a worker dir without its key file yields nothing; and two workers
sharing one state dir and key file serve the same secrets (a set through one
reaches the other's granted leaves within ``registry.cache_s``)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import REPO
from .test_http_api import Served, serving, write_fn

pytestmark = pytest.mark.root

CACHE_S = 0.5

READER = """
import os
import stat
import sys

with open("/run/secrets/DB") as _f:  # at import time: delivered before the handler's import
    AT_IMPORT = _f.read()
print("imported with", AT_IMPORT, flush=True)


def _errno(action):
    try:
        action()
    except OSError as exc:
        return exc.errno
    return 0


def f(event):
    path = "/run/secrets/DB"
    value = open(path).read()
    if event == "print":
        print("the value is", value)
        print("stderr too:", value, file=sys.stderr)
    if event == "raise":
        raise ValueError("leaking " + value)
    st, top = os.stat(path), os.stat("/run/secrets")
    return {
        "value": value,
        "at_import": AT_IMPORT,
        "uid": st.st_uid,
        "me": os.getuid(),
        "mode": stat.S_IMODE(st.st_mode),
        "dir_mode": stat.S_IMODE(top.st_mode),
        "files": sorted(os.listdir("/run/secrets")),
        "write": _errno(lambda: open(path, "w")),
        "chmod": _errno(lambda: os.chmod(path, 0o644)),
        "create": _errno(lambda: open("/run/secrets/other", "w")),
        "in_env": any(value in v for v in os.environ.values()),
    }
"""

#: A function granted nothing, with no network, looking everywhere it can.
NOSY = """
import os
import stat
import sys

LIMIT = 65536
#: Read-only host trees (the stdlib is thousands of files): their names are
#: listed by the walk, their contents not kept.
SKIP_TOPS = ("/usr", "/proc", "/sys", os.path.realpath(sys.base_prefix))


def _grab(path, found, tried):
    tried.append(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                found[path + "/"] = " ".join(sorted(os.listdir(path)))
            return
        with open(path, "rb") as f:
            found[path] = f.read(LIMIT).decode("latin-1")
    except OSError as exc:
        found.setdefault("errors", {})[path] = exc.errno


def f(event):
    found, tried = {}, []
    for path in ("/run/secrets/DB", "/run/secrets", "/run", "/host/DB", "/tmp/DB", "/DB"):
        _grab(path, found, tried)
    for top in sorted(os.listdir("/")):
        top = "/" + top
        if top in SKIP_TOPS or os.path.islink(top):
            continue
        for dirpath, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in SKIP_TOPS]
            for name in files:
                _grab(os.path.join(dirpath, name), found, tried)
    if os.path.isdir("/proc"):
        mounts = []
        for pid in os.listdir("/proc"):
            if not (pid.isdigit() or pid in ("self", "thread-self")):
                continue
            for leaf in ("environ", "cmdline", "root/run/secrets/DB", "cwd/run/secrets/DB"):
                _grab(f"/proc/{pid}/{leaf}", found, tried)
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                fds = []
            for fd in fds:
                _grab(f"/proc/{pid}/fd/{fd}", found, tried)  # regular files only
        try:
            with open("/proc/self/mountinfo") as f:
                mounts = [line.split()[4] for line in f]
        except OSError:
            pass
        for point in mounts:  # other sandboxes' mount points, seen from here
            if "secrets" in point:
                _grab(point + "/DB", found, tried)
    for escape in ("/..", "/../..", "/proc/1/root/..", "/host/.."):
        _grab(escape + "/run/secrets/DB", found, tried)
    try:
        os.chroot("/tmp")
        found["chroot"] = "allowed"
    except OSError as exc:
        found["chroot"] = exc.errno
    found["environ"] = dict(os.environ)
    return {"tried": len(tried), "found": found}
"""


def value_token() -> str:
    return f"tok-{secrets.token_hex(16)}"


async def cli(worker_dir: Path, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """``olactors ARGS --path worker_dir`` in a subprocess (a real client)."""
    done = await trio.run_process(
        [sys.executable, "-m", "olactors.cli", *args, "--path", str(worker_dir)],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=REPO,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def call(client: httpx.AsyncClient, name: str, event: object = None) -> httpx.Response:
    with trio.fail_after(60):
        return await client.post(f"/run/{name}", json=event)


def memory_holds(pid: int, needle: bytes) -> bool:
    """Does any readable mapping of process ``pid`` contain ``needle``?"""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except (OSError, OverflowError, ValueError):
                continue
    return False


def files_holding(top: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in top.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(str(path))
    return found


async def sandboxes(admin: httpx.AsyncClient) -> list[dict]:
    return (await admin.get("/sandboxes")).json()


async def assert_nothing_leaks(served: Served, value: str, caplog) -> None:
    """The value is in no admin answer, record, sandbox log or worker log line
    (records and logs keep ``[secret DB]`` instead)."""
    async with served.admin_client() as admin:
        for path in ("/stats", "/functions", "/sandboxes", "/secrets", "/status"):
            r = await admin.get(path)
            assert value not in r.text, path
        for sb in await sandboxes(admin):
            log_text = (await admin.get(f"/sandboxes/{sb['id']}/log")).text
            assert value not in log_text
            if sb["function"] == "reader":
                assert "imported with [secret DB]" in log_text
                for pid in sb["pids"]:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        assert value.encode() not in f.read()
        await trio.sleep(0.3)  # the recorder writes in batches
        listing = (await admin.get("/debug/reader?limit=100")).json()["records"]
        assert listing and value not in json.dumps(listing)
        redacted = 0
        for record in listing:
            rid = record["request_id"]
            for part in ("", "/stdout", "/stderr", "/error"):
                text = (await admin.get(f"/debug/reader/{rid}{part}")).text
                assert value not in text, part
                redacted += "[secret DB]" in text
        assert redacted >= 3  # stdout, stderr and the exception's record at least
    assert value not in caplog.text


async def cli_refusals(worker_dir: Path) -> None:
    """Bad names and values get clear errors; a value can come from a file."""
    big = worker_dir.parent / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    code, _out, err = await cli(worker_dir, "secret", "set", "BIG", "--from-file", str(big))
    assert code == 1 and json.loads(err)["error"] == "secret_too_large"
    code, _out, err = await cli(worker_dir, "secret", "set", "../etc", stdin=b"value")
    assert code == 2 and "bad secret name" in err
    code, _out, err = await cli(worker_dir, "secret", "grant", "NOPE", "reader")
    assert code == 1 and json.loads(err)["error"] == "secret_not_found"
    code, _out, err = await cli(worker_dir, "secret", "delete", "NOPE", "--json")
    assert code == 1 and json.loads(err)["error"] == "secret_not_found"
    small = worker_dir.parent / "small"
    small.write_bytes(b"from a file")
    code, out, err = await cli(
        worker_dir, "secret", "set", "F", "--from-file", str(small), "--json"
    )
    assert code == 0 and json.loads(out)["created"] is True, err
    code, out, err = await cli(worker_dir, "secret", "delete", "F")
    assert code == 0 and "deleted secret F" in out, err


async def test_granted_leaf_reads_its_secret_and_nothing_else_can(
    worker_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    value, rotated = value_token(), value_token()
    async with serving(worker_dir, f"registry.cache_s={CACHE_S}") as served:
        write_fn(served, "reader", READER, "secrets: [DB]\n")
        write_fn(served, "nosy", NOSY, "network: none\n")
        async with served.client() as client, served.admin_client() as admin:
            r = await call(client, "reader")
            assert r.status_code == 424, r.text
            assert (r.json()["error"], r.json()["secret"]) == ("secret_not_granted", "DB")
            assert [sb for sb in await sandboxes(admin) if sb["kind"] == "leaf"] == []

            code, out, err = await cli(worker_dir, "secret", "set", "DB", stdin=value.encode())
            assert code == 0 and "version 1" in out, err
            code, out, err = await cli(worker_dir, "secret", "grant", "DB", "reader", "--json")
            assert code == 0 and json.loads(out)["grants"] == ["reader"], err
            code, out, err = await cli(worker_dir, "secret", "list", "--json")
            assert code == 0 and value not in out
            assert [(s["name"], s["version"]) for s in json.loads(out)["secrets"]] == [("DB", 1)]
            await cli_refusals(worker_dir)

            got = (await call(client, "reader")).json()
            assert got["value"] == got["at_import"] == value
            assert (got["uid"], got["mode"], got["dir_mode"]) == (got["me"], 0o400, 0o500)
            assert got["files"] == ["DB"] and not got["in_env"]
            assert got["write"] and got["chmod"] and got["create"]  # read-only, all of it
            boxes = await sandboxes(admin)
            assert [sb["children"] for sb in boxes if sb["kind"] == "zygote"] == [1]  # forked

            # A sibling sandbox of another function, forked from the same zygote
            # while the reader's leaf lives, with no network: nothing.
            r = await call(client, "nosy")
            assert r.status_code == 200, r.text[:2000]
            seen = r.json()
            assert seen["tried"] > 20 and seen["found"]["chroot"] != "allowed"
            assert value not in r.text
            assert "/run/secrets/DB" not in seen["found"]
            assert seen["found"].get("/run/secrets/") == ""

            # The zygote the reader was forked from holds nothing of it.
            boxes = await sandboxes(admin)
            reader = next(sb for sb in boxes if sb["function"] == "reader")
            reader_root = str(worker_dir.resolve() / "run" / "sandboxes" / reader["id"])
            zygotes = [sb for sb in boxes if sb["kind"] == "zygote"]
            assert zygotes and all(sb["pids"] for sb in zygotes)
            for zygote in zygotes:
                for pid in zygote["pids"]:  # the zygote and its spare
                    assert not memory_holds(pid, value.encode()), pid
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        try:
                            target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        except OSError:
                            continue
                        assert not target.startswith(reader_root), (pid, target)
                    assert os.listdir(f"/proc/{pid}/root/run/secrets") == []

            # Output and errors: redacted where the worker keeps or relays them.
            assert (await call(client, "reader", "print")).status_code == 200
            r = await call(client, "reader", "raise")
            assert r.status_code == 500 and value not in r.text
            assert "leaking [secret DB]" in r.json()["message"]
            await assert_nothing_leaks(served, value, caplog)

            # Rotation: the next call (through this worker: at once) gets the new
            # value in a new sandbox; revocation: 424 again.
            code, out, err = await cli(worker_dir, "secret", "set", "DB", stdin=rotated.encode())
            assert code == 0 and "version 2" in out, err
            got = (await call(client, "reader")).json()
            assert got["value"] == got["at_import"] == rotated
            code, _out, err = await cli(worker_dir, "secret", "revoke", "DB", "reader")
            assert code == 0, err
            r = await call(client, "reader")
            assert r.status_code == 424 and r.json()["secret"] == "DB"
            code, _out, err = await cli(worker_dir, "secret", "grant", "DB", "reader")
            assert code == 0, err
    assert "starting fresh" not in caplog.text  # every leaf was forked, secrets and all
    # Stopped: no mount is left, and no file of the worker dir holds a value in clear.
    needles = [value.encode(), rotated.encode()]
    assert files_holding(worker_dir, needles) == []
    assert value not in caplog.text and rotated not in caplog.text

    # The worker dir without its key file: the secrets cannot be read, and none
    # is made up (no new key over stored secrets).
    shutil.rmtree(worker_dir / "keys")
    async with serving(worker_dir, f"registry.cache_s={CACHE_S}") as served:
        async with served.client() as client:
            r = await call(client, "reader")
            assert r.status_code == 500 and r.json()["error"] == "secret_key_unusable", r.text
            assert rotated not in r.text
        code, _out, err = await cli(worker_dir, "secret", "set", "OTHER", stdin=b"x" * 8)
        assert code == 1 and "secret_key_unusable" in err
        code, out, _err = await cli(worker_dir, "secret", "list")
        assert code == 0 and "DB" in out  # names, versions and grants are not secret
    assert not (worker_dir / "keys").exists()
    assert files_holding(worker_dir, needles) == []


async def test_two_workers_sharing_a_state_dir_serve_the_same_secrets(tmp_path: Path) -> None:
    """Worker one forks its leaves from zygotes; worker two starts them fresh."""
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    shared = [
        f"state.dir={tmp_path / 'state'}",
        f"secrets.key_file={tmp_path / 'key' / 'secrets.key'}",
        f"registry.cache_s={CACHE_S}",
    ]
    value, rotated = value_token(), value_token()
    async with (
        serving(one_dir, *shared) as one,
        serving(two_dir, *shared, "import_cache.enabled=false") as two,
    ):
        for served in (one, two):
            write_fn(served, "reader", READER, "secrets: [DB]\n")
        async with one.client() as client_one, two.client() as client_two:
            code, _out, err = await cli(one_dir, "secret", "set", "DB", stdin=value.encode())
            assert code == 0, err
            code, _out, err = await cli(one_dir, "secret", "grant", "DB", "reader")
            assert code == 0, err
            await trio.sleep(CACHE_S + 0.2)
            got = (await call(client_two, "reader")).json()
            assert got["value"] == got["at_import"] == value  # a fresh leaf, before its import
            assert (await call(client_one, "reader")).json()["value"] == value

            code, _out, err = await cli(one_dir, "secret", "set", "DB", stdin=rotated.encode())
            assert code == 0, err
            await trio.sleep(CACHE_S + 0.2)  # within the cache window
            assert (await call(client_two, "reader")).json()["value"] == rotated

            code, _out, err = await cli(two_dir, "secret", "revoke", "DB", "reader")
            assert code == 0, err
            await trio.sleep(CACHE_S + 0.2)
            r = await call(client_one, "reader")
            assert r.status_code == 424 and r.json()["error"] == "secret_not_granted"
            # The refusal also retires the sandbox that holds the revoked value,
            # though calls keep coming (each would otherwise keep it from idling out).
            async with one.admin_client() as admin:
                for _ in range(50):
                    if not [sb for sb in await sandboxes(admin) if sb["function"] == "reader"]:
                        break
                    r = await call(client_one, "reader")
                    assert r.status_code == 424
                    await trio.sleep(0.1)
                else:
                    raise AssertionError("the revoked secret's sandbox lives on")
    key = tmp_path / "key" / "secrets.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert files_holding(tmp_path, [value.encode(), rotated.encode()]) == []
