"""Call records (issue 12, sections 4-5) without root: the SQLite store
(batching, retention by count and age, restart persistence, a failing disk),
the recorder actor in virtual time, request-id rules, the admin dispatch of
``/debug`` paths, and records made by a worker on the simulated pool."""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from olactors._causes import Cause, CauseCode
from olactors._config import build_config
from olactors._errors import FunctionNotFound
from olactors._records import (
    CallOutput,
    CallRecord,
    CallTrace,
    ColdReason,
    FinishedCall,
    StreamCapture,
)
from olactors.http.admin import ENDPOINTS
from olactors.records import (
    RecentIds,
    RecorderSettings,
    RecordNotFound,
    RecordStore,
    run_recorder,
    valid_request_id,
)
from olactors.records._store import connect
from olactors.sock import Invocation, InvocationResult
from olactors.sock.simulated import SimulatedBehaviour, open_simulated_pool
from olactors.worker import open_worker

from .conftest import write_function
from .thread_aware_clock import thread_aware_clock

T0 = 1_800_000_000.0  # epoch seconds of the first record


def stamp(epoch: float) -> str:
    from datetime import UTC, datetime

    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def rec(n: int, function: str = "fn", *, status: int = 200, at: float | None = None) -> CallRecord:
    failed = status >= 400
    return CallRecord(
        request_id=f"r{n}",
        function=function,
        version="v1",
        status=status,
        cause=Cause.of(CauseCode.OOM, limit_mb=128) if failed else None,
        blocked_syscalls=("mount",) if failed else (),
        started_at=stamp(T0 + n if at is None else at),
        duration_ms=1.5,
        queue_ms=0.25,
        cold=n == 0,
        cold_reason=ColdReason.FIRST if n == 0 else None,
        sandbox="sb1",
        cpu_ms=1.0,
        memory_peak_mb=12.0,
        memory_limit_mb=128,
        stdout=f"out {n}\n",
        stderr=f"err {n}\n",
    )


# ------------------------------------------------------------------ the store
def test_store_round_trip_newest_first_and_errors_only(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.db")
    assert store.write([rec(0), rec(1, status=502), rec(2), rec(0, "other")]) == 4
    assert store.get("fn", "r1") == rec(1, status=502)
    assert store.get("fn", "nope") is None and store.get("nobody", "r1") is None
    listed = store.recent("fn", 10)
    assert [r["request_id"] for r in listed] == ["r2", "r1", "r0"]
    assert "stdout" not in listed[0] and listed[1]["cause"]["code"] == "oom"
    assert [r["request_id"] for r in store.recent("fn", 10, errors=True)] == ["r1"]
    assert [r["request_id"] for r in store.recent("fn", 2)] == ["r2", "r1"]
    assert store.recent("fn", 1, output=True)[0]["stdout"] == "out 2\n"
    # The same (function, request id) twice keeps the first record.
    assert store.write([rec(1)]) == 0 and store.get("fn", "r1") == rec(1, status=502)
    assert store.write([]) == 0
    store.close()


def test_store_is_wal_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    store = RecordStore(path)
    store.write([rec(0), rec(1)])
    store.close()
    again = RecordStore(path)
    assert again.get("fn", "r1") == rec(1)
    assert again.recent_ids(10) == {"fn": ["r0", "r1"]}
    assert again.recent_ids(1) == {"fn": ["r1"]}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_retention_by_count_keeps_the_newest_per_function(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.db")
    store.write([rec(n) for n in range(10)] + [rec(n, "other") for n in range(3)])
    assert store.apply_retention(T0 + 100, keep_per_function=4, keep_s=1e9) == 6
    assert [r["request_id"] for r in store.recent("fn", 100)] == ["r9", "r8", "r7", "r6"]
    assert store.count("other") == 3
    assert store.apply_retention(T0 + 100, keep_per_function=4, keep_s=1e9) == 0


def test_retention_by_age(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.db")
    store.write([rec(n, at=T0 + 10 * n) for n in range(5)])  # at T0, T0+10, ..., T0+40
    assert store.apply_retention(T0 + 45, keep_per_function=1000, keep_s=20) == 3
    assert [r["request_id"] for r in store.recent("fn", 100)] == ["r4", "r3"]


class FailingDisk:
    """A connection factory whose connections fail every write while ``full``."""

    def __init__(self) -> None:
        self.full = True
        self.connects = 0

    def __call__(self, path: Path) -> sqlite3.Connection:
        self.connects += 1
        conn = connect(path)
        if self.full:  # the schema is there; every write to the records fails
            conn.set_authorizer(
                lambda action, table, *_: (
                    sqlite3.SQLITE_DENY
                    if action in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_DELETE)
                    and table == "records"
                    else sqlite3.SQLITE_OK
                )
            )
        return conn


def test_a_failing_disk_raises_and_the_store_reconnects(tmp_path: Path) -> None:
    disk = FailingDisk()
    store = RecordStore(tmp_path / "records.db", connect=disk)
    with pytest.raises(sqlite3.Error):
        store.write([rec(0)])
    disk.full = False
    assert store.write([rec(1)]) == 1  # a fresh connection after the failure
    assert store.count() == 1 and disk.connects == 3  # writer, writer again, the count


def test_a_read_only_database_fails_writes(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    RecordStore(path).write([rec(0)])
    read_only = RecordStore(
        path,
        connect=lambda p: sqlite3.connect(
            f"file:{p}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        ),
    )
    with pytest.raises(sqlite3.Error):
        read_only.write([rec(1)])
    assert RecordStore(path).count() == 1


# --------------------------------------------------------------- the recorder
@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """Virtual time that jumps only after 20 ms of real idleness and never while
    a worker thread runs: the recorder writes in threads."""
    return thread_aware_clock(monkeypatch)


async def until(predicate) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(600):  # virtual seconds
        while not predicate():
            await trio.sleep(0.1)


async def test_recorder_batches_and_flushes_on_stop(tmp_path: Path, clock: trio.abc.Clock) -> None:
    store = RecordStore(tmp_path / "records.db")
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_recorder, store, RecorderSettings(batch_max=3))
        for n in range(7):
            assert ref.submit(rec(n))  # no await: all seven queued before the actor runs
        await until(lambda: ref.counts.written == 7)
        assert ref.counts.batches == 3  # 3 + 3 + 1
        ref.submit(rec(7))
        nursery.cancel_scope.cancel()  # stopping writes what is still queued
    assert ref.counts.written == 8
    assert store.count("fn") == 8


async def test_a_full_queue_drops_records_never_blocks(
    tmp_path: Path, clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path / "records.db")
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_recorder, store, RecorderSettings(queue_max=2))
        accepted = [ref.submit(rec(n)) for n in range(5)]
        assert accepted == [True, True, False, False, False]
        assert ref.counts.dropped == 3 and ref.stats()["queued"] == 2
        await until(lambda: ref.counts.written == 2)
        nursery.cancel_scope.cancel()
    assert "dropped 1 so far" in caplog.text  # logged (once: rate-limited)
    assert caplog.text.count("dropped") == 1


async def test_queued_output_is_bounded_in_bytes(tmp_path: Path, clock: trio.abc.Clock) -> None:
    store = RecordStore(tmp_path / "records.db")
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_recorder, store, RecorderSettings(queue_max_bytes=30))
        big = replace(rec(9), stdout="x" * 31)
        assert [ref.submit(r) for r in (rec(0), rec(1), rec(2), big)] == [True, True, False, False]
        assert ref.counts.queued_bytes == 24 and ref.counts.dropped == 2
        await until(lambda: ref.counts.written == 2)
        assert ref.counts.queued_bytes == 0 and ref.submit(rec(3))
        nursery.cancel_scope.cancel()


async def test_a_failing_disk_degrades_recording_and_counts_it(
    tmp_path: Path, clock: trio.abc.Clock
) -> None:
    disk = FailingDisk()
    store = RecordStore(tmp_path / "records.db", connect=disk)
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_recorder, store)
        ref.submit(rec(0))
        ref.submit(rec(1))
        await until(lambda: ref.counts.failed == 2)
        assert ref.counts.write_errors == 1
        assert ref.counts.written == 0 and "not authorized" in (ref.counts.last_error or "")
        disk.full = False  # the disk recovers: recording resumes
        ref.submit(rec(2))
        await until(lambda: ref.counts.written == 1)
        nursery.cancel_scope.cancel()
    assert store.get("fn", "r2") is not None and store.get("fn", "r0") is None


async def test_recorder_applies_retention_periodically(
    tmp_path: Path, clock: trio.abc.Clock
) -> None:
    store = RecordStore(tmp_path / "records.db")
    settings = RecorderSettings(keep_per_function=3, retention_interval_s=60)
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(
            lambda task_status: run_recorder(
                store, settings, wall_clock=lambda: T0 + 100, task_status=task_status
            )
        )
        for n in range(5):
            ref.submit(rec(n))
        await until(lambda: ref.counts.written == 5)
        assert store.count("fn") == 5  # not on every insert
        await until(lambda: ref.counts.retention_deleted == 2)
        assert store.count("fn") == 3 and trio.current_time() >= 60
        nursery.cancel_scope.cancel()


async def test_a_burst_of_records_triggers_retention_early(
    tmp_path: Path, clock: trio.abc.Clock
) -> None:
    store = RecordStore(tmp_path / "records.db")
    settings = RecorderSettings(
        keep_per_function=3, retention_interval_s=1e9, retention_every=5, batch_max=5
    )
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(
            lambda task_status: run_recorder(
                store, settings, wall_clock=lambda: T0 + 100, task_status=task_status
            )
        )
        for n in range(10):
            ref.submit(rec(n))
        await until(lambda: ref.counts.written == 10 and store.count("fn") == 3)
        assert trio.current_time() < 1e9
        nursery.cancel_scope.cancel()


async def test_the_recorder_makes_a_finished_calls_record(
    tmp_path: Path, clock: trio.abc.Clock
) -> None:
    """The request's task queues only the trace and the answer; the recorder
    makes the record (timestamp, decoded output), the same as the trace's own,
    and bounds its queue by the output the finished call holds."""
    trace = CallTrace(queue_ms=0.5, version="v1", sandbox="sb1", cpu_ms=2.0)
    trace.output = CallOutput(StreamCapture(b"hi\n"), StreamCapture(b"x" * 20, dropped=3))
    cause = Cause.of(CauseCode.OOM, limit_mb=128)
    call = FinishedCall(trace, "r1", "fn", 502, T0 + 0.1234, 7.25, cause)
    assert call.output_bytes == 23
    assert call.record() == trace.record("r1", "fn", 502, stamp(T0 + 0.1234), 7.25, cause)
    assert call.record().started_at == "2027-01-15T08:00:00.123Z"
    store = RecordStore(tmp_path / "records.db")
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_recorder, store, RecorderSettings(queue_max_bytes=30))
        assert ref.submit(call) and ref.counts.queued_bytes == 23
        assert not ref.submit(FinishedCall(trace, "r2", "fn", 200, T0, 1.0))  # 46 > 30 bytes
        await until(lambda: ref.counts.written == 1)
        assert ref.counts.queued_bytes == 0
        nursery.cancel_scope.cancel()
    assert store.get("fn", "r1") == call.record()


# ---------------------------------------------------------------- request ids
@pytest.mark.parametrize(
    "value, ok",
    [
        ("abc-DEF_1.2", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        (None, False),
        ("a b", False),
        ("a/b", False),
        ("caf\u00e9", False),
        ("a\n", False),
    ],
)
def test_request_id_format(value: str | None, ok: bool) -> None:
    assert valid_request_id(value) is ok


def test_a_request_id_is_unique_per_function() -> None:
    ids = RecentIds(3, {"fn": ["old"]})
    assert ids.claim("fn", "lb-1") == "lb-1"
    assert ids.claim("other", "lb-1") == "lb-1"  # per function
    fresh = ids.claim("fn", "lb-1")  # already used for fn: the worker makes its own
    assert fresh != "lb-1" and len(fresh) == 32
    assert ids.claim("fn", "old") != "old"  # seeded from the store
    assert ids.claim("fn", "bad id") != "bad id"
    assert len(ids.claim("fn", None)) == 32
    # Bounded: at most 3 per function, whatever the number of calls.
    for n in range(100):
        ids.claim("fn", f"id{n}")
    assert len(ids) == 3 + 1 and ids.claim("fn", "lb-1") == "lb-1"


# ------------------------------------------------------------- admin dispatch
def route(raw: bytes) -> tuple[str, tuple[bytes, ...]] | None:
    for endpoint in ENDPOINTS:
        args = endpoint.match(raw)
        if args is not None:
            return endpoint.template, args
    return None


def test_debug_paths_dispatch() -> None:
    assert route(b"/debug/fn") == ("/debug/{name}", (b"fn",))
    assert route(b"/debug/fn/r1") == ("/debug/{name}/{request_id}", (b"fn", b"r1"))
    assert route(b"/debug/fn/r1/stdout") == ("/debug/{name}/{request_id}/stdout", (b"fn", b"r1"))
    assert route(b"/debug/fn/r1/error") == ("/debug/{name}/{request_id}/error", (b"fn", b"r1"))
    assert route(b"/debug/fn/r1/other") == ("/debug/{name}", (b"fn/r1/other",))  # then 404
    assert route(b"/registry/a/b") == ("/registry/{name}", (b"a/b",))  # unchanged: 400
    assert route(b"/stats") == ("/stats", ())


# ------------------------------------------------------------- the trace
def test_a_trace_makes_the_record() -> None:
    trace = CallTrace()
    assert not trace.reached_function
    trace.queue_ms, trace.version, trace.cold = 1.23456, "v2", True
    trace.cold_reason = ColdReason.SCALED_UP
    trace.output = CallOutput(StreamCapture(b"hi\n"), StreamCapture(b"x", dropped=5), ("mount",))
    assert trace.reached_function
    cause = Cause.of(CauseCode.TIMEOUT, limit_s=1.0)
    record = trace.record("r1", "fn", 504, "2026-01-01T00:00:00.000Z", 12.0, cause)
    assert record.cause == cause and record.queue_ms == 1.235 and record.status == 504
    assert record.stdout == "hi\n" and "5 more bytes dropped" in record.stderr
    assert record.blocked_syscalls == ("mount",) and record.cold_reason is ColdReason.SCALED_UP
    assert CallRecord.from_json(record.as_json()) == record
    ok = trace.record("r2", "fn", 200, "2026-01-01T00:00:00.000Z", 1.0, cause)
    assert ok.cause is None  # a success has no cause
    assert replace(record, owner=None) == record


# ------------------------------------------- a worker on the simulated pool
async def boom(sandbox, inv: Invocation) -> InvocationResult:
    if inv.body == b"boom":
        return InvocationResult(502, (), b"bad")
    return InvocationResult(200, (), inv.body or b"null")


async def test_a_worker_records_calls_that_reached_the_function(tmp_path: Path) -> None:
    write_function(tmp_path / "registry", "fn", "def f(event):\n    return event\n")
    config = build_config(None, ["registry.cache_s=1.0", "memory.pool_mb=4096"])
    behaviour = SimulatedBehaviour(rng=random.Random(1))
    behaviour.handler = boom
    async with open_simulated_pool(behaviour) as pool:
        async with open_worker(config, tmp_path, pool=pool) as worker:
            rid = worker.claim_request_id("fn", "lb.1")
            assert rid == "lb.1"
            await worker.invoke("fn", Invocation(method="POST", body=b"1"), rid)
            await worker.invoke("fn", Invocation(method="POST", body=b"boom"), "second")
            with pytest.raises(FunctionNotFound):
                await worker.invoke("ghost", Invocation(), "third")  # not recorded
            with trio.fail_after(10):
                while worker.recorder is not None and worker.recorder.counts.written < 2:
                    await trio.sleep(0.01)
            first = await worker.record("fn", "lb.1")
            assert first.status == 200 and first.cause is None and first.cold
            assert first.queue_ms >= 0 and first.version is not None
            listed = await worker.records("fn", 10)
            assert [r["request_id"] for r in listed] == ["second", "lb.1"]
            assert [r["request_id"] for r in await worker.records("fn", 10, errors=True)] == [
                "second"
            ]
            assert worker.claim_request_id("fn", "lb.1") != "lb.1"
            with pytest.raises(RecordNotFound):
                await worker.record("fn", "nope")
            with pytest.raises(FunctionNotFound):
                await worker.records("ghost", 10)
            stats = (await worker.stats())["records"]
            assert stats["written"] == 2 and stats["dropped"] == 0 and stats["failed"] == 0
    # Kept across a restart, and its id is still taken.
    async with open_simulated_pool(behaviour) as pool:
        async with open_worker(config, tmp_path, pool=pool) as worker:
            assert (await worker.record("fn", "lb.1")).status == 200
            assert worker.claim_request_id("fn", "lb.1") != "lb.1"


#: The records table as the first schema made it (before ``owner``).
FIRST_SCHEMA = """
CREATE TABLE records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    request_id TEXT NOT NULL,
    started REAL NOT NULL,
    failed INTEGER NOT NULL,
    data TEXT NOT NULL,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    UNIQUE (function, request_id)
);
CREATE INDEX records_by_function ON records (function, seq);
CREATE INDEX records_by_age ON records (started);
"""


def test_an_older_database_gains_the_owner_column(tmp_path: Path) -> None:
    """A records.db made before owners existed is migrated in place: its rows
    stay readable (owner null) and new records keep their owner in the column."""
    path = tmp_path / "records.db"
    old = sqlite3.connect(path)
    old.executescript(FIRST_SCHEMA)
    data = rec(1).as_json()
    stdout, stderr = data.pop("stdout"), data.pop("stderr")
    del data["owner"]  # the old JSON had no owner either
    old.execute(
        "INSERT INTO records (function, request_id, started, failed, data, stdout, stderr) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("fn", "r1", T0 + 1, 0, json.dumps(data), stdout, stderr),
    )
    old.commit()
    old.close()

    reader = RecordStore(path)
    assert reader.get("fn", "r1") == rec(1)  # a reader migrates too
    store = RecordStore(path)
    store.open()
    assert store.write([replace(rec(2), owner="alice")]) == 1
    assert store.get("fn", "r2").owner == "alice"  # type: ignore[union-attr]
    assert store.get("fn", "r1").owner is None  # type: ignore[union-attr]
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT request_id, owner FROM records ORDER BY seq").fetchall()
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(records)")}
    conn.close()
    assert rows == [("r1", None), ("r2", "alice")]
    assert "records_by_owner" in indexes
    store.close()
    again = RecordStore(path)  # migrating a migrated database changes nothing
    again.open()
    assert again.count() == 2
    again.close()


def test_a_trace_keeps_the_owner() -> None:
    trace = CallTrace(queue_ms=0.5, owner="alice")
    record = trace.record("r1", "fn", 200, stamp(T0), 1.0)
    assert record.owner == "alice" and record.as_json()["owner"] == "alice"
    assert CallTrace(queue_ms=0.5).record("r2", "fn", 200, stamp(T0), 1.0).owner is None
