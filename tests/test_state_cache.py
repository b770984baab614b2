"""The cached reader of state documents: re-checked at most once per period,
re-read only when the file changed, shared by concurrent callers, and never
deciding on a document it could not read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from olactors.state import CachedDoc, Stamp, StateDir, StateUnavailable


class CountingDir(StateDir):
    """A StateDir that counts its stat() checks and reads (the I/O a cache costs)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.stats = 0

    def stamp(self, name: str) -> Stamp:
        self.stats += 1
        return super().stamp(name)


def owners(data: dict[str, Any]) -> dict[str, str]:
    return dict(data.get("owners", {}))


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()  # time moves only when the test jumps it


async def test_sees_another_writers_change_within_the_period(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    here = CountingDir(tmp_path)
    other = StateDir(tmp_path)  # another worker sharing the directory
    cache = CachedDoc(here, "owners", 2.0, owners)
    assert cache.fresh(trio.current_time()) is None  # never read
    assert await cache.current() == {}
    assert cache.fresh(trio.current_time() + 1.9) == {}
    assert cache.fresh(trio.current_time() + 2.0) is None  # due for a check
    other.update("owners", lambda d: {"owners": {"f": "alice"}})
    clock.jump(1.9)
    assert await cache.current() == {}  # within the period: no I/O at all
    stats = here.stats
    assert await cache.current() == {} and here.stats == stats
    clock.jump(0.1)
    assert await cache.current() == {"f": "alice"}
    reads = cache.reads
    clock.jump(2.0)
    assert await cache.current() == {"f": "alice"}
    assert cache.reads == reads  # unchanged stamp: stat only, no re-read


async def test_accept_takes_a_local_change_at_once(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    sd = StateDir(tmp_path)
    cache = CachedDoc(sd, "owners", 60.0, owners)
    assert await cache.current() == {}
    stored = sd.update("owners", lambda d: {"owners": {"g": "bob"}})
    assert cache.accept(stored) == {"g": "bob"}
    assert await cache.current() == {"g": "bob"}
    clock.jump(60)
    reads = cache.reads
    assert await cache.current() == {"g": "bob"} and cache.reads == reads


async def test_concurrent_callers_share_one_check(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    sd = CountingDir(tmp_path)
    cache = CachedDoc(sd, "owners", 1.0, owners)
    await cache.current()
    clock.jump(1.0)
    before = sd.stats
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(cache.current)
    assert sd.stats == before + 1


async def test_unreadable_document(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    sd = StateDir(tmp_path)
    (tmp_path / "owners.json").write_text("{half")
    cache = CachedDoc(sd, "owners", 1.0, owners)
    with pytest.raises(StateUnavailable) as info:
        await cache.current()
    assert info.value.status == 503 and info.value.code == "state_unavailable"
    assert cache.read_errors == 1
    (tmp_path / "owners.json").unlink()  # the operator repairs it
    sd.update("owners", lambda d: {"owners": {"f": "alice"}})
    clock.jump(1.0)
    assert await cache.current() == {"f": "alice"}
    (tmp_path / "owners.json").write_text("[1]")  # replaced by something broken
    clock.jump(1.0)
    assert await cache.current() == {"f": "alice"}  # the last good copy
    assert cache.read_errors == 2
