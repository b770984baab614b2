"""Call records on disk: one SQLite database (stdlib sqlite3, WAL) per worker.

:class:`RecordStore` is synchronous and meant to run in a worker thread
(``trio.to_thread.run_sync``), never on the trio thread.  The recorder
(:mod:`._recorder`) is its only writer and uses it serially; every read opens
its own short-lived connection, so readers (the admin API) never wait on the
writer (WAL: readers see the last committed batch).

Schema: one row per record, keyed by ``(function, request_id)``; ``seq``
(an autoincrement) orders them, newest last; ``started`` is the call's start
in seconds since the epoch (for retention by age); ``owner`` the function's
owner when the call was admitted (NULL: none; indexed with ``started``, the
unit usage is reported by); ``data`` is the record's JSON without its
output, which sits in ``stdout`` and ``stderr``.

A database made before a column existed is migrated when a connection opens
it (:func:`migrate`: the column is added under SQLite's write lock, old rows
hold NULL there).

``connect`` is the seam tests use to inject a failing disk.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from .._errors import OlactorsError
from .._records import CallRecord

Connect = Callable[[Path], sqlite3.Connection]

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    request_id TEXT NOT NULL,
    started REAL NOT NULL,
    failed INTEGER NOT NULL,
    data TEXT NOT NULL,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    owner TEXT,
    UNIQUE (function, request_id)
);
CREATE INDEX IF NOT EXISTS records_by_function ON records (function, seq);
CREATE INDEX IF NOT EXISTS records_by_age ON records (started);
"""
#: Columns added after the first schema, with their SQL type (a database made
#: before them gets them from :func:`migrate`), and the indexes that use them.
ADDED_COLUMNS = (("owner", "TEXT"),)
LATER_INDEXES = "CREATE INDEX IF NOT EXISTS records_by_owner ON records (owner, started);"


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {row[1] for row in conn.execute("PRAGMA table_info(records)")}


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, adding the columns a database made by an older
    version lacks.  The check is repeated under the write lock (``BEGIN
    IMMEDIATE``), so two connections migrating at once add each column once."""
    conn.executescript(SCHEMA)
    if not {name for name, _ in ADDED_COLUMNS} <= _columns(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            present = _columns(conn)
            for name, sql_type in ADDED_COLUMNS:
                if name not in present:
                    conn.execute(f"ALTER TABLE records ADD COLUMN {name} {sql_type}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.executescript(LATER_INDEXES)


class RecordNotFound(OlactorsError):
    """No record of that request id for that function (kept no longer, or never made)."""

    code = "record_not_found"
    status = 404


#: Most records one ``GET /debug/<fn>`` returns.
MAX_LIST = 1000


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode that may be handed between threads (used serially)."""
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def epoch_of(started_at: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp (``...Z`` or ``+00:00``)."""
    return datetime.fromisoformat(started_at.replace("Z", "+00:00")).timestamp()


def _row_json(data: str, stdout: str | None, stderr: str | None) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(data)
    if stdout is not None:
        record["stdout"] = stdout
    if stderr is not None:
        record["stderr"] = stderr
    return record


class RecordStore:
    """The records database at ``path`` (created on first use, kept across restarts)."""

    def __init__(self, path: Path, *, connect: Connect = connect) -> None:
        self.path = path
        self._connect = connect
        self._writer: sqlite3.Connection | None = None

    # ------------------------------------------------------------ writing
    def _open_migrated(self) -> sqlite3.Connection:
        """A new connection to the database, its schema brought up to date."""
        conn = self._connect(self.path)
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._open_migrated()
        return self._writer

    def open(self) -> None:
        """Create the database and its schema now (else on the first write)."""
        self._conn()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _reset(self) -> None:
        """Drop the writer after an error: the next batch reconnects."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except sqlite3.Error:
                pass

    def write(self, records: Iterable[CallRecord]) -> int:
        """Insert ``records`` in one transaction; the number inserted.

        A record whose ``(function, request_id)`` is already stored is skipped
        (the worker never hands out an id twice per function; this only guards
        the database).  Raises :class:`sqlite3.Error` (disk full, read-only,
        locked): nothing of the batch is kept then.
        """
        rows = []
        for record in records:
            data = record.as_json()
            stdout, stderr = data.pop("stdout"), data.pop("stderr")
            rows.append(
                (
                    record.function,
                    record.request_id,
                    epoch_of(record.started_at),
                    int(record.failed),
                    json.dumps(data),
                    stdout,
                    stderr,
                    record.owner,
                )
            )
        try:
            conn = self._conn()
            with conn:
                conn.execute("BEGIN")
                before = conn.total_changes
                conn.executemany(
                    "INSERT OR IGNORE INTO records "
                    "(function, request_id, started, failed, data, stdout, stderr, owner) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                return conn.total_changes - before
        except sqlite3.Error:
            self._reset()
            raise

    def apply_retention(self, now: float, keep_per_function: int, keep_s: float) -> int:
        """Delete records older than ``keep_s`` seconds before ``now`` (epoch
        seconds) and, per function, all but the newest ``keep_per_function``;
        the number deleted.  Raises :class:`sqlite3.Error`."""
        try:
            conn = self._conn()
            with conn:
                conn.execute("BEGIN")
                before = conn.total_changes
                conn.execute("DELETE FROM records WHERE started < ?", (now - keep_s,))
                distinct = conn.execute("SELECT DISTINCT function FROM records")
                functions = [row[0] for row in distinct]
                for function in functions:
                    conn.execute(
                        "DELETE FROM records WHERE function = ? AND seq <= ("
                        " SELECT seq FROM records WHERE function = ?"
                        " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                        (function, function, keep_per_function),
                    )
                return conn.total_changes - before
        except sqlite3.Error:
            self._reset()
            raise

    # ------------------------------------------------------------ reading
    def recent(
        self, function: str, limit: int, *, errors: bool = False, output: bool = False
    ) -> list[dict[str, Any]]:
        """``function``'s newest records first (at most ``limit``, capped at
        :data:`MAX_LIST`), as JSON; only failed ones with ``errors``; without
        ``stdout``/``stderr`` unless ``output``."""
        limit = max(0, min(limit, MAX_LIST))
        where = "function = ?" + (" AND failed = 1" if errors else "")
        columns = "data, stdout, stderr" if output else "data, NULL, NULL"
        conn = self._open_migrated()
        try:
            rows = conn.execute(
                f"SELECT {columns} FROM records WHERE {where} ORDER BY seq DESC LIMIT ?",
                (function, limit),
            ).fetchall()
        finally:
            conn.close()
        return [_row_json(*row) for row in rows]

    def get(self, function: str, request_id: str) -> CallRecord | None:
        """The record of ``request_id`` in ``function``, or None."""
        conn = self._open_migrated()
        try:
            row = conn.execute(
                "SELECT data, stdout, stderr FROM records WHERE function = ? AND request_id = ?",
                (function, request_id),
            ).fetchone()
        finally:
            conn.close()
        return None if row is None else CallRecord.from_json(_row_json(*row))

    def recent_ids(self, per_function: int) -> dict[str, list[str]]:
        """Per function, the request ids of its newest ``per_function``
        records, oldest first (seeds :class:`~.RecentIds` at start)."""
        conn = self._open_migrated()
        try:
            rows = conn.execute(
                "SELECT function, request_id FROM ("
                " SELECT function, request_id, seq,"
                "  ROW_NUMBER() OVER (PARTITION BY function ORDER BY seq DESC) AS n"
                " FROM records) WHERE n <= ? ORDER BY seq",
                (per_function,),
            ).fetchall()
        finally:
            conn.close()
        out: dict[str, list[str]] = {}
        for function, request_id in rows:
            out.setdefault(function, []).append(request_id)
        return out

    def count(self, function: str | None = None) -> int:
        conn = self._open_migrated()
        try:
            if function is None:
                row = conn.execute("SELECT COUNT(*) FROM records").fetchone()
            else:
                row = conn.execute(
                    "SELECT COUNT(*) FROM records WHERE function = ?", (function,)
                ).fetchone()
        finally:
            conn.close()
        return int(row[0])
