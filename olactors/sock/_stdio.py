"""A sandbox's stdout and stderr: two pipes the worker reads, per call or into its log.

Every process of a sandbox writes fd 1 and fd 2 to the write ends of two
pipes (a fresh sandbox gets them from ``native.spawn``, a forked one from
its zygote, which passes on what the worker sent over SCM_RIGHTS; children
the function starts inherit them).  The worker keeps the non-blocking read
ends.  A reader task per stream moves what arrives into the current sink:
the call in progress (:meth:`SandboxStdio.begin_call`) or the sandbox's log.

Attribution is exact at the call's two edges:

* :meth:`begin_call` first drains what is already in the pipes into the log
  (written before the call started);
* a pipe write is complete when ``write`` returns, and the runtime flushes
  its streams before it answers, so when the answer (or the connection's
  end, for a sandbox that died) has arrived everything the call wrote is in
  the pipes or already read: :meth:`end_call` drains it without blocking,
  then closes the capture.  Later writes (a thread, a child process still
  running) go to the log.

Bounded: a capture keeps ``max_output_bytes`` per stream; once a sink keeps
no more, bytes are moved to ``/dev/null`` by ``splice`` (never copied into
the worker) and only counted.  A reader takes one pipe's worth per wakeup,
so a sandbox that prints without end costs the worker a bounded share of
its loop, never its memory.
"""

from __future__ import annotations

import errno
import os
import select

import trio

from .._records import NO_OUTPUT, CallOutput
from .._secrets import Redactor
from ._output import CallCapture, SandboxLog, Sink, Stream

#: Bytes read per ``read``: a default pipe's capacity.
CHUNK = 65536
#: A drain after a call takes at most this much per stream: more than the
#: largest pipe a sandbox can make (``/proc/sys/fs/pipe-max-size``, 1 MiB),
#: so it takes whatever the call left and never loops on a writer that goes
#: on and on.
DRAIN_LIMIT = 1 << 20

_devnull_fd = -1


def _devnull() -> int:
    global _devnull_fd
    if _devnull_fd < 0:
        _devnull_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return _devnull_fd


class SandboxStdio:
    """The read ends of one sandbox's stdout and stderr pipes, and their sinks.

    Lifecycle: created (pipes open) → :meth:`write_fds` handed to the
    sandbox's first process, then :meth:`close_write_ends` → reader tasks
    (:meth:`read`, one per stream, in the pool's nursery) → :meth:`close`
    once the sandbox's processes are gone (drains into the log, closes the
    read ends; the readers then return).  A reader also ends at end of file
    (every writer gone) or when cancelled, closing its read end.
    """

    def __init__(
        self, log: SandboxLog, max_output_bytes: int, redactor: Redactor | None = None
    ) -> None:
        self.log = log
        self.max_output_bytes = max_output_bytes
        #: Replaces the sandbox's secret values in each call's output (its log has its own).
        self.redactor = redactor if redactor else None
        self._read_fds: dict[Stream, int] = {}
        self._write_fds: dict[Stream, int] = {}
        self._streams: dict[int, Stream] = {}  # read end -> its stream
        self._poll = select.poll()  # both read ends: one syscall tells which hold data
        self._sink: Sink = log
        self._call: CallCapture | None = None
        self._capture = CallCapture(max_output_bytes)  # every call's, cleared at its start
        self._last: CallOutput = NO_OUTPUT
        try:
            for stream in Stream:
                r, w = os.pipe2(os.O_CLOEXEC)
                self._read_fds[stream], self._write_fds[stream] = r, w
                self._streams[r] = stream
                os.set_blocking(r, False)  # the sandbox's end stays blocking
                self._poll.register(r, select.POLLIN)
        except OSError:
            self.close_write_ends()
            self.close()
            raise

    # ------------------------------------------------------------ the pipes
    @property
    def write_fds(self) -> tuple[int, int]:
        """The write ends (stdout, stderr), for the sandbox's first process."""
        return self._write_fds[Stream.STDOUT], self._write_fds[Stream.STDERR]

    def close_write_ends(self) -> None:
        """Close the worker's copies of the write ends (once the sandbox has
        its own), so end of file means every writer in the sandbox is gone."""
        while self._write_fds:
            os.close(self._write_fds.popitem()[1])

    async def read(self, stream: Stream) -> None:
        """Move what arrives on ``stream`` into the current sink until end of
        file, :meth:`close` or cancellation."""
        try:
            while (fd := self._read_fds.get(stream, -1)) >= 0:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    return  # closed by close()
                if not self._pump(stream, CHUNK):
                    return  # end of file
        finally:
            self._close_read_end(stream)

    def _pump(self, stream: Stream, limit: int) -> bool:
        """Move up to ``limit`` bytes of ``stream`` to the current sink without
        blocking; False at end of file."""
        fd = self._read_fds.get(stream, -1)
        if fd < 0:
            return False
        sink = self._sink
        while limit > 0:
            room = sink.room(stream)
            try:
                if room == 0:
                    n = os.splice(fd, _devnull(), limit, flags=os.SPLICE_F_NONBLOCK)
                    if n:
                        sink.dropped(stream, n)
                else:
                    data = os.read(fd, min(limit, CHUNK))
                    n = len(data)
                    if n:
                        sink.feed(stream, data)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return False  # e.g. EBADF: treated as the end
            if n == 0:
                return False
            limit -= n
        return True

    def drain(self) -> None:
        """Move what is in the pipes now into the current sink (no blocking,
        at most DRAIN_LIMIT bytes per stream)."""
        if not self._read_fds:
            return
        for fd, _events in self._poll.poll(0):  # usually none: one cheap syscall
            stream = self._streams[fd]
            if not self._pump(stream, DRAIN_LIMIT):
                self._close_read_end(stream)

    def _close_read_end(self, stream: Stream) -> None:
        fd = self._read_fds.pop(stream, -1)
        if fd >= 0:
            self._poll.unregister(fd)  # before the number can be reused
            del self._streams[fd]
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def close(self) -> None:
        """Drain into the current sink, close the read ends and the log
        (idempotent).  Call once the sandbox's processes are gone."""
        self.drain()
        self.end_call()
        for stream in list(self._read_fds):
            self._close_read_end(stream)
        self.log.close()

    # ------------------------------------------------------------- the calls
    def begin_call(self) -> None:
        """From now on the sandbox's output belongs to a new call; what was
        written before goes to the log first."""
        self.drain()
        self._capture.clear()
        self._call = self._capture
        self._sink = self._call
        self._last = NO_OUTPUT

    def end_call(self, blocked_syscalls: tuple[str, ...] = ()) -> CallOutput:
        """Close the current call's capture (after draining what it wrote) and
        return it (NO_OUTPUT when no call is in progress); later output goes
        to the log."""
        call = self._call
        if call is None:
            return NO_OUTPUT
        self.drain()
        self._call = None
        self._sink = self.log
        self._last = call.finish(blocked_syscalls, self.redactor)
        call.clear()  # its bytes are copied into the output: the capture keeps none
        return self._last

    def call_output(self) -> CallOutput:
        """The last call's output (NO_OUTPUT before the first, or during a call)."""
        return self._last

    @property
    def in_call(self) -> bool:
        return self._call is not None
