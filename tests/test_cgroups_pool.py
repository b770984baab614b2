"""CgroupPool tests: a fake backend (with trio's MockClock) and the real v1 backend.

Also covers CgroupAnomalies.
"""

from __future__ import annotations

import logging
import secrets

import pytest
import trio

from olactors._errors import CgroupError
from olactors.sock.cgroups import (
    Cgroup,
    CgroupAnomalies,
    CgroupBackend,
    CgroupLimits,
    CgroupPool,
    CgroupUsage,
    open_backend,
)

from .conftest import cgroup_dirs_named as leftovers
from .conftest import spawn_in, v1_layout

LIMITS = CgroupLimits(mem_bytes=64 << 20, pids=16, cpu_percent=100)

# -- fake backend ---------------------------------------------------------------


class FakeCgroup(Cgroup):
    """In-memory cgroup; ``fail`` names operations that raise CgroupError."""

    def __init__(self, name: str, backend: FakeBackend) -> None:
        self.name = name
        self.backend = backend
        self.fail: set[str] = set()
        self.members: list[int] = []
        self.frozen = False
        self.removed = False
        self.limits: CgroupLimits | None = None
        self.oom_kills = 0
        self.base_oom = 0
        self.kill_seconds = 0.0

    def paths(self) -> list[str]:
        return [f"/fake/{self.name}"]

    def _check(self, op: str) -> None:
        assert not self.removed, f"{self.name} used after removal"
        if op in self.fail:
            raise CgroupError(f"{op} failed for {self.name}")

    def set_limits(self, limits: CgroupLimits) -> None:
        self._check("set_limits")
        self.limits = limits

    def procs_files(self) -> list[str]:
        return ["/fake/cgroup.procs"]

    def open_procs_fds(self) -> list[int]:
        return []

    def add_pid(self, pid: int) -> None:
        self.members.append(pid)

    def pids(self) -> list[int]:
        return sorted(self.members)

    def is_empty(self) -> bool:
        return not self.members

    def reset_baseline(self) -> None:
        self.base_oom = self.oom_kills

    def usage(self) -> CgroupUsage:
        return CgroupUsage(oom_kills=self.oom_kills - self.base_oom)

    async def freeze(self, timeout: float) -> None:
        self._check("freeze")
        self.frozen = True

    async def thaw(self, timeout: float) -> None:
        self._check("thaw")
        self.frozen = False

    def is_frozen(self) -> bool:
        return self.frozen

    async def kill_all(self, timeout: float) -> None:
        self._check("kill")
        await trio.sleep(self.kill_seconds)
        if "kill_leaves_pids" not in self.fail:
            self.members.clear()
        if "kill_leaves_frozen" not in self.fail:
            self.frozen = False

    async def remove(self, timeout: float = 1.0) -> None:
        if self.removed:
            return
        if "remove" in self.fail:
            self.fail.discard("remove")  # fails once, then works
            raise CgroupError(f"remove failed for {self.name}")
        self.removed = True
        self.backend.removed.append(self.name)


class FakeBackend(CgroupBackend):
    version = 2
    worker_id = "fake"

    def __init__(self) -> None:
        self.created: dict[str, FakeCgroup] = {}
        self.removed: list[str] = []
        self.subtree_removed = 0
        self.fail_create = False

    def create(self, name: str) -> FakeCgroup:
        if self.fail_create or name in self.created:
            raise CgroupError(f"cannot create {name}")
        cgroup = FakeCgroup(name, self)
        self.created[name] = cgroup
        return cgroup

    def subtree_paths(self) -> list[str]:
        return ["/fake/olactors-fake"]

    async def remove_subtree(self, timeout: float = 5.0) -> None:
        self.subtree_removed += 1

    def live(self) -> set[str]:
        return set(self.created) - set(self.removed)


@pytest.fixture
def anomalies() -> CgroupAnomalies:
    return CgroupAnomalies()


async def test_start_acquire_release_reuse(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeBackend()
    pool = CgroupPool(backend, 2, CgroupAnomalies())
    await pool.start()
    assert sorted(backend.created) == ["cg-0", "cg-1"] and pool.free_count == 2
    a = pool.acquire(LIMITS)
    b = pool.acquire(LIMITS)
    c = pool.acquire(LIMITS)  # none free: created on demand
    assert {a.name, b.name, c.name} == {"cg-0", "cg-1", "cg-2"}
    assert isinstance(a, FakeCgroup) and a.limits == LIMITS
    assert pool.stats() == {"size": 2, "free": 0, "in_use": 3, "doomed": 0}
    a.add_pid(1234)
    a.oom_kills = 3
    await pool.release(a)
    assert a.is_empty() and pool.free_count == 1
    await pool.release(b)
    await pool.release(c)  # pool is full: removed
    assert backend.removed == ["cg-2"] and pool.free_count == 2
    again = pool.acquire(LIMITS)
    assert again is b  # LIFO reuse
    again2 = pool.acquire(LIMITS)
    assert again2 is a and again2.usage().oom_kills == 0  # baseline reset
    with pytest.raises(ValueError):
        await pool.release(c)  # not in use any more
    await pool.release(again)
    await pool.release(again2)
    await pool.close()
    assert backend.live() == set() and backend.subtree_removed == 1
    with pytest.raises(CgroupError, match="closed"):
        pool.acquire(LIMITS)


@pytest.mark.parametrize("failure", ["kill", "kill_leaves_pids", "kill_leaves_frozen"])
async def test_broken_cgroup_is_never_reused(failure: str, autojump_clock: trio.abc.Clock) -> None:
    backend = FakeBackend()
    pool = CgroupPool(backend, 1, CgroupAnomalies())
    await pool.start()
    cgroup = pool.acquire(LIMITS)
    assert isinstance(cgroup, FakeCgroup)
    cgroup.add_pid(1)
    cgroup.fail.add(failure)
    if failure == "kill_leaves_frozen":
        cgroup.fail.add("thaw")
        await cgroup.freeze(1.0)
    await pool.release(cgroup)  # never raises
    assert cgroup.removed and pool.free_count == 0
    fresh = pool.acquire(LIMITS)
    assert fresh is not cgroup and fresh.name == "cg-1"
    await pool.release(fresh)
    await pool.close()
    assert backend.live() == set()


async def test_frozen_cgroup_is_thawed_before_reuse(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeBackend()
    pool = CgroupPool(backend, 1, CgroupAnomalies())
    cgroup = pool.acquire(LIMITS)
    assert isinstance(cgroup, FakeCgroup)
    await cgroup.freeze(1.0)
    cgroup.fail.add("kill_leaves_frozen")
    await pool.release(cgroup)
    assert not cgroup.frozen and pool.acquire(LIMITS) is cgroup
    await pool.close()


async def test_failed_set_limits_discards(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeBackend()
    pool = CgroupPool(backend, 1, CgroupAnomalies())
    await pool.start()
    backend.created["cg-0"].fail.add("set_limits")
    with pytest.raises(CgroupError, match="set_limits"):
        pool.acquire(LIMITS)
    assert pool.stats()["doomed"] == 1
    good = pool.acquire(LIMITS)
    assert good.name == "cg-1"
    await pool.release(good)  # also removes the doomed one
    assert backend.removed == ["cg-0"] and pool.stats()["doomed"] == 0
    await pool.close()


async def test_failed_removal_is_retried_at_close(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeBackend()
    pool = CgroupPool(backend, 0, CgroupAnomalies())
    cgroup = pool.acquire(LIMITS)
    assert isinstance(cgroup, FakeCgroup)
    cgroup.fail.add("remove")
    await pool.release(cgroup)  # size 0: removal attempted, fails once
    assert not cgroup.removed and pool.stats()["doomed"] == 1
    await pool.close()
    assert cgroup.removed and backend.live() == set()


async def test_close_removes_in_use_cgroups(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeBackend()
    pool = CgroupPool(backend, 3, CgroupAnomalies())
    await pool.start()
    pool.acquire(LIMITS).add_pid(99)
    await pool.close()
    assert backend.live() == set() and backend.subtree_removed == 1


async def test_start_failure_cleans_up(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeBackend()
    pool = CgroupPool(backend, 3, CgroupAnomalies())
    backend.create("cg-2")  # collides with the third pre-created name
    with pytest.raises(CgroupError):
        await pool.start()
    assert backend.removed == ["cg-0", "cg-1"]


async def test_release_is_shielded_and_uses_trio_time(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeBackend()
    pool = CgroupPool(backend, 1, CgroupAnomalies(), timeout=30.0)
    cgroup = pool.acquire(LIMITS)
    assert isinstance(cgroup, FakeCgroup)
    cgroup.kill_seconds = 10.0  # virtual seconds: MockClock jumps
    start = trio.current_time()
    with trio.move_on_after(1.0):
        await pool.release(cgroup)
    assert trio.current_time() - start >= 10.0  # the deadline did not cut the cleanup short
    assert pool.free_count == 1 and pool.in_use_count == 0
    await pool.close()


# -- anomalies --------------------------------------------------------------


def test_anomalies_counts_and_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    anomalies = CgroupAnomalies(slow_threshold=0.05)
    with caplog.at_level(logging.WARNING, logger="olactors.cgroups"):
        anomalies.completed("freeze", 0.01)
        anomalies.completed("freeze", 0.2, "cg-1")
        anomalies.completed("freeze", 0.1)
        anomalies.timed_out("kill", 2.0, "cg-2")
        anomalies.failed("remove", 1.0, "cg-3", CgroupError("busy"))
        anomalies.completed("mystery", 1.0)  # unknown ops are accepted
    snap = anomalies.snapshot()
    assert snap["slow_freeze"] == {"count": 2, "max_seconds": 0.2}
    assert snap["timeout_kill"] == {"count": 1, "max_seconds": 2.0}
    assert snap["failed_remove"]["count"] == 1
    assert snap["slow_thaw"] == {"count": 0, "max_seconds": 0.0}
    assert {"slow_remove", "timeout_freeze", "timeout_thaw"} <= set(snap)
    assert anomalies.count("slow_mystery") == 1 and anomalies.total() == 5
    assert "cg-1" in caplog.text and "timed out" in caplog.text
    with pytest.raises(ValueError):
        CgroupAnomalies(slow_threshold=-1)


# -- real v1 ----------------------------------------------------------------


V1 = v1_layout()


@pytest.mark.root
@pytest.mark.skipif(V1 is None, reason="needs root and cgroup v1")
async def test_real_v1_pool_reuses_with_fresh_baseline(
    processes: list, anomalies: CgroupAnomalies
) -> None:
    assert V1 is not None
    worker_id = f"test-{secrets.token_hex(4)}"
    backend = open_backend(V1, worker_id, anomalies)
    pool = CgroupPool(backend, 1, anomalies)
    try:
        await pool.start()
        cgroup = pool.acquire(LIMITS)
        proc = spawn_in(cgroup, "b = b'x' * (256 << 20)", processes)
        assert proc.wait(timeout=20) == -9
        sleeper = spawn_in(cgroup, "import time; time.sleep(60)", processes)
        assert cgroup.usage().oom_kills >= 1
        await cgroup.freeze(2.0)  # released while frozen and populated
        await pool.release(cgroup)
        assert sleeper.wait(timeout=5) == -9
        reused = pool.acquire(CgroupLimits(mem_bytes=32 << 20, pids=4, cpu_percent=50))
        assert reused is cgroup and reused.is_empty() and not reused.is_frozen()
        usage = reused.usage()
        assert usage.oom_kills == 0 and usage.pids_limit_hits == 0
        assert usage.memory_peak_bytes < 32 << 20
        await pool.release(reused)
    finally:
        await pool.close()
    assert leftovers(worker_id) == []
    assert anomalies.count("failed_remove") == 0
