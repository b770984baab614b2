"""The recorder actor: writes call records to the store in batches, off the request path.

``ref = await nursery.start(run_recorder, store, settings)`` starts it.
:meth:`RecorderRef.submit` never waits: it puts the record, or the
:class:`~olactors._records.FinishedCall` it is to be made from, on a bounded
memory channel (``debug.queue_max`` records, and at most ``queue_max_bytes``
of their output: a record holds up to twice ``debug.max_output_bytes``);
when either is full the record is dropped, counted and logged, and the call
is answered as usual.

The actor takes a record, lets more gather for ``batch_delay_s``, then
makes the records of the finished calls among what is queued (up to
``batch_max``: their output decoded, their timestamps formatted; the
request's own task only queued the call) and writes them in one
transaction in a worker thread.  At start, then every ``retention_interval_s`` or every
``retention_every`` records (whichever comes first; never on each insert),
it applies retention (``debug.keep_per_function``, ``debug.keep_s``), so a
burst of calls grows the database by a bounded amount.  A write that fails
(disk full, read-only, locked) loses that batch, is counted and logged, and
the actor goes on with the next one: recording degrades, calls never do.
On cancellation the actor writes what is still queued (shielded, bounded by
``flush_timeout_s``) before it returns.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from .._records import CallRecord, FinishedCall
from ._store import RecordStore

log = logging.getLogger("olactors.records")


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    queue_max: int = 10000
    queue_max_bytes: int = 16 << 20  # output held by queued records (characters)
    batch_max: int = 500
    #: After a batch's first record, how long to let more gather before writing
    #: (one transaction and one thread hop for many calls, not one per call).
    batch_delay_s: float = 0.1
    keep_per_function: int = 1000
    keep_s: float = 7 * 86400.0
    retention_interval_s: float = 60.0
    retention_every: int = 10000  # ... or after this many records written, if sooner
    log_interval_s: float = 10.0  # at most one "dropped"/"failed" warning this often
    flush_timeout_s: float = 5.0


@dataclass(slots=True)
class RecorderCounts:
    """What ``/stats`` shows under ``records``."""

    written: int = 0
    dropped: int = 0  # the queue was full
    failed: int = 0  # records lost to a failed write
    write_errors: int = 0  # failed writes (batches)
    batches: int = 0
    retention_deleted: int = 0
    retention_errors: int = 0
    last_error: str | None = None
    queued_bytes: int = 0  # output held by queued records
    queued_bytes_peak: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "failed": self.failed,
            "write_errors": self.write_errors,
            "batches": self.batches,
            "retention_deleted": self.retention_deleted,
            "retention_errors": self.retention_errors,
            "last_error": self.last_error,
            "queued_bytes": self.queued_bytes,
            "queued_bytes_peak": self.queued_bytes_peak,
        }


class _RateLimitedLog:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.next_at = -float("inf")

    def warning(self, msg: str, *args: object) -> None:
        now = trio.current_time()
        if now >= self.next_at:
            self.next_at = now + self.interval_s
            log.warning(msg, *args)


#: What the recorder queues: a record, or a finished call to make one of.
Recordable = CallRecord | FinishedCall


def weight(item: Recordable) -> int:
    """What a queued item counts against ``queue_max_bytes``: its output."""
    if isinstance(item, FinishedCall):
        return item.output_bytes
    return len(item.stdout) + len(item.stderr)


def as_record(item: Recordable) -> CallRecord:
    return item.record() if isinstance(item, FinishedCall) else item


class RecorderRef:
    """The recorder's handle: submit records, read its counts."""

    __slots__ = ("_send", "counts", "_warn", "_max_bytes")

    def __init__(
        self,
        send: trio.MemorySendChannel[Recordable],
        counts: RecorderCounts,
        warn: _RateLimitedLog,
        max_bytes: int,
    ) -> None:
        self._send = send
        self.counts = counts
        self._warn = warn
        self._max_bytes = max_bytes

    def submit(self, item: Recordable) -> bool:
        """Queue a record (or the finished call to make it of) for writing
        without waiting; False (counted, logged) when it was dropped because
        the queue is full or the recorder stopped."""
        size = weight(item)
        try:
            if self.counts.queued_bytes + size > self._max_bytes:
                raise trio.WouldBlock
            self._send.send_nowait(item)
            self.counts.queued_bytes += size
            self.counts.queued_bytes_peak = max(
                self.counts.queued_bytes_peak, self.counts.queued_bytes
            )
            return True
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.counts.dropped += 1
            self._warn.warning(
                "call records: dropped %d so far (the write queue is full: the disk is "
                "slow or failing)",
                self.counts.dropped,
            )
            return False

    def stats(self) -> dict[str, Any]:
        return {**self.counts.as_dict(), "queued": self._send.statistics().current_buffer_used}


async def _write(
    store: RecordStore, batch: list[Recordable], counts: RecorderCounts, warn: _RateLimitedLog
) -> None:
    counts.queued_bytes -= sum(weight(item) for item in batch)
    records = [as_record(item) for item in batch]
    try:
        written = await trio.to_thread.run_sync(store.write, records)
    except sqlite3.Error as exc:
        counts.failed += len(batch)
        counts.write_errors += 1
        counts.last_error = f"{type(exc).__name__}: {exc}"
        warn.warning(
            "call records: writing %d records to %s failed (%s); %d lost so far",
            len(batch),
            store.path,
            counts.last_error,
            counts.failed,
        )
        return
    counts.written += written
    counts.batches += 1


async def _retain(
    store: RecordStore,
    settings: RecorderSettings,
    counts: RecorderCounts,
    warn: _RateLimitedLog,
    wall_clock: Callable[[], float],
) -> None:
    try:
        counts.retention_deleted += await trio.to_thread.run_sync(
            store.apply_retention, wall_clock(), settings.keep_per_function, settings.keep_s
        )
    except sqlite3.Error as exc:
        counts.retention_errors += 1
        counts.last_error = f"{type(exc).__name__}: {exc}"
        warn.warning("call records: retention on %s failed (%s)", store.path, counts.last_error)


async def run_recorder(
    store: RecordStore,
    settings: RecorderSettings = RecorderSettings(),
    *,
    wall_clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[RecorderRef] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The recorder actor (see the module docstring).  ``wall_clock`` gives
    the epoch seconds retention by age compares records' ``started_at`` with."""
    send, receive = trio.open_memory_channel[Recordable](settings.queue_max)
    counts = RecorderCounts()
    warn = _RateLimitedLog(settings.log_interval_s)
    next_retention = trio.current_time()  # once at start, then every interval
    batch: list[Recordable] = []  # taken from the queue, not yet written
    retained_at = 0  # records handled when retention last ran
    try:
        task_status.started(RecorderRef(send, counts, warn, settings.queue_max_bytes))
        while True:
            with trio.move_on_at(next_retention):
                batch.append(await receive.receive())
                await trio.sleep(settings.batch_delay_s)
            while batch and len(batch) < settings.batch_max:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            if batch:
                await _write(store, batch, counts, warn)
                batch = []
            since = counts.written + counts.failed - retained_at
            if trio.current_time() >= next_retention or since >= settings.retention_every:
                retained_at = counts.written + counts.failed
                await _retain(store, settings, counts, warn, wall_clock)
                next_retention = trio.current_time() + settings.retention_interval_s
    finally:
        send.close()
        with trio.move_on_after(settings.flush_timeout_s) as scope:
            scope.shield = True
            while True:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            for start in range(0, len(batch), settings.batch_max):
                await _write(store, batch[start : start + settings.batch_max], counts, warn)
            await trio.to_thread.run_sync(store.close)
