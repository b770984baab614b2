"""cgroup v2 tests.

Real tests run on the unified hierarchy (on this v1/hybrid machine it has no
controllers, but freeze, kill, events and procs work): a unique
``olactors-test-<random>`` subtree under the worker's own v2 cgroup.  Limits
and usage parsing are tested against a fake cgroupfs directory.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from olactors._errors import CgroupError
from olactors.sock.cgroups import (
    CallUsage,
    Cgroup,
    CgroupAnomalies,
    CgroupLayout,
    CgroupLimits,
    open_backend,
)
from olactors.sock.cgroups._detect import find_unified, parse_mountinfo, parse_proc_cgroup
from olactors.sock.cgroups._v2 import V2Backend, V2Cgroup, cpu_max, cpu_weight, wait_events

from .conftest import cgroup_dirs_named as leftovers
from .conftest import spawn_in

MiB = 1 << 20


def _unified_dir() -> str | None:
    """The worker's own cgroup in a writable cgroup2 hierarchy with cgroup.kill, if any."""
    if os.geteuid() != 0:
        return None
    try:
        with open("/proc/self/cgroup") as f, open("/proc/self/mountinfo") as g:
            unified = find_unified(parse_proc_cgroup(f.read()), parse_mountinfo(g.read()))
    except OSError:
        return None
    if unified is None or not os.access(unified.own_dir, os.W_OK):
        return None
    return unified.own_dir


UNIFIED = _unified_dir()
real_v2 = pytest.mark.skipif(UNIFIED is None, reason="needs root and a cgroup2 hierarchy")


@pytest.fixture
def anomalies() -> CgroupAnomalies:
    return CgroupAnomalies()


@pytest.fixture
async def backend(anomalies: CgroupAnomalies) -> AsyncIterator[V2Backend]:
    assert UNIFIED is not None
    worker_id = f"test-{secrets.token_hex(4)}"
    # The unified hierarchy here has no controllers: only freeze/kill/events/procs.
    layout = CgroupLayout.v2_at(UNIFIED)
    backend = open_backend(layout, worker_id, anomalies)
    assert isinstance(backend, V2Backend)
    try:
        yield backend
    finally:
        await backend.remove_subtree()
        assert leftovers(worker_id) == []


def events(cgroup: Cgroup) -> str:
    return Path(cgroup.paths()[0], "cgroup.events").read_text()


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


BUSY = "while True: pass"
SLEEP = "import time; time.sleep(60)"

# -- real unified hierarchy ---------------------------------------------------


@real_v2
async def test_real_freeze_thaw_kill_remove(
    backend: V2Backend, processes: list, anomalies: CgroupAnomalies
) -> None:
    (root,) = backend.subtree_paths()
    assert root == os.path.join(UNIFIED or "", f"olactors-{backend.worker_id}")
    cgroup = backend.create("cg-0")
    assert cgroup.procs_files() == [os.path.join(root, "cg-0", "cgroup.procs")]
    cgroup.reset_baseline()
    proc = spawn_in(cgroup, BUSY, processes)
    assert cgroup.pids() == [proc.pid] and not cgroup.is_empty()
    await wait_for(lambda: cgroup.usage().cpu_ns > 20_000_000)

    await cgroup.freeze(timeout=2.0)
    assert "frozen 1" in events(cgroup) and cgroup.is_frozen()
    frozen_at = cgroup.usage().cpu_ns
    await trio.sleep(0.15)
    assert cgroup.usage().cpu_ns - frozen_at < 1_000_000

    await cgroup.thaw(timeout=2.0)
    assert "frozen 0" in events(cgroup) and not cgroup.is_frozen()
    await wait_for(lambda: cgroup.usage().cpu_ns > frozen_at + 20_000_000)

    await cgroup.kill_all(timeout=2.0)
    assert "populated 0" in events(cgroup) and cgroup.is_empty()
    assert proc.wait(timeout=5) == -9
    await cgroup.remove()
    assert not os.path.exists(cgroup.paths()[0])
    assert anomalies.total() == 0, anomalies.snapshot()


@real_v2
async def test_real_kill_all_frozen_cgroup(backend: V2Backend, processes: list) -> None:
    cgroup = backend.create("frozen")
    procs = [spawn_in(cgroup, SLEEP, processes) for _ in range(3)]
    assert cgroup.pids() == sorted(p.pid for p in procs)
    await cgroup.freeze(timeout=2.0)
    await cgroup.kill_all(timeout=2.0)
    assert cgroup.is_empty() and not cgroup.is_frozen()
    assert "frozen 0" in events(cgroup)
    assert [p.wait(timeout=5) for p in procs] == [-9, -9, -9]


@real_v2
async def test_real_freeze_is_event_driven(backend: V2Backend, processes: list) -> None:
    """Freeze waits in a thread on POLLPRI; cancelling the wait returns promptly."""
    cgroup = backend.create("events")
    procs = [spawn_in(cgroup, BUSY, processes) for _ in range(2)]
    start = trio.current_time()
    for _ in range(5):
        await cgroup.freeze(timeout=2.0)
        await cgroup.thaw(timeout=2.0)
    assert trio.current_time() - start < 1.0
    # Nothing will ever change "populated 1" here: a cancelled wait must not hang.
    with trio.move_on_after(0.05) as scope:
        await wait_events(os.path.join(cgroup.paths()[0], "cgroup.events"), "populated", "0")
    assert scope.cancelled_caught
    assert trio.current_time() - start < 1.5
    await cgroup.kill_all(timeout=2.0)
    assert [p.wait(timeout=5) for p in procs] == [-9, -9]


@real_v2
async def test_real_remove_subtree_kills_nested(backend: V2Backend, processes: list) -> None:
    cgroup = backend.create("nested")
    proc = spawn_in(cgroup, SLEEP, processes)
    assert UNIFIED is not None
    cleaner = open_backend(CgroupLayout.v2_at(UNIFIED), backend.worker_id, CgroupAnomalies())
    await cleaner.remove_subtree()
    assert proc.wait(timeout=5) == -9
    assert not os.path.exists(backend.subtree_paths()[0])
    await cleaner.remove_subtree()


# -- fake cgroupfs --------------------------------------------------------------


def fake_root(tmp_path: Path, worker_id: str, controllers: str = "cpu io memory pids") -> Path:
    """A fake parent cgroup whose olactors-<id> subtree already lists ``controllers``."""
    root = tmp_path / f"olactors-{worker_id}"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def fill(directory: str, **files: str) -> None:
    for name, content in files.items():
        Path(directory, name.replace("__", ".")).write_text(content)


KERNEL_DEFAULTS = dict(
    memory__max="max\n",
    memory__swap__max="max\n",
    pids__max="max\n",
    cpu__max="max 100000\n",
    cpu__weight="100\n",
)

ALL = frozenset({"memory", "pids", "cpu", "io"})


def test_fake_subtree_enables_controllers(tmp_path: Path, anomalies: CgroupAnomalies) -> None:
    root = fake_root(tmp_path, "w1")
    backend = open_backend(CgroupLayout.v2_at(str(tmp_path), ALL), "w1", anomalies, str(tmp_path))
    assert backend.subtree_paths() == [str(root)]
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    cgroup = backend.create("cg-0")
    assert cgroup.paths() == [str(root / "cg-0")]


def test_fake_missing_controller_is_an_error(tmp_path: Path, anomalies: CgroupAnomalies) -> None:
    fake_root(tmp_path, "w1", controllers="cpu io")
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    layout = CgroupLayout.v2_at(str(tmp_path), ALL)
    with pytest.raises(CgroupError, match="memory, pids"):
        open_backend(layout, "w1", anomalies, str(tmp_path))
    # Nothing of the parent (not ours) was written.
    assert not (tmp_path / "cgroup.subtree_control").exists()


def test_fake_limits_written(tmp_path: Path, anomalies: CgroupAnomalies) -> None:
    fake_root(tmp_path, "w1")
    backend = open_backend(CgroupLayout.v2_at(str(tmp_path), ALL), "w1", anomalies, str(tmp_path))
    cgroup = backend.create("cg-0")
    path = cgroup.paths()[0]
    with pytest.raises(CgroupError, match="memory.max"):
        cgroup.set_limits(CgroupLimits(mem_bytes=64 * MiB, pids=32, cpu_percent=250))
    fill(path, **KERNEL_DEFAULTS)

    def content(name: str) -> str:
        return Path(path, name).read_text()

    cgroup.set_limits(CgroupLimits(mem_bytes=64 * MiB, pids=32, cpu_percent=250))
    assert content("memory.max") == str(64 * MiB)
    assert content("memory.swap.max") == "0"
    assert content("pids.max") == "32"
    assert content("cpu.max") == "250000 100000"
    assert content("cpu.weight") == "250"
    cgroup.set_limits(CgroupLimits(mem_bytes=0, pids=0, cpu_percent=0))
    assert content("memory.max") == "max"
    assert content("memory.swap.max") == "0"
    assert content("pids.max") == "max"
    assert content("cpu.max") == "max 100000"
    assert content("cpu.weight") == "100"
    assert cpu_max(1) == "1000 100000" and cpu_weight(50_000) == 10_000


def test_fake_usage_is_relative_to_baseline(tmp_path: Path, anomalies: CgroupAnomalies) -> None:
    fake_root(tmp_path, "w1")
    backend = open_backend(CgroupLayout.v2_at(str(tmp_path), ALL), "w1", anomalies, str(tmp_path))
    cgroup = backend.create("cg-0")
    assert isinstance(cgroup, V2Cgroup)
    path = cgroup.paths()[0]
    # Before any accounting file exists every counter reads 0.
    assert cgroup.usage().oom_kills == 0 and cgroup.usage().cpu_ns == 0
    fill(
        path,
        memory__current="1000\n",
        memory__peak="50000\n",
        memory__events="low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
        pids__events="max 4\n",
        cpu__stat="usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
    )
    cgroup.reset_baseline()
    assert Path(path, "memory.peak").read_text() == "50000\n"  # never written on a fake
    usage = cgroup.usage()
    assert (usage.oom_kills, usage.pids_limit_hits, usage.cpu_ns) == (0, 0, 0)
    assert usage.memory_bytes == 1000
    assert usage.memory_peak_bytes == 1000  # old global peak is not this lease's
    fill(
        path,
        memory__current="3000\n",
        memory__peak="70000\n",
        memory__events="low 0\nhigh 0\nmax 9\noom 3\noom_kill 3\noom_group_kill 0\n",
        pids__events="max 6\n",
        cpu__stat="usage_usec 4000\nuser_usec 3000\nsystem_usec 1000\n",
    )
    usage = cgroup.usage()
    assert usage.oom_kills == 1
    assert usage.pids_limit_hits == 2
    assert usage.cpu_ns == 2_500_000
    assert usage.memory_bytes == 3000
    assert usage.memory_peak_bytes == 70000
    assert cgroup.call_usage() == CallUsage(cpu_ns=2_500_000, memory_peak_bytes=70000)


async def test_fake_freeze_timeout_is_an_anomaly(
    tmp_path: Path, anomalies: CgroupAnomalies
) -> None:
    fake_root(tmp_path, "w1")
    backend = open_backend(CgroupLayout.v2_at(str(tmp_path), ALL), "w1", anomalies, str(tmp_path))
    cgroup = backend.create("cg-0")
    fill(cgroup.paths()[0], cgroup__freeze="0\n", cgroup__events="populated 1\nfrozen 0\n")
    start = trio.current_time()
    with pytest.raises(CgroupError, match="timed out"):
        await cgroup.freeze(timeout=0.05)
    assert trio.current_time() - start < 0.4  # the poll thread was abandoned, not awaited
    assert anomalies.count("timeout_freeze") == 1
    assert anomalies.snapshot()["timeout_freeze"]["max_seconds"] >= 0.05
    assert cgroup.is_frozen()  # it asked the kernel to freeze


@real_v2
async def test_real_watchdog_kills_frozen_sandboxes_with_cgroup_kill(
    backend: V2Backend, processes: list
) -> None:
    """The watchdog's v2 path: when the worker's pipe closes without ``done``,
    ``cgroup.kill`` ends the frozen processes of every cgroup in the subtree."""
    import subprocess
    import sys

    from olactors.sock import _watchdog

    cgroups = [backend.create("frozen"), backend.create("running")]
    procs = [spawn_in(cg, SLEEP, processes) for cg in cgroups for _ in range(2)]
    await cgroups[0].freeze(timeout=2.0)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    program = [sys.executable, "-I", "-S", _watchdog.__file__, str(read_fd)]
    watchdog = subprocess.Popen([*program, *backend.subtree_paths()], pass_fds=[read_fd])
    os.close(read_fd)
    os.close(write_fd)  # the worker died: end of file, no "done"
    assert await trio.to_thread.run_sync(watchdog.wait, 10) == 0
    assert [p.wait(timeout=5) for p in procs] == [-9, -9, -9, -9]
    assert all(cg.is_empty() for cg in cgroups)
