"""Redaction of granted secrets' values from what a sandbox wrote: a call's
capture (also where it was cut), the sandbox's log (also across reads), and
the runtime's error answers."""

from __future__ import annotations

import json
from pathlib import Path

from olactors._secrets import Redactor, SecretFile
from olactors.sock import InvocationResult
from olactors.sock._output import CallCapture, SandboxLog, Stream
from olactors.sock._results import redact_runtime_error, runtime_error_cause

DB = SecretFile("DB", 3, b"hunter2-but-longer\n")
API = SecretFile("api.key", 1, b"sk-0123456789")
R = Redactor([DB, API])


def test_values_are_replaced_with_their_names() -> None:
    out = R.redact(b"pw=hunter2-but-longer\n key sk-0123456789 and sk-0123456789!")
    assert out == b"pw=[secret DB] key [secret api.key] and [secret api.key]!"
    assert R.redact(b"password: hunter2-but-longer.") == b"password: [secret DB]."  # stripped
    assert R.redact(b"nothing here") == b"nothing here"
    assert R.redact_text("x sk-0123456789") == "x [secret api.key]"


def test_short_values_are_left_alone() -> None:
    short = Redactor([SecretFile("PIN", 1, b"42")])
    assert not short and short.redact(b"42 is 42") == b"42 is 42"


def test_a_cut_capture_hides_the_beginning_of_a_value() -> None:
    capture = CallCapture(limit=20)
    capture.feed(Stream.STDOUT, b"token: sk-0123456789 and more")
    out = capture.finish((), R)
    assert out.stdout.data == b"token: [secret api.key]"[:23]
    assert b"sk-01" not in out.stdout.data and out.stdout.dropped > 0
    whole = CallCapture(limit=1000)
    whole.feed(Stream.STDERR, b"sk-0123456789")
    assert whole.finish((), R).stderr.data == b"[secret api.key]"
    assert whole.finish((), None).stderr.data == b"sk-0123456789"


def test_the_log_redacts_across_reads_and_streams(tmp_path: Path) -> None:
    log = SandboxLog(tmp_path / "log", redactor=R)
    log.feed(Stream.STDOUT, b"start sk-01234")
    log.feed(Stream.STDERR, b"[err]")  # the other stream between the two halves
    log.feed(Stream.STDOUT, b"56789 end\nhunter2-but")
    assert b"sk-" not in (tmp_path / "log").read_bytes()
    log.close()
    text = (tmp_path / "log").read_bytes()
    assert b"sk-0" not in text and b"hunter2" not in text
    assert text.startswith(b"start [err][secret api.key] end\n")  # interleaved as read
    assert text.endswith(b"[secret DB]")  # the held beginning, at close


def test_runtime_error_answers_are_redacted_function_answers_are_not() -> None:
    body = {"error": "handler_exception", "type": "ValueError", "message": "bad sk-0123456789"}
    body["traceback"] = 'raise ValueError("bad sk-0123456789")'
    marked = InvocationResult(
        500, (("x-olactors-error", "handler_exception"),), json.dumps(body).encode()
    )
    redacted = redact_runtime_error(marked, R)
    assert b"sk-0123456789" not in redacted.body
    cause = runtime_error_cause(redacted)
    assert cause is not None and cause.detail["message"] == "bad [secret api.key]"
    own = InvocationResult(200, (), b'"sk-0123456789"')
    assert redact_runtime_error(own, R) is own


def test_holding_names_what_reaches_into_a_root(tmp_path: Path) -> None:
    """The check the worker runs on a zygote's processes before it mounts a
    forked child's secrets."""
    import os

    from olactors.sock._secretfs import holding

    root = tmp_path / "sb-1" / "root"
    (root / "run").mkdir(parents=True)
    (tmp_path / "sb-12").mkdir()
    assert holding([os.getpid()], str(root)) == []
    fd = os.open(root / "run", os.O_PATH | os.O_DIRECTORY)
    other = os.open(tmp_path / "sb-12", os.O_PATH | os.O_DIRECTORY)  # a prefix, not inside
    try:
        found = holding([os.getpid()], str(root))
        assert found == [f"{os.getpid()}: /proc/{os.getpid()}/fd/{fd} -> {root}/run"]
    finally:
        os.close(fd)
        os.close(other)
    assert holding([2**22 + 12345], str(root)) == []  # no such process
