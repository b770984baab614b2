"""Ordinary Python works in a leaf: process pools, subprocesses, threads,
sqlite in /tmp, /proc/self/*; /proc is the sandbox's own and masked like
Docker's; /tmp, /dev/shm and the scratch dir are one private writable space,
bounded in bytes and in files, whose exhaustion is the function's ENOSPC.

Every test runs in a fresh leaf and in a leaf forked from a zygote (the two
get their /proc by different code paths: the spawned process mounts its own,
the worker mounts a forked one's); /proc is also checked in a leaf forked
from a child zygote and through the helper used on kernels whose procfs has
no ``pidns`` option.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys

import pytest

from olactors._causes import released
from olactors.sock import Invocation, SandboxLimits, SandboxMeta, SandboxState
from olactors.sock._procfs import MASKED_PATHS, READONLY_PATHS

from .conftest import write_function

pytestmark = pytest.mark.root

KINDS = ["fresh", "forked"]
PREFIX = os.path.realpath(sys.base_prefix)

HANDLER = r'''
import concurrent.futures
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading


def square(x):
    return x * x


def probe(fn):
    try:
        return {"ok": True, "value": fn()}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "type": type(exc).__name__, "errno": getattr(exc, "errno", None)}


def read(path):
    with open(path, "rb") as f:
        return f.read().decode("latin-1")


def pool():
    with multiprocessing.Pool(2) as p:
        return p.map(square, range(6))


def executor():
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as ex:
        return list(ex.map(square, range(4)))


def threads():
    out = []
    lock = threading.Lock()

    def work(i):
        with lock:
            out.append(i * 10)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sorted(out)


def sqlite():
    db = sqlite3.connect("/tmp/test.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    db.commit()
    total = db.execute("SELECT sum(x) FROM t").fetchone()[0]
    db.close()
    return total


def proc_pids():
    child = subprocess.Popen(["sleep", "30"])
    try:
        return {"listed": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                "child": child.pid, "me": os.getpid()}
    finally:
        child.kill()
        child.wait()


def flags(path):
    f = os.statvfs(path).f_flag
    return {"ro": bool(f & os.ST_RDONLY), "nosuid": bool(f & os.ST_NOSUID),
            "noexec": bool(f & os.ST_NOEXEC)}


def fill_bytes(path):
    """Write 1 MiB chunks until an error; (bytes written, errno)."""
    written, err = 0, None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while written < (256 << 20):
            try:
                written += os.write(fd, b"x" * (1 << 20))
            except OSError as exc:
                err = exc.errno
                break
    finally:
        os.close(fd)
    return {"written": written, "errno": err}


def fill_inodes(directory):
    """Create empty files until an error; (files made, errno)."""
    made, err = 0, None
    while made < 100000:
        try:
            os.close(os.open(f"{directory}/f{made}", os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            err = exc.errno
            break
        made += 1
    return {"made": made, "errno": err}


def clean(directory):
    for name in os.listdir(directory):
        if name.startswith("f") or name == "big":
            os.unlink(f"{directory}/{name}")
    return True


def f(event):
    do = event["do"]
    if do == "python":
        return {
            "pool": probe(pool),
            "executor": probe(executor),
            "subprocess": probe(lambda: subprocess.run(
                [sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True,
                check=True).stdout.strip()),
            "shell": probe(lambda: subprocess.run(
                ["sh", "-c", "echo $((2 + 3))"], capture_output=True, text=True,
                check=True).stdout.strip()),
            "threads": probe(threads),
            "sqlite": probe(sqlite),
            "spawn_pool": probe(lambda: multiprocessing.get_context("spawn").Pool(1).map(
                square, [3])),
        }
    if do == "proc":
        return {
            "status": probe(lambda: read("/proc/self/status")),
            "cmdline": probe(lambda: read("/proc/self/cmdline")),
            "stat": probe(lambda: read("/proc/self/stat")),
            "maps": probe(lambda: len(read("/proc/self/maps")) > 0),
            "limits": probe(lambda: "Max open files" in read("/proc/self/limits")),
            "mountinfo": probe(lambda: read("/proc/self/mountinfo")),
            "fds": probe(lambda: sorted(os.listdir("/proc/self/fd"))),
            "exe": probe(lambda: os.readlink("/proc/self/exe")),
            "meminfo": probe(lambda: "MemTotal" in read("/proc/meminfo")),
            "cpuinfo": probe(lambda: len(read("/proc/cpuinfo")) > 0),
            "cpu_count": os.cpu_count(),
            "pids": probe(proc_pids),
            "flags": flags("/proc"),
            "masked": {name: probe(lambda name=name: sorted(os.listdir(f"/proc/{name}"))
                                   if os.path.isdir(f"/proc/{name}")
                                   else read(f"/proc/{name}"))
                       for name in event["masked"]},
            "readonly": {name: probe(lambda name=name: flags(f"/proc/{name}")["ro"])
                         for name in event["readonly"]},
            "write_sys": probe(lambda: open("/proc/sys/kernel/hostname", "w").write("x")),
        }
    if do == "shm":
        with open("/dev/shm/mark", "w") as fh:
            fh.write(event["token"])
        return {"listing": sorted(os.listdir("/dev/shm")), "flags": flags("/dev/shm"),
                "mode": oct(os.stat("/dev/shm").st_mode & 0o7777)}
    if do == "fill_bytes":
        return fill_bytes(event["path"])
    if do == "fill_inodes":
        return fill_inodes(event["dir"])
    if do == "clean":
        return clean(event["dir"])
    if do == "ping":
        return "pong"
    raise ValueError(do)
'''


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


async def make_leaf(pool, kind: str, code, meta: SandboxMeta, scratch=None):
    """A leaf running ``code``: spawned fresh, or forked from a new zygote."""
    parent = None
    if kind == "forked":
        parent = await pool.create(None, False, None, None, SandboxMeta(network=meta.network))
    return await pool.create(parent, True, str(code), scratch, meta)


async def call(sb, event) -> object:
    result = await sb.invoke(Invocation(body=json.dumps(event).encode()))
    assert result.status == 200, result.body
    return json.loads(result.body)


def host_proc_entries(names: tuple[str, ...]) -> list[str]:
    """The entries this kernel's procfs has (a fresh procfs has the same)."""
    return [name for name in names if os.path.lexists(f"/proc/{name}")]


# ------------------------------------------------------------ ordinary Python
async def test_ordinary_python_works(pool, tmp_path, kind):
    code = write_function(tmp_path, "py", HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta())
    out = await call(sb, {"do": "python"})
    assert out["pool"] == {"ok": True, "value": [0, 1, 4, 9, 16, 25]}, out["pool"]
    assert out["executor"] == {"ok": True, "value": [0, 1, 4, 9]}, out["executor"]
    assert out["subprocess"] == {"ok": True, "value": "42"}, out["subprocess"]
    assert out["shell"] == {"ok": True, "value": "5"}, out["shell"]
    assert out["threads"] == {"ok": True, "value": [0, 10, 20, 30, 40, 50, 60, 70]}
    assert out["sqlite"] == {"ok": True, "value": 4950}, out["sqlite"]
    assert out["spawn_pool"] == {"ok": True, "value": [9]}, out["spawn_pool"]
    # ... and again in the same sandbox: nothing was left broken.
    assert (await call(sb, {"do": "python"}))["pool"]["ok"]
    await sb.destroy(released("test done"))


# ---------------------------------------------------------------------- /proc
def check_proc(out: dict, masked: list[str], readonly: list[str]) -> None:
    status = out["status"]
    assert status["ok"], status
    assert "\nPid:\t1\n" in status["value"], status["value"]
    assert "Uid:\t65534\t65534\t65534\t65534" in status["value"]
    assert out["cmdline"]["ok"] and "/runtime/server.py" in out["cmdline"]["value"]
    assert out["stat"]["ok"] and out["stat"]["value"].startswith("1 (")
    for key in ("maps", "limits", "meminfo", "cpuinfo"):
        assert out[key] == {"ok": True, "value": True}, (key, out[key])
    assert out["fds"]["ok"] and {"0", "1", "2"} <= set(out["fds"]["value"])
    assert out["exe"]["ok"] and "python" in out["exe"]["value"], out["exe"]
    assert isinstance(out["cpu_count"], int) and out["cpu_count"] >= 1
    # Its own mounts only: those outside its root (other sandboxes') are not shown.
    points = [line.split()[4] for line in out["mountinfo"]["value"].splitlines()]
    assert points.count("/") == 1 and points.count("/proc") == 1, points
    assert points.count("/tmp") == 1 and points.count("/dev/shm") == 1, points
    # No set-uid file works anywhere, and device nodes only in the read-only /dev.
    # (Docker's masks bind /dev/null itself over a path, as Docker does.)
    for line in out["mountinfo"]["value"].splitlines():
        source, point, options = line.split()[3], line.split()[4], line.split()[5].split(",")
        if source == "/null":
            continue
        assert "nosuid" in options, line
        assert "nodev" in options or point == "/dev", line
    assert all(
        p == "/"
        or p.startswith(
            ("/usr", "/dev", "/proc", "/tmp", "/host", "/handler", "/runtime", "/packages", PREFIX)
        )
        for p in points
    ), points
    # Only its own processes: itself (1) and the child it started.
    pids = out["pids"]["value"]
    assert pids["me"] == 1
    assert pids["listed"] == sorted([1, pids["child"]]), pids
    assert out["flags"] == {"ro": False, "nosuid": True, "noexec": True}, out["flags"]
    # Docker's masks: masked paths read empty, read-only ones are read-only.
    for name in masked:
        seen = out["masked"][name]
        assert seen["ok"] and seen["value"] in ([], ""), (name, seen)
    for name in readonly:
        assert out["readonly"][name] == {"ok": True, "value": True}, (name, out["readonly"])
    assert not out["write_sys"]["ok"]
    assert out["write_sys"]["errno"] in (errno.EROFS, errno.EACCES), out["write_sys"]


async def proc_facts(sb) -> tuple[dict, list[str], list[str]]:
    masked = host_proc_entries(MASKED_PATHS)
    readonly = host_proc_entries(READONLY_PATHS)
    assert "sys" in readonly and masked, "precondition: the kernel has /proc/sys and masks"
    out = await call(sb, {"do": "proc", "masked": masked, "readonly": readonly})
    return out, masked, readonly


async def test_proc_is_its_own_and_masked(pool, tmp_path, kind):
    code = write_function(tmp_path, "proc", HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta())
    check_proc(*await proc_facts(sb))
    # Two leaves (of one zygote, when forked) each see only their own.
    other = await make_leaf(pool, kind, code, SandboxMeta())
    check_proc(*await proc_facts(other))
    await other.destroy(released("test done"))
    await sb.destroy(released("test done"))


async def test_proc_of_a_leaf_forked_from_a_child_zygote(pool, tmp_path):
    code = write_function(tmp_path, "proc", HANDLER)
    root = await pool.create(None, False, None, None, SandboxMeta())
    child = await pool.create(root, False, None, None, SandboxMeta())
    sb = await pool.create(child, True, str(code), None, SandboxMeta())
    check_proc(*await proc_facts(sb))
    # Each zygote has the /proc of its own namespace, whose PID 1 is itself.
    for zygote in (root, child):
        proc = zygote.raw.root.path / "proc"
        assert os.path.ismount(proc)
        own_ns = os.readlink(f"/proc/{zygote.raw.pid}/ns/pid")
        assert os.readlink(proc / "1" / "ns" / "pid") == own_ns
    await sb.destroy(released("test done"))
    await child.destroy(released("test done"))
    await root.destroy(released("test done"))


async def test_proc_through_the_helper_of_older_kernels(pool, tmp_path):
    """Kernels whose procfs lacks the ``pidns`` option: the worker creates
    the fs_context from a helper process in the leaf's namespace."""
    pool.procs.via_helper = True
    code = write_function(tmp_path, "proc", HANDLER)
    sb = await make_leaf(pool, "forked", code, SandboxMeta())
    check_proc(*await proc_facts(sb))
    await sb.destroy(released("test done"))


# --------------------------------------------------------- the writable space
async def test_dev_shm_is_private(pool, tmp_path, kind):
    code = write_function(tmp_path, "shm", HANDLER)
    a = await make_leaf(pool, kind, code, SandboxMeta())
    b = await make_leaf(pool, kind, code, SandboxMeta())
    out_a = await call(a, {"do": "shm", "token": "a"})
    out_b = await call(b, {"do": "shm", "token": "b"})
    assert out_a["listing"] == ["mark"] and out_b["listing"] == ["mark"]
    assert out_a["mode"] == "0o1777"
    assert out_a["flags"]["ro"] is False and out_a["flags"]["nosuid"] is True
    # Each wrote its own: the worker sees both in the sandboxes' writable spaces.
    assert (a.raw.root.writable / "shm" / "mark").read_text() == "a"
    assert (b.raw.root.writable / "shm" / "mark").read_text() == "b"
    await a.destroy(released("test done"))
    await b.destroy(released("test done"))


@pytest.mark.parametrize("where", ["/dev/shm/big", "/tmp/big", "/host/big"])
async def test_writable_space_is_bounded_in_bytes(pool, tmp_path, kind, where):
    """/tmp, /dev/shm and /host share one budget of ``tmp_mb``."""
    code = write_function(tmp_path, "bytes", HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta(limits=SandboxLimits(tmp_mb=4)))
    out = await call(sb, {"do": "fill_bytes", "path": where})
    assert out["errno"] == errno.ENOSPC, out
    assert (3 << 20) <= out["written"] <= (4 << 20), out
    # The budget is shared: with it full, the other places are full too.
    for other in {"/dev/shm/big", "/tmp/big", "/host/big"} - {where}:
        more = await call(sb, {"do": "fill_bytes", "path": other})
        assert more["errno"] == errno.ENOSPC and more["written"] < (1 << 20), (other, more)
    # The function got ENOSPC; its sandbox and the worker go on.
    assert await call(sb, {"do": "clean", "dir": os.path.dirname(where)}) is True
    assert await call(sb, {"do": "ping"}) == "pong"
    assert sb.state is SandboxState.RUNNING
    fresh = await make_leaf(pool, kind, code, SandboxMeta())
    assert await call(fresh, {"do": "ping"}) == "pong"
    await fresh.destroy(released("test done"))
    await sb.destroy(released("test done"))


@pytest.mark.parametrize("where", ["/tmp", "/dev/shm", "/host"])
async def test_writable_space_is_bounded_in_files(pool, tmp_path, kind, where):
    code = write_function(tmp_path, "inodes", HANDLER)
    meta = SandboxMeta(limits=SandboxLimits(tmp_inodes=200))
    sb = await make_leaf(pool, kind, code, meta)
    out = await call(sb, {"do": "fill_inodes", "dir": where})
    assert out["errno"] == errno.ENOSPC, out
    # Exactly what was configured: the writable space's own directories and
    # the runtime's files have a reserve of their own, and no more.
    assert out["made"] == 200, out
    others = {"/tmp", "/dev/shm", "/host"} - {where}
    for other in others:
        more = await call(sb, {"do": "fill_inodes", "dir": other})
        assert more == {"made": 0, "errno": errno.ENOSPC}, (other, more)
    assert await call(sb, {"do": "clean", "dir": where}) is True
    assert await call(sb, {"do": "ping"}) == "pong"
    assert sb.state is SandboxState.RUNNING
    fresh = await make_leaf(pool, kind, code, SandboxMeta())
    assert await call(fresh, {"do": "ping"}) == "pong"
    await fresh.destroy(released("test done"))
    await sb.destroy(released("test done"))


async def test_writable_space_leaves_with_the_sandbox(pool, tmp_path, kind):
    code = write_function(tmp_path, "gone", HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta())
    await call(sb, {"do": "shm", "token": "x"})
    writable = sb.raw.root.writable
    assert os.path.ismount(writable)
    await sb.destroy(released("test done"))
    assert not os.path.exists(writable)
    with open("/proc/self/mountinfo") as f:
        assert str(writable) not in f.read()


# ------------------------------------------------------------ through a worker
async def test_a_worker_serves_on_after_its_functions_fill_their_space(worker_dir):
    """``sandbox.tmp_mb`` and ``sandbox.tmp_inodes`` from the worker's config
    bound a function's writable space; a function that fills it gets ENOSPC
    in its own answer and the worker serves it and others on."""
    from .test_http_api import serving, write_fn

    overrides = ("sandbox.cgroup_pool_size=4", "sandbox.tmp_mb=4", "sandbox.tmp_inodes=100")
    async with serving(worker_dir, *overrides) as served:
        write_fn(served, "filler", HANDLER)
        write_fn(served, "echo", "def f(event):\n    return event\n")
        async with served.client() as client:
            for event in (
                {"do": "fill_bytes", "path": "/dev/shm/big"},
                {"do": "clean", "dir": "/dev/shm"},
                {"do": "fill_inodes", "dir": "/dev/shm"},
                {"do": "clean", "dir": "/dev/shm"},
            ):
                response = await client.post("/run/filler", json=event)
                assert response.status_code == 200, response.text
                out = response.json()
                if event["do"] == "fill_bytes":
                    assert out["errno"] == errno.ENOSPC and out["written"] <= (4 << 20), out
                elif event["do"] == "fill_inodes":
                    assert out == {"made": 100, "errno": errno.ENOSPC}, out
            response = await client.post("/run/filler", json={"do": "python"})
            assert response.status_code == 200 and response.json()["pool"]["ok"], response.text
            response = await client.post("/run/echo", json={"still": "serving"})
            assert response.json() == {"still": "serving"}
            assert (await client.get("/status")).status_code == 200


async def test_proc_is_not_mounted_for_a_process_that_is_gone(pool, tmp_path):
    """The worker names the namespace by the reporter's pid: a process that
    exited (its pid free for reuse) gets no /proc, whoever holds the pid now."""
    from olactors._errors import SandboxError
    from olactors.sock._procfs import ProcMounter

    (tmp_path / "proc").mkdir()
    child = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(child.pid)
    try:
        child.kill()
        select.select([pidfd], [], [], 10)  # exited, not yet reaped: its pid still names it
        with pytest.raises(SandboxError, match="exited"):
            ProcMounter().mount_for(str(tmp_path), child.pid, pidfd)
        child.wait()  # reaped: the pid names nothing (or another process)
        with pytest.raises(SandboxError):
            ProcMounter().mount_for(str(tmp_path), child.pid, pidfd)
    finally:
        os.close(pidfd)
    assert not os.path.ismount(tmp_path / "proc")
