"""Where a sandbox's stdout and stderr go: a call's bounded capture, or the
sandbox's bounded log (no trio; the log writes a file).

A sandbox's fd 1 and fd 2 are two pipes the worker reads (see ``_stdio.py``).
What is read goes to the *sink* current at that moment: the call in progress
(:class:`CallCapture`, each stream cut at ``debug.max_output_bytes``) or,
between calls (import time, threads and child processes that outlive a call),
the sandbox's :class:`SandboxLog`.  Both keep a bounded number of bytes and
count the rest, so the worker's memory stays flat whatever a sandbox prints.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Protocol

from .._records import NO_OUTPUT, CallOutput, StreamCapture
from .._secrets import Redactor

#: Each file of a sandbox's log holds at most this many bytes; the log keeps
#: the current file and the one before it (``log`` and ``log.1``).
LOG_FILE_BYTES = 128 * 1024


class Stream(enum.IntEnum):
    """A captured stream, valued as its fd number in the sandbox."""

    STDOUT = 1
    STDERR = 2


class Sink(Protocol):
    """Takes what a sandbox wrote to one of its streams."""

    def room(self, stream: Stream) -> int | None:
        """How many more bytes of ``stream`` it keeps (None: no limit; 0: it
        only counts them, so a reader may discard them without reading)."""
        ...

    def feed(self, stream: Stream, data: bytes) -> None:
        """Keep what fits of ``data``; count the rest."""
        ...

    def dropped(self, stream: Stream, n: int) -> None:
        """``n`` bytes of ``stream`` were discarded unread (``room`` was 0)."""
        ...


class BoundedStream:
    """One stream of one call: the first ``limit`` bytes, and a count of the rest."""

    __slots__ = ("_data", "_dropped", "_limit")

    def __init__(self, limit: int) -> None:
        self._data = bytearray()
        self._dropped = 0
        self._limit = limit

    @property
    def room(self) -> int:
        return self._limit - len(self._data)

    def feed(self, data: bytes) -> None:
        room = self._limit - len(self._data)
        if len(data) <= room:
            self._data += data
        else:
            self._data += data[:room]
            self._dropped += len(data) - room

    def drop(self, n: int) -> None:
        self._dropped += n

    def clear(self) -> None:
        """Empty it for the next call (a fresh buffer only if this one was used:
        a used one keeps its allocation)."""
        if self._data:
            self._data = bytearray()
        self._dropped = 0

    @property
    def empty(self) -> bool:
        return not self._data and not self._dropped

    def capture(self, redactor: Redactor | None = None) -> StreamCapture:
        """What was kept; with ``redactor``, secret values replaced (and the
        beginning of one at the end, when the rest was cut off)."""
        data = bytes(self._data)
        if redactor:
            data = redactor.redact_cut(data) if self._dropped else redactor.redact(data)
        return StreamCapture(data, self._dropped)


class CallCapture:
    """Both streams of one call, each cut at ``limit`` bytes (implements :class:`Sink`)."""

    __slots__ = ("_streams",)

    def __init__(self, limit: int) -> None:
        # indexed by the stream's fd number
        self._streams = (None, BoundedStream(limit), BoundedStream(limit))

    def _stream(self, stream: Stream) -> BoundedStream:
        found = self._streams[stream]
        assert found is not None
        return found

    def room(self, stream: Stream) -> int:
        return self._stream(stream).room

    def feed(self, stream: Stream, data: bytes) -> None:
        self._stream(stream).feed(data)

    def dropped(self, stream: Stream, n: int) -> None:
        self._stream(stream).drop(n)

    def clear(self) -> None:
        """Empty both streams, to capture the next call."""
        _, stdout, stderr = self._streams
        stdout.clear()
        stderr.clear()

    @property
    def empty(self) -> bool:
        """Nothing was written to either stream."""
        _, stdout, stderr = self._streams
        return stdout.empty and stderr.empty

    def finish(
        self, blocked_syscalls: tuple[str, ...] = (), redactor: Redactor | None = None
    ) -> CallOutput:
        """What the call wrote (secret values replaced by ``redactor``), plus
        the syscalls its sandbox blocked meanwhile."""
        if not blocked_syscalls and self.empty:
            return NO_OUTPUT  # the common case, without copies
        return CallOutput(
            self._stream(Stream.STDOUT).capture(redactor),
            self._stream(Stream.STDERR).capture(redactor),
            blocked_syscalls,
        )


class SandboxLog:
    """A sandbox's output outside any call, in ``path`` (both streams
    interleaved as read), bounded on disk (implements :class:`Sink`).

    The file is created on the first write (most sandboxes never print).  When
    it would grow past ``file_bytes`` it becomes ``path.1`` (replacing the
    older one, whose bytes are counted in ``dropped_bytes``) and a new file
    starts, so the log holds the latest ``file_bytes`` to ``2 * file_bytes``
    bytes and never more.  Writes are synchronous appends to a local file.

    With a ``redactor`` (a leaf with secrets) each stream's secret values are
    replaced before they are written; the end of a stream that could be the
    beginning of a value is held back until the next bytes show whether it
    is (and written, redacted, when the log closes).
    """

    def __init__(
        self, path: Path, file_bytes: int = LOG_FILE_BYTES, redactor: Redactor | None = None
    ) -> None:
        self.path = path
        self.file_bytes = file_bytes
        self._redactor = redactor if redactor else None
        self._held: dict[Stream, bytes] = {}
        #: Bytes that left the log (an older file replaced) or never reached it.
        self.dropped_bytes = 0
        self._fd = -1
        self._size = 0
        self._previous = 0  # bytes in path.1
        self._closed = False

    def room(self, stream: Stream) -> int | None:
        return 0 if self._closed else None

    def feed(self, stream: Stream, data: bytes) -> None:
        if self._closed or not data:
            self.dropped_bytes += len(data)
            return
        if self._redactor is not None:
            data = self._redactor.redact(self._held.pop(stream, b"") + data)
            held, _name = self._redactor.partial_tail(data)
            if held:
                self._held[stream], data = data[-held:], data[:-held]
            if not data:
                return
        self._write(data)

    def _write(self, data: bytes) -> None:
        if len(data) > self.file_bytes:  # only its end can stay
            self.dropped_bytes += len(data) - self.file_bytes
            data = data[-self.file_bytes :]
        try:
            if self._fd < 0 or self._size + len(data) > self.file_bytes:
                self._rotate()
            self._size += os.write(self._fd, data)
        except OSError:  # a full disk or a removed dir must not break the reader
            self.dropped_bytes += len(data)

    def dropped(self, stream: Stream, n: int) -> None:
        self.dropped_bytes += n

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.dropped_bytes += self._previous
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._previous = self._size
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)
        self._size = 0

    def tail(self, n: int) -> str:
        """The log's last ``n`` bytes (across both files) as text."""
        chunks: list[bytes] = []
        want = n
        for path in (self.path, self.path.with_name(self.path.name + ".1")):
            if want <= 0:
                break
            try:
                with open(path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - want))
                    chunk = f.read()
            except OSError:
                break
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(reversed(chunks)).decode("utf-8", "replace")

    def close(self) -> None:
        """Stop writing (later bytes are counted as dropped); idempotent."""
        if self._redactor is not None and not self._closed:
            for stream in list(self._held):
                self._write(self._redactor.redact_cut(self._held.pop(stream)))
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
