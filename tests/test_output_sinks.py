"""The output sinks and pipes without sandboxes: bounded captures, the
rotated log, and call attribution over real pipes (no root needed)."""

from __future__ import annotations

import os

import trio

from olactors._records import NO_OUTPUT
from olactors.sock._output import CallCapture, SandboxLog, Stream
from olactors.sock._stdio import SandboxStdio


def test_a_capture_keeps_the_first_bytes_and_counts_the_rest():
    capture = CallCapture(10)
    capture.feed(Stream.STDOUT, b"12345")
    capture.feed(Stream.STDOUT, b"6789abcdef")
    capture.dropped(Stream.STDOUT, 100)
    capture.feed(Stream.STDERR, b"err")
    assert capture.room(Stream.STDOUT) == 0 and capture.room(Stream.STDERR) == 7
    output = capture.finish(("mount",))
    assert output.stdout.data == b"123456789a" and output.stdout.dropped == 105
    assert output.stderr.data == b"err" and output.stderr.dropped == 0
    assert output.blocked_syscalls == ("mount",)
    assert "105 more bytes dropped" in output.stdout.text()
    assert CallCapture(10).finish() is NO_OUTPUT


def test_the_log_keeps_its_latest_bytes_within_two_files(tmp_path):
    log = SandboxLog(tmp_path / "log", file_bytes=100)
    assert log.tail(50) == ""  # nothing written, no file
    for i in range(100):
        log.feed(Stream.STDOUT, b"line %02d\n" % i)  # 8 bytes each
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk <= 200
    assert log.tail(24) == "line 97\nline 98\nline 99\n"
    assert log.dropped_bytes == 800 - on_disk
    log.feed(Stream.STDERR, b"x" * 1000)  # bigger than a file: its end stays
    assert log.tail(100) == "x" * 100
    assert log.tail(1000).endswith("line 99\n" + "x" * 100)
    log.close()
    log.feed(Stream.STDOUT, b"after close")
    assert "after close" not in log.tail(1000)


async def test_calls_get_what_they_wrote_and_the_log_the_rest(tmp_path):
    stdio = SandboxStdio(SandboxLog(tmp_path / "log"), max_output_bytes=16)
    out, err = stdio.write_fds
    async with trio.open_nursery() as nursery:
        for stream in Stream:
            nursery.start_soon(stdio.read, stream)
        os.write(out, b"before\n")
        stdio.begin_call()  # what was written before goes to the log
        os.write(out, b"during\n")
        os.write(err, b"E" * 100)
        await trio.sleep(0.01)  # the readers take some ...
        os.write(out, b"late\n")  # ... and end_call drains the rest
        output = stdio.end_call()
        assert output.stdout.data == b"during\nlate\n"
        assert output.stderr.data == b"E" * 16 and output.stderr.dropped == 84
        assert stdio.call_output() is output
        os.write(out, b"between\n")
        await trio.sleep(0.01)
        assert stdio.log.tail(100) == "before\nbetween\n"
        stdio.close_write_ends()  # every writer gone: the readers see the end
        with trio.fail_after(5):
            while stdio._read_fds:
                await trio.sleep(0.01)
    stdio.close()
