"""Real cgroup v1 tests (root, v1/hybrid machine): limits, OOM, pids, cpu, freeze, kill, remove.

Every test works in a unique ``olactors-test-<random>`` subtree that the
fixture removes; processes are started by the test and killed/reaped by pid.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import trio

from olactors._errors import CgroupError
from olactors.sock.cgroups import (
    Cgroup,
    CgroupAnomalies,
    CgroupLimits,
    open_backend,
)
from olactors.sock.cgroups._v1 import V1Backend, cpu_shares

from .conftest import cgroup_dirs_named as leftovers
from .conftest import spawn_in, v1_layout

LAYOUT = v1_layout()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(LAYOUT is None, reason="needs root and cgroup v1 memory/pids/cpu/freezer"),
]

MiB = 1 << 20


@pytest.fixture
async def backend() -> AsyncIterator[V1Backend]:
    assert LAYOUT is not None
    worker_id = f"test-{secrets.token_hex(4)}"
    anomalies = CgroupAnomalies()
    backend = open_backend(LAYOUT, worker_id, anomalies)
    assert isinstance(backend, V1Backend)
    try:
        yield backend
    finally:
        await backend.remove_subtree()
        assert leftovers(worker_id) == []


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def ctl(cgroup: Cgroup, controller: str, filename: str) -> str:
    for path in cgroup.paths():
        if f"/{controller}/" in path:
            return read(os.path.join(path, filename))
    raise AssertionError(f"no {controller} dir in {cgroup.paths()}")


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


BUSY = "while True: pass"
SLEEP = "import time; time.sleep(60)"


async def test_subtree_and_create(backend: V1Backend) -> None:
    roots = backend.subtree_paths()
    assert len(roots) == 5
    assert all(r.endswith(f"/olactors-{backend.worker_id}") and os.path.isdir(r) for r in roots)
    cgroup = backend.create("cg-a")
    assert [os.path.dirname(p) for p in cgroup.paths()] == roots
    assert cgroup.is_empty() and not cgroup.is_frozen()
    with pytest.raises(CgroupError, match="already exists"):
        backend.create("cg-a")
    with pytest.raises(ValueError):
        backend.create("../escape")


async def test_limits_written_and_read_back(backend: V1Backend) -> None:
    cgroup = backend.create("limits")
    cgroup.set_limits(CgroupLimits(mem_bytes=64 * MiB, pids=17, cpu_percent=50))
    assert ctl(cgroup, "memory", "memory.limit_in_bytes") == str(64 * MiB)
    assert ctl(cgroup, "memory", "memory.memsw.limit_in_bytes") == str(64 * MiB)
    assert ctl(cgroup, "memory", "memory.swappiness") == "0"
    assert ctl(cgroup, "pids", "pids.max") == "17"
    assert ctl(cgroup, "cpu", "cpu.cfs_period_us") == "100000"
    assert ctl(cgroup, "cpu", "cpu.cfs_quota_us") == "50000"
    assert ctl(cgroup, "cpu", "cpu.shares") == "512"
    # Raising needs memsw first, lowering needs the limit first: both must work.
    cgroup.set_limits(CgroupLimits(mem_bytes=256 * MiB, pids=5, cpu_percent=250))
    assert ctl(cgroup, "memory", "memory.limit_in_bytes") == str(256 * MiB)
    assert ctl(cgroup, "memory", "memory.memsw.limit_in_bytes") == str(256 * MiB)
    assert ctl(cgroup, "cpu", "cpu.cfs_quota_us") == "250000"
    cgroup.set_limits(CgroupLimits(mem_bytes=32 * MiB, pids=5, cpu_percent=100))
    assert ctl(cgroup, "memory", "memory.limit_in_bytes") == str(32 * MiB)
    assert ctl(cgroup, "memory", "memory.memsw.limit_in_bytes") == str(32 * MiB)
    assert ctl(cgroup, "cpu", "cpu.shares") == "1024"
    cgroup.set_limits(CgroupLimits(mem_bytes=0, pids=0, cpu_percent=0))
    assert int(ctl(cgroup, "memory", "memory.limit_in_bytes")) > 1 << 60
    assert int(ctl(cgroup, "memory", "memory.memsw.limit_in_bytes")) > 1 << 60
    assert ctl(cgroup, "pids", "pids.max") == "max"
    assert ctl(cgroup, "cpu", "cpu.cfs_quota_us") == "-1"
    assert cpu_shares(1) == 10 and cpu_shares(100_000) == 262_144


async def test_open_procs_fds_flags(backend: V1Backend) -> None:
    cgroup = backend.create("fds")
    fds = cgroup.open_procs_fds()
    try:
        assert len(fds) == len(cgroup.procs_files()) == 5
        for fd in fds:
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
    finally:
        for fd in fds:
            os.close(fd)


async def test_oom_kill_is_counted(backend: V1Backend, processes: list) -> None:
    cgroup = backend.create("oom")
    cgroup.set_limits(CgroupLimits(mem_bytes=64 * MiB, pids=16, cpu_percent=0))
    cgroup.reset_baseline()
    assert cgroup.usage().oom_kills == 0
    proc = spawn_in(
        cgroup, "b = b'x' * (256 << 20); print('survived')", processes, stdout=subprocess.PIPE
    )
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == -9 and b"survived" not in out
    usage = cgroup.usage()
    assert usage.oom_kills >= 1
    assert 32 * MiB <= usage.memory_peak_bytes <= 64 * MiB
    assert cgroup.is_empty()


async def test_pids_limit_hits_are_counted(backend: V1Backend, processes: list) -> None:
    cgroup = backend.create("forks")
    cgroup.set_limits(CgroupLimits(mem_bytes=0, pids=6, cpu_percent=0))
    cgroup.reset_baseline()
    code = """
import os, signal, time
kids = []
try:
    for _ in range(50):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        kids.append(pid)
except OSError:
    pass
for pid in kids:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(len(kids))
"""
    proc = spawn_in(cgroup, code, processes, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert int(out) == 5  # the parent plus 5 children reach pids.max = 6
    assert cgroup.usage().pids_limit_hits >= 1
    cgroup.reset_baseline()
    assert cgroup.usage().pids_limit_hits == 0


async def test_cpu_freeze_thaw(backend: V1Backend, processes: list) -> None:
    cgroup = backend.create("busy")
    cgroup.reset_baseline()
    proc = spawn_in(cgroup, BUSY, processes)
    assert cgroup.pids() == [proc.pid]
    await wait_for(lambda: cgroup.usage().cpu_ns > 20_000_000)

    await cgroup.freeze(timeout=2.0)
    assert cgroup.is_frozen()
    assert ctl(cgroup, "freezer", "freezer.state") == "FROZEN"
    frozen_at = cgroup.usage().cpu_ns
    await trio.sleep(0.15)
    assert cgroup.usage().cpu_ns - frozen_at < 1_000_000

    await cgroup.thaw(timeout=2.0)
    assert not cgroup.is_frozen()
    await wait_for(lambda: cgroup.usage().cpu_ns > frozen_at + 20_000_000)

    await cgroup.kill_all(timeout=2.0)
    assert proc.wait(timeout=5) == -9


def fds_into(directories: list[str]) -> list[str]:
    """Paths of this process's open fds that lie in one of ``directories``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if any(target.startswith(d + "/") for d in directories):
            found.append(target)
    return sorted(found)


async def test_counters_are_read_through_kept_fds(backend: V1Backend, processes: list) -> None:
    """A call's record reads its cgroup's counters on every call: the counter
    files stay open (pread at 0 renders them afresh), until the cgroup is
    paused or removed."""
    cgroup = backend.create("kept")
    cgroup.reset_baseline()
    assert cgroup.call_usage().cpu_ns == 0 and cgroup.usage().cpu_ns == 0
    kept = fds_into(cgroup.paths())
    # what a record reads; the OOM and pids counters (read at a death) are not kept
    assert {os.path.basename(path) for path in kept} == {
        "memory.usage_in_bytes",
        "memory.max_usage_in_bytes",
        "cpuacct.usage",
    }
    spawn_in(cgroup, BUSY, processes)
    await wait_for(lambda: cgroup.usage().cpu_ns > 20_000_000)  # fresh through the kept fds
    before, call, after = cgroup.usage(), cgroup.call_usage(), cgroup.usage()
    assert before.cpu_ns <= call.cpu_ns <= after.cpu_ns
    assert before.memory_peak_bytes <= call.memory_peak_bytes <= after.memory_peak_bytes
    assert call.memory_peak_bytes > 0
    assert fds_into(cgroup.paths()) == kept  # none opened again
    await cgroup.freeze(timeout=2.0)
    assert fds_into(cgroup.paths()) == []  # a paused cgroup keeps none
    await cgroup.thaw(timeout=2.0)
    assert cgroup.usage().cpu_ns > 20_000_000
    assert fds_into(cgroup.paths()) == kept
    await cgroup.remove(timeout=2.0)
    assert fds_into(cgroup.paths()) == []


@pytest.mark.parametrize("frozen", [False, True])
async def test_kill_all_empties(backend: V1Backend, processes: list, frozen: bool) -> None:
    cgroup = backend.create("many")
    procs = [spawn_in(cgroup, SLEEP, processes) for _ in range(3)]
    assert cgroup.pids() == sorted(p.pid for p in procs)
    if frozen:
        await cgroup.freeze(timeout=2.0)
    await cgroup.kill_all(timeout=2.0)
    assert cgroup.is_empty() and cgroup.pids() == []
    assert not cgroup.is_frozen()
    assert [p.wait(timeout=5) for p in procs] == [-9, -9, -9]


async def test_add_pid_and_remove(backend: V1Backend, processes: list) -> None:
    cgroup = backend.create("rm")
    proc = subprocess.Popen([sys.executable, "-S", "-c", SLEEP])
    processes.append(proc)
    cgroup.add_pid(proc.pid)
    assert cgroup.pids() == [proc.pid]
    await cgroup.remove()  # kills what is left first
    assert proc.wait(timeout=5) == -9
    assert not any(os.path.exists(p) for p in cgroup.paths())
    await cgroup.remove()  # idempotent
    with pytest.raises(CgroupError):
        cgroup.add_pid(os.getpid())


async def test_remove_subtree_cleans_a_crashed_worker(backend: V1Backend, processes: list) -> None:
    cgroup = backend.create("left-behind")
    proc = spawn_in(cgroup, SLEEP, processes)
    assert LAYOUT is not None
    # `olactors cleanup`: a new backend over the same worker id.
    cleaner = open_backend(LAYOUT, backend.worker_id, CgroupAnomalies())
    await cleaner.remove_subtree()
    assert proc.wait(timeout=5) == -9
    assert not any(os.path.exists(p) for p in cleaner.subtree_paths())
    await cleaner.remove_subtree()  # safe to run twice
