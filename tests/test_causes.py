"""Typed causes and call records (pure)."""

from __future__ import annotations

import json

import pytest

from olactors._causes import NOT_THE_FUNCTIONS_FAULT, Cause, CauseCode
from olactors._records import CallRecord, ColdReason, StreamCapture, explain


def record(**changes: object) -> CallRecord:
    fields: dict[str, object] = dict(
        request_id="r1",
        function="fn",
        version="v1",
        status=500,
        cause=None,
        blocked_syscalls=(),
        started_at="2026-12-01T14:00:00.000Z",
        duration_ms=3.5,
        queue_ms=0.1,
        cold=True,
        cold_reason=ColdReason.FIRST,
        sandbox="sb-1",
        cpu_ms=1.0,
        memory_peak_mb=12.0,
        memory_limit_mb=128,
        stdout="",
        stderr="",
    )
    fields.update(changes)
    return CallRecord(**fields)  # type: ignore[arg-type]


def test_cause_json_round_trip_and_read_only_detail() -> None:
    cause = Cause.of(CauseCode.SIGNAL, signal="SIGSEGV", sender="other")
    data = json.loads(json.dumps(cause.as_json()))
    assert data == {"code": "signal", "detail": {"signal": "SIGSEGV", "sender": "other"}}
    assert Cause.from_json(data) == cause
    with pytest.raises(TypeError):
        cause.detail["signal"] = "SIGKILL"  # type: ignore[index]


def test_unknown_code_reads_as_unknown() -> None:
    assert Cause.from_json({"code": "no-such-code"}).code is CauseCode.UNKNOWN


@pytest.mark.parametrize("code", list(CauseCode))
def test_supervision_reads_the_type(code: CauseCode) -> None:
    expected = code not in NOT_THE_FUNCTIONS_FAULT
    assert Cause(code).counts_against_function is expected


def test_worker_ended_sandboxes_are_not_the_functions_fault() -> None:
    for code in ("evicted", "code_updated", "worker_shutdown", "released", "zygote_died"):
        assert not Cause(CauseCode(code)).counts_against_function
    for code in ("oom", "pids_limit", "exit", "signal", "bad_response", "unknown"):
        assert Cause(CauseCode(code)).counts_against_function


def test_summary_leaves_out_tracebacks() -> None:
    cause = Cause.of(CauseCode.HANDLER_EXCEPTION, type="KeyError", traceback="long...")
    assert cause.summary() == "handler_exception (type=KeyError)"


def test_stream_capture_marks_dropped_bytes() -> None:
    assert StreamCapture(b"abc").text() == "abc"
    assert "12 more bytes dropped" in StreamCapture(b"abc", 12).text()


def test_record_json_has_the_documented_fields() -> None:
    cause = Cause.of(CauseCode.OOM, limit_mb=128)
    data = record(cause=cause, blocked_syscalls=("mount",)).as_json()
    assert data["cause"] == {"code": "oom", "detail": {"limit_mb": 128}}
    assert data["blocked_syscalls"] == ["mount"]
    assert data["cold_reason"] == "first"
    assert set(data) >= {
        "request_id", "function", "version", "status", "cause", "blocked_syscalls",
        "started_at", "duration_ms", "queue_ms", "cold", "cold_reason", "sandbox",
        "cpu_ms", "memory_peak_mb", "memory_limit_mb", "stdout", "stderr",
    }  # fmt: skip


def test_explain_names_blocked_syscalls_and_what_followed() -> None:
    raised = Cause.of(CauseCode.HANDLER_EXCEPTION, type="PermissionError", message="denied")
    text = explain(record(cause=raised, blocked_syscalls=("mount",)))
    assert text == (
        "The function called mount(2), which sandboxes block; "
        "it then raised PermissionError: denied"
    )
    died = explain(record(cause=Cause.of(CauseCode.OOM, limit_mb=64)))
    assert "memory limit of 64 MB" in died
    carried_on = explain(record(status=200, blocked_syscalls=("ptrace", "mount")))
    assert "ptrace(2) and mount(2)" in carried_on and "went on" in carried_on


@pytest.mark.parametrize("code", list(CauseCode))
def test_every_code_has_an_explanation(code: CauseCode) -> None:
    text = explain(record(cause=Cause(code)))
    assert text and "could not tell" not in text or code is CauseCode.UNKNOWN
