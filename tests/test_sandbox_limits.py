"""Resource limits and the seccomp filter, enforced on real SOCK sandboxes.

Every test runs in a fresh leaf and in a leaf forked from a zygote: the two
paths set up cgroups, namespaces and seccomp differently (native spawn vs.
the in-sandbox fork server), so each must enforce the limits on its own.
"""

from __future__ import annotations

import errno
import json
import os
import time

import pytest
import trio

from olactors._causes import Cause, CauseCode, released
from olactors._errors import SandboxDead, SandboxError
from olactors.sock import Invocation, SandboxLimits, SandboxMeta, SandboxState

from .conftest import write_function

pytestmark = pytest.mark.root

KINDS = ["fresh", "forked"]


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


async def make_leaf(pool, kind: str, code, meta: SandboxMeta, scratch=None):
    """A leaf running ``code``: spawned fresh, or forked from a new zygote."""
    parent = None
    if kind == "forked":
        parent = await pool.create(None, False, None, None, SandboxMeta(network=meta.network))
    return await pool.create(parent, True, str(code), scratch, meta)


async def call(sb, event) -> tuple[int, object]:
    result = await sb.invoke(Invocation(body=json.dumps(event).encode()))
    return result.status, json.loads(result.body)


async def call_ok(sb, event):
    status, body = await call(sb, event)
    assert status == 200, body
    return body


# --------------------------------------------------------------------- memory
MEMORY_HANDLER = """
import subprocess
import sys

def f(event):
    if event == "hog":
        data = b"x" * (300 << 20)  # 300 MB, every page written
        return len(data)
    if event == "child-hog":
        child = subprocess.run(
            [sys.executable, "-I", "-S", "-c", "data = b'x' * (300 << 20)"],
            capture_output=True,
        )
        return {"returncode": child.returncode}
    return "alive"
"""


async def test_memory_hog_kills_the_sandbox(pool, tmp_path, kind):
    code = write_function(tmp_path, "mem", MEMORY_HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta(limits=SandboxLimits(mem_mb=64)))
    assert await call_ok(sb, "ping") == "alive"

    with pytest.raises(SandboxError) as info:
        await call(sb, "hog")
    assert isinstance(info.value, SandboxDead)
    assert info.value.cause == Cause.of(CauseCode.OOM, limit_mb=64), info.value.cause
    assert sb.state is SandboxState.DEAD
    assert sb.death_cause == info.value.cause

    # Dead for good: later calls fail the same way and harm nothing.
    with pytest.raises(SandboxDead) as again:
        await call(sb, "ping")
    assert again.value.cause == Cause.of(CauseCode.OOM, limit_mb=64)

    if kind == "forked":
        # The OOM was confined to the leaf's cgroup: its zygote still forks.
        zygote = sb.parent
        assert zygote.state is SandboxState.RUNNING
        sibling = await pool.create(zygote, True, str(code), None, SandboxMeta())
        assert await call_ok(sibling, "ping") == "alive"
        await sibling.destroy(released("test done"))


async def test_memory_hog_child_is_killed_sandbox_survives(pool, tmp_path, kind):
    code = write_function(tmp_path, "mem", MEMORY_HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta(limits=SandboxLimits(mem_mb=64)))
    assert sb.usage().oom_kills == 0

    assert await call_ok(sb, "child-hog") == {"returncode": -9}

    assert sb.usage().oom_kills >= 1
    assert sb.state is SandboxState.RUNNING
    assert sb.death_cause is None
    assert await call_ok(sb, "ping") == "alive"
    await sb.destroy(released("test done"))


# ----------------------------------------------------------------------- pids
PIDS_HANDLER = """
import os
import time

def f(event):
    forked, err = 0, None
    for _ in range(event["attempts"]):
        try:
            pid = os.fork()
        except OSError as exc:
            err = exc.errno
            break
        if pid == 0:
            try:
                time.sleep(30)
            finally:
                os._exit(0)
        forked += 1
    return {"forked": forked, "errno": err}
"""


def _alive(pid: int) -> bool:
    """True if host pid ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_pids_limit_stops_forks_and_destroy_kills_them(pool, tmp_path, kind):
    code = write_function(tmp_path, "pids", PIDS_HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta(limits=SandboxLimits(procs=16)))
    assert sb.usage().pids_limit_hits == 0

    out = await call_ok(sb, {"attempts": 40})
    assert out["errno"] == errno.EAGAIN, out
    assert 8 <= out["forked"] < 16, out
    assert sb.usage().pids_limit_hits >= 1
    assert sb.state is SandboxState.RUNNING

    cgroup = sb.raw.cgroup
    host_pids = cgroup.pids()
    assert len(host_pids) == out["forked"] + 1  # the runtime plus its sleeping children
    assert all(_alive(pid) for pid in host_pids)
    procs_files = cgroup.procs_files()

    await sb.destroy(released("test done"))
    assert sb.state is SandboxState.DEAD
    for path in procs_files:  # removed, or back in the pool and empty
        if os.path.exists(path):
            with open(path) as f:
                assert f.read().split() == [], path
    with trio.fail_after(5):  # a forked leaf's init is reaped by its zygote, asynchronously
        while any(_alive(pid) for pid in host_pids):
            await trio.sleep(0.01)


# ------------------------------------------------------------------------ cpu
CPU_HANDLER = """
import time

def f(event):
    # Spin for event["wall"] seconds of wall-clock time, or until this process
    # has used event["cpu"] seconds of CPU (robust on a busy machine).
    cpu0 = time.process_time()
    if "wall" in event:
        end = time.monotonic() + event["wall"]
        done = lambda: time.monotonic() >= end
    else:
        done = lambda: time.process_time() - cpu0 >= event["cpu"]
    spins = 0
    while not done():
        spins += 1
    return {"cpu": time.process_time() - cpu0, "spins": spins}
"""


async def test_cpu_usage_is_accounted(pool, tmp_path, kind):
    code = write_function(tmp_path, "cpu", CPU_HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta())
    before = sb.usage().cpu_ns
    out = await call_ok(sb, {"cpu": 0.3})
    used = sb.usage().cpu_ns - before
    assert out["cpu"] >= 0.3
    assert used > 0.25e9, (used, out)
    assert used < 5e9, (used, out)
    await sb.destroy(released("test done"))


async def test_cpu_quota_throttles(pool, tmp_path, kind):
    code = write_function(tmp_path, "cpu", CPU_HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta(limits=SandboxLimits(cpu_percent=20)))
    before = sb.usage().cpu_ns
    start = time.monotonic()
    out = await call_ok(sb, {"wall": 0.5})
    wall = time.monotonic() - start
    used = sb.usage().cpu_ns - before
    assert wall >= 0.5
    # 20 % of one core over ~0.5 s is ~0.1 s; unthrottled it would be ~0.5 s.
    assert 0.02e9 < used <= 0.25e9, (used, out)
    assert out["cpu"] <= 0.25, out
    await sb.destroy(released("test done"))


# -------------------------------------------------------------------- seccomp
SECCOMP_HANDLER = """
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000


def probe(fn, *args):
    ctypes.set_errno(0)
    rc = fn(*args)
    return [rc, ctypes.get_errno()]


def f(event):
    if event == "ping":
        return "alive"
    return {
        "mount": probe(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
        "umount2": probe(libc.umount2, b"/tmp", 2),
        "unshare_ns": probe(libc.unshare, CLONE_NEWNS),
        "unshare_user": probe(libc.unshare, CLONE_NEWUSER),
        "unshare_net": probe(libc.unshare, CLONE_NEWNET),
        "chroot": probe(libc.chroot, b"/tmp"),
        "sethostname": probe(libc.sethostname, b"evil", 4),
        "setuid0": probe(libc.setuid, 0),
    }
"""


async def test_seccomp_denies_privileged_syscalls(pool, tmp_path, kind):
    code = write_function(tmp_path, "sec", SECCOMP_HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta())
    out = await call_ok(sb, "probe")
    eperm = [-1, errno.EPERM]
    assert out["mount"] == eperm, out
    assert out["umount2"] == eperm, out
    assert out["unshare_ns"] == eperm, out
    # Unprivileged user namespaces would otherwise succeed: only seccomp stops this.
    assert out["unshare_user"] == eperm, out
    assert out["unshare_net"] == eperm, out
    assert out["chroot"][0] == -1 and out["chroot"][1] in (errno.EPERM, errno.EACCES), out
    assert out["sethostname"] == eperm, out
    assert out["setuid0"] == eperm, out
    assert await call_ok(sb, "ping") == "alive"
    assert sb.state is SandboxState.RUNNING
    await sb.destroy(released("test done"))


# ------------------------------------------------------------------------ tmp
TMP_HANDLER = """
import os

CHUNK = b"\\0" * (256 << 10)

def f(event):
    path = "/tmp/" + event["name"]
    written, err = 0, None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while written < event["bytes"]:
            try:
                written += os.write(fd, CHUNK)
            except OSError as exc:
                err = exc.errno
                break
    finally:
        os.close(fd)
    if event.get("remove"):
        os.unlink(path)
    return {"written": written, "errno": err}
"""


async def test_tmp_is_size_limited(pool, tmp_path, kind):
    code = write_function(tmp_path, "tmp", TMP_HANDLER)
    sb = await make_leaf(pool, kind, code, SandboxMeta(limits=SandboxLimits(tmp_mb=4)))
    out = await call_ok(sb, {"name": "big", "bytes": 16 << 20, "remove": True})
    assert out["errno"] == errno.ENOSPC, out
    assert (3 << 20) <= out["written"] <= (4 << 20), out
    # The sandbox survives and /tmp is usable again once the file is gone.
    out = await call_ok(sb, {"name": "small", "bytes": 1 << 20})
    assert out == {"written": 1 << 20, "errno": None}
    assert sb.state is SandboxState.RUNNING
    await sb.destroy(released("test done"))
