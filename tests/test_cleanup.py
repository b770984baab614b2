"""`olactors cleanup` after a worker killed with SIGKILL leaves nothing behind.

The worker keeps its sandbox mounts in a private mount namespace of its own,
so this test process never sees them: "no mount left" is checked as "the
worker's mount namespace is gone" (no process in it, no descriptor of it),
after first checking that the mounts were there, in that namespace.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from olactors.sock import worker_id

from .conftest import olactors_cgroups, run_cli, write_function
from .test_http_api import alive

pytestmark = pytest.mark.root

WORKER = textwrap.dedent(
    """
    import json, sys, pathlib, trio
    from olactors._config import build_config
    from olactors.sock import open_sock_pool, prepare_worker_process, SandboxMeta, Invocation
    prepare_worker_process()
    async def main(wd, code):
        async with open_sock_pool(build_config(None), pathlib.Path(wd)) as pool:
            fresh = await pool.create(None, True, code, None, SandboxMeta())
            zygote = await pool.create(None, False, None, None, SandboxMeta())
            child = await pool.create(zygote, True, code, None, SandboxMeta())
            paused_child = await pool.create(zygote, True, code, None, SandboxMeta())
            await child.invoke(Invocation(body=b"1"))
            await fresh.pause()
            await paused_child.pause()
            pids = [sb.raw.pid for sb in (fresh, zygote, child, paused_child)]
            print(json.dumps(pids), flush=True)
            await trio.sleep(60)
    trio.run(main, sys.argv[1], sys.argv[2])
    """
)


def children_of(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def mount_namespace(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def mounts_under(mountinfo: str, path: Path) -> list[str]:
    points = [line.split()[4] for line in mountinfo.splitlines()]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def holders_of_mount_namespace(ns: int) -> list[int]:
    """Processes in mount namespace ``ns`` or holding a descriptor of it (it lives while any do)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if mount_namespace(entry) == ns and alive(int(entry)):
                found.append(int(entry))
                continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") == f"mnt:[{ns}]":
                    found.append(int(entry))
        except OSError:  # gone meanwhile
            continue
    return found


def test_cleanup_after_sigkill(worker_dir, tmp_path):
    code = write_function(tmp_path, "echo", "def f(e):\n    return e\n")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(worker_dir), str(code)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = worker.stdout.readline()
        assert line, "worker did not start"
        pids = json.loads(line)
        wid = worker_id(worker_dir)
        assert any(f"olactors-{wid}" in c for c in olactors_cgroups())
        # The sandbox mounts live in the worker's private mount namespace, not ours:
        # "no mounts left" means "that namespace is gone", not "none in our mountinfo".
        worker_ns = mount_namespace(worker.pid)
        assert worker_ns != mount_namespace("self")
        with open(f"/proc/{worker.pid}/mountinfo") as f:
            assert len(mounts_under(f.read(), worker_dir)) >= 4 * len(pids)
        with open("/proc/self/mountinfo") as f:
            assert not mounts_under(f.read(), worker_dir)
        assert set(pids) <= set(holders_of_mount_namespace(worker_ns))
    finally:
        # The worker and its watchdog at once (as a cgroup-wide SIGKILL would): frozen
        # sandboxes then wait for cleanup to thaw them, with every mount of the namespace.
        for pid in children_of(worker.pid):
            if "_watchdog.py" in open(f"/proc/{pid}/cmdline").read():
                os.kill(pid, signal.SIGKILL)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
    assert (worker_dir / "run").exists()
    assert any(alive(p) for p in pids), "nothing frozen was left for cleanup"
    assert set(holders_of_mount_namespace(worker_ns)), "the namespace died before cleanup"
    result = run_cli("cleanup", "--path", str(worker_dir))
    assert result.returncode == 0, result.stderr
    assert "removed cgroup subtree" in result.stdout
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "sandbox processes survived cleanup"
    assert not [c for c in olactors_cgroups() if f"olactors-{wid}" in c]
    assert not (worker_dir / "run").exists()
    # The namespace (with every sandbox mount in it) is freed with its last process.
    while holders_of_mount_namespace(worker_ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    holders = holders_of_mount_namespace(worker_ns)
    assert not holders, f"the dead worker's mounts live on in processes {holders}"
    with open("/proc/self/mountinfo") as f:
        assert not mounts_under(f.read(), worker_dir)
    again = run_cli("cleanup", "--path", str(worker_dir))
    assert again.returncode == 0 and again.stdout.strip() == "nothing to clean"


def test_cleanup_of_missing_dir_is_harmless(tmp_path):
    result = run_cli("cleanup", "--path", str(tmp_path / "nope"))
    assert result.returncode == 0
    assert "nothing to clean" in result.stdout


def test_pool_recovers_leftovers_of_a_dead_worker(worker_dir):
    """What a dead worker left in run/ (a sandbox dir, a stale socket) is removed at start."""
    import trio

    from olactors._config import build_config
    from olactors.sock import open_sock_pool

    leftover = worker_dir / "run" / "sandboxes" / "sb-1" / "scratch"
    leftover.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(leftover / "ol.sock"))
    stale.close()
    seen = []

    async def start():
        async with open_sock_pool(build_config(None), worker_dir) as pool:
            seen.append(pool.run_dir.exists())

    trio.run(start)
    assert seen == [False]
    assert not (worker_dir / "run").exists()


def test_cleanup_refuses_a_live_worker_dir(worker_dir):
    """`olactors cleanup` takes the worker dir's lock: a live worker is never touched."""
    from olactors.sock import WorkerDirLock

    (worker_dir / "run" / "sandboxes" / "sb-1").mkdir(parents=True)
    with WorkerDirLock.acquire(worker_dir):
        result = run_cli("cleanup", "--path", str(worker_dir))
        assert result.returncode == 2
        assert "already running" in result.stderr
        assert f"pid {os.getpid()}" in result.stderr
        assert (worker_dir / "run" / "sandboxes" / "sb-1").is_dir()
    assert run_cli("cleanup", "--path", str(worker_dir)).returncode == 0
    assert not (worker_dir / "run").exists()


def test_pool_on_a_worker_dir_that_does_not_exist_yet(tmp_path):
    import trio

    from olactors._config import build_config
    from olactors.sock import open_sock_pool

    async def start():
        async with open_sock_pool(build_config(None), tmp_path / "new" / "worker"):
            pass

    trio.run(start)
    assert (tmp_path / "new" / "worker" / "worker.lock").is_file()
