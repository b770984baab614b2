"""What a leaf can see of the host: files, processes, hostname, network,
packages, environment, and other leaves.

One handler gathers every fact and returns it as JSON; each test runs it in
a fresh leaf and in a leaf forked from a zygote (the two set up the root,
namespaces and environment by different code paths).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys

import pytest

from olactors._causes import released
from olactors.sock import Invocation, SandboxMeta, SandboxState
from olactors.sock._blocked import SANDBOX_LIBRARY
from olactors.sock._sock import BASE_ENV

from .conftest import write_function

pytestmark = pytest.mark.root

KINDS = ["fresh", "forked"]
SECRET_VAR = "OLACTORS_TEST_WORKER_SECRET"
SECRET_VALUE = "worker-only-f00d"
PREFIX = os.path.realpath(sys.base_prefix)
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
HOST_SITE_PACKAGES = os.path.join(PREFIX, "lib", PY, "site-packages")

FACTS_HANDLER = r'''
import json
import os
import socket
import sys


def probe(fn):
    """{"ok": True, "value": ...} or {"ok": False, "type": ..., "errno": ...}."""
    try:
        return {"ok": True, "value": fn()}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "type": type(exc).__name__, "errno": getattr(exc, "errno", None)}


def read(path):
    with open(path, "rb") as f:
        return f.read().decode("latin-1")


def create(path):
    with open(path, "w") as f:
        f.write("x")
    return "created"


def readonly(path):
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def connect(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        return "connected"
    finally:
        s.close()


def f(event):
    token = event["token"]
    for d in ("/tmp", "/host"):
        create(f"{d}/mark-{token}")
    facts = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": [os.getuid(), os.geteuid()],
        "gid": [os.getgid(), os.getegid()],
        "hostname": socket.gethostname(),
        "shadow": probe(lambda: read("/etc/shadow")),
        "listings": {d: probe(lambda d=d: sorted(os.listdir(d))) for d in event["list"]},
        "handler_write": probe(lambda: create("/handler/intruder.txt")),
        "usr_write": probe(lambda: create("/usr/intruder.txt")),
        "readonly": {
            d: probe(lambda d=d: readonly(d)) for d in ("/", "/usr", "/handler", "/host", "/tmp")
        },
        "kill_host_pid": probe(lambda: os.kill(event["host_pid"], 0)),
        "proc1_environ": probe(lambda: read("/proc/1/environ")),
        "connect": probe(lambda: connect(event["port"])),
        "import_trio": probe(lambda: __import__("trio").__name__),
        "sys_path": sys.path,
        "site_packages": probe(lambda: sorted(os.listdir(event["site_dir"]))),
        "env": dict(os.environ),
        "tmp": sorted(os.listdir("/tmp")),
        "host": sorted(os.listdir("/host")),
    }
    return facts
'''


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def listener():
    """A TCP socket listening on 127.0.0.1 in the test's (host) network namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def accepted(sock: socket.socket) -> int:
    """How many connections are waiting in ``sock``'s backlog (accepts and closes them)."""
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.fixture
def worker_secret(monkeypatch):
    """A variable in the worker's environment that no sandbox may inherit."""
    monkeypatch.setenv(SECRET_VAR, SECRET_VALUE)


async def make_leaf(pool, kind: str, code, meta: SandboxMeta, scratch=None):
    """A leaf running ``code``: spawned fresh, or forked from a new zygote."""
    parent = None
    if kind == "forked":
        parent = await pool.create(None, False, None, None, SandboxMeta(network=meta.network))
    return await pool.create(parent, True, str(code), scratch, meta)


def event_for(port: int, token: str) -> dict:
    listed = ["/root", "/etc"]
    if not PREFIX.startswith("/usr/"):
        # Every ancestor of the bind-mounted Python prefix (e.g. /root/.pyenv).
        parts = PREFIX.strip("/").split("/")
        listed += ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]
    return {
        "token": token,
        "host_pid": os.getpid(),
        "port": port,
        "site_dir": HOST_SITE_PACKAGES,
        "list": sorted(set(listed)),
    }


async def gather(sb, port: int, token: str) -> dict:
    result = await sb.invoke(Invocation(body=json.dumps(event_for(port, token)).encode()))
    assert result.status == 200, result.body
    return json.loads(result.body)


def failed(fact: dict, *errnos: int) -> bool:
    return not fact["ok"] and (not errnos or fact["errno"] in errnos)


# ---------------------------------------------------------------------- tests
async def test_leaf_sees_nothing_of_the_host(pool, tmp_path, kind, listener, worker_secret):
    code = write_function(tmp_path, "facts", FACTS_HANDLER)
    os.chmod(code, 0o777)  # only the read-only mount may stop writes to /handler
    meta = SandboxMeta(network="none", env={"GREETING": "hi"})
    sb = await make_leaf(pool, kind, code, meta)
    facts = await gather(sb, listener.getsockname()[1], "a")

    # Identity and processes: PID 1 of its own namespace, unprivileged.
    assert facts["pid"] == 1
    assert facts["ppid"] == 0
    assert facts["uid"] == [65534, 65534]
    assert facts["gid"] == [65534, 65534]
    assert facts["kill_host_pid"]["type"] == "ProcessLookupError", facts["kill_host_pid"]
    environ = facts["proc1_environ"]
    assert not environ["ok"] or SECRET_VALUE not in environ["value"], environ
    assert facts["hostname"] != socket.gethostname()

    # Files: no host secrets, no host home, read-only system and code.
    assert failed(facts["shadow"], errno.ENOENT, errno.EACCES), facts["shadow"]
    assert os.path.exists("/etc/shadow")  # ... although the host has one
    listings = facts["listings"]
    assert set(listings["/etc"]["value"]) <= {
        "passwd", "group", "hosts", "hostname", "nsswitch.conf",
        "ld.so.cache", "resolv.conf", "localtime", "mime.types",
    }, listings["/etc"]  # fmt: skip
    for directory, seen in listings.items():
        if directory == "/etc":
            continue
        assert seen["ok"], (directory, seen)
        # Only the path component leading to the Python prefix may exist.
        on_the_way = None
        if PREFIX.startswith(directory + "/"):
            on_the_way = PREFIX[len(directory) + 1 :].split("/")[0]
        assert set(seen["value"]) <= {on_the_way}, (directory, seen)
        host_entries = set(os.listdir(directory)) - {on_the_way}
        assert not host_entries & set(seen["value"])
    host_root = set(os.listdir("/root"))
    assert host_root - set(listings["/root"]["value"]), "precondition: host /root has other entries"

    assert failed(facts["handler_write"], errno.EROFS), facts["handler_write"]
    assert not (code / "intruder.txt").exists()
    assert failed(facts["usr_write"], errno.EROFS, errno.EACCES), facts["usr_write"]
    assert not os.path.exists("/usr/intruder.txt")
    readonly = {d: r["value"] for d, r in facts["readonly"].items()}
    assert readonly == {"/": True, "/usr": True, "/handler": True, "/host": False, "/tmp": False}

    # Network "none": the test's listening socket is unreachable.
    assert failed(facts["connect"]), facts["connect"]
    assert facts["connect"]["errno"] in (
        errno.ENETUNREACH, errno.ECONNREFUSED, errno.EHOSTUNREACH,
    ), facts["connect"]  # fmt: skip
    assert accepted(listener) == 0

    # Packages: the host's site-packages are invisible.
    assert os.listdir(HOST_SITE_PACKAGES), "precondition: host site-packages is not empty"
    assert facts["import_trio"]["type"] == "ModuleNotFoundError", facts["import_trio"]
    assert not [p for p in facts["sys_path"] if "site-packages" in p], facts["sys_path"]
    site = facts["site_packages"]
    assert (site["ok"] and site["value"] == []) or failed(site, errno.ENOENT), site

    # Environment: only the base variables plus the sandbox's own.
    env = facts["env"]
    assert env["GREETING"] == "hi"
    assert SECRET_VAR not in env
    assert SECRET_VALUE not in json.dumps(env)
    assert set(env) <= set(BASE_ENV) | {"GREETING", "LC_CTYPE", "LD_PRELOAD"}, sorted(env)
    assert env["LD_PRELOAD"] == SANDBOX_LIBRARY  # the SIGSYS handler (blocked syscalls)
    assert env["PATH"] == BASE_ENV["PATH"]

    assert sb.state is SandboxState.RUNNING
    await sb.destroy(released("test done"))


@pytest.mark.parametrize("network", ["none", "egress"])
async def test_network_modes(pool, tmp_path, kind, listener, network):
    """No mode reaches the host's loopback: 127.0.0.1 is the sandbox's own."""
    code = write_function(tmp_path, "facts", FACTS_HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta(network=network))
    facts = await gather(sb, listener.getsockname()[1], "n")
    assert failed(facts["connect"]), facts["connect"]
    assert facts["connect"]["errno"] in (
        errno.ENETUNREACH, errno.ECONNREFUSED, errno.EHOSTUNREACH,
    ), facts["connect"]  # fmt: skip
    assert accepted(listener) == 0
    await sb.destroy(released("test done"))


async def test_leaves_do_not_share_tmp_or_scratch(pool, tmp_path, kind, listener):
    code = write_function(tmp_path, "facts", FACTS_HANDLER)
    port = listener.getsockname()[1]
    scratch_a, scratch_b = tmp_path / "scratch-a", tmp_path / "scratch-b"
    scratch_a.mkdir()
    scratch_b.mkdir()
    parent = None
    if kind == "forked":  # both from the same zygote: the closest relatives there are
        parent = await pool.create(None, False, None, None, SandboxMeta())
    a = await pool.create(parent, True, str(code), str(scratch_a), SandboxMeta())
    b = await pool.create(parent, True, str(code), str(scratch_b), SandboxMeta())

    facts_a = await gather(a, port, "a")
    facts_b = await gather(b, port, "b")
    again_a = await gather(a, port, "a2")

    assert facts_a["tmp"] == ["mark-a"]
    assert facts_b["tmp"] == ["mark-b"]
    assert again_a["tmp"] == ["mark-a", "mark-a2"]
    assert "mark-a" in facts_a["host"] and "mark-b" not in facts_a["host"]
    assert "mark-b" in facts_b["host"] and "mark-a" not in facts_b["host"]
    assert "mark-b" not in again_a["host"]
    assert facts_a["hostname"] != facts_b["hostname"]

    # /host is the scratch dir given at creation, seen by the worker too.
    assert (scratch_a / "mark-a").read_text() == "x"
    assert (scratch_b / "mark-b").read_text() == "x"
    assert not (scratch_a / "mark-b").exists()
    assert not (scratch_b / "mark-a").exists()
    await a.destroy(released("test done"))
    await b.destroy(released("test done"))


DEV_PROBE = """
import errno, os
def f(event):
    out = {}
    with open("/dev/null", "w") as f:
        out["null_written"] = f.write("x")
    with open("/dev/urandom", "rb") as f:
        out["random_len"] = len(f.read(16))
    for name, action in [("create", lambda: open("/dev/planted", "w")),
                         ("unlink", lambda: os.unlink("/dev/null"))]:
        try:
            action()
            out[name] = "ok"
        except OSError as exc:
            out[name] = errno.errorcode[exc.errno]
    return out
"""


async def test_dev_nodes_usable_and_dev_read_only(pool, tmp_path, kind):
    code = write_function(tmp_path, "dev", DEV_PROBE)
    sb = await make_leaf(pool, kind, code, SandboxMeta())
    result = await sb.invoke(Invocation(body=b"null"))
    assert result.status == 200, result.body
    facts = json.loads(result.body)
    assert facts["null_written"] == 1 and facts["random_len"] == 16
    assert facts["create"] in ("EROFS", "EACCES") and facts["unlink"] in ("EROFS", "EACCES")
    await sb.destroy(released("done"))
