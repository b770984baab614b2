"""The worker's side of the retry contract with a load balancer (pure), and
request ids given back by refused calls."""

from __future__ import annotations

import pytest

from olactors._balancer import (
    HELD_STATUS,
    RETRIED_STATUS,
    STATUS_HEADER,
    Overloaded,
    Refusal,
    as_overloaded,
    held,
    refusal_of,
)
from olactors._causes import Cause, CauseCode
from olactors._errors import (
    FunctionFailing,
    HandlerTimeout,
    MemoryExhausted,
    QueueFull,
    SandboxDied,
    ShuttingDown,
)
from olactors.records import RecentIds


@pytest.mark.parametrize(
    "error, reason",
    [
        (QueueFull("full", retry_after_s=3), Refusal.QUEUE_FULL),
        (MemoryExhausted("no memory"), Refusal.MEMORY_EXHAUSTED),
        (ShuttingDown("bye"), Refusal.SHUTTING_DOWN),
    ],
)
def test_refusals_become_overloaded(error, reason) -> None:  # type: ignore[no-untyped-def]
    assert refusal_of(error) is reason
    answer = as_overloaded(error)
    assert isinstance(answer, Overloaded)
    assert (answer.code, answer.status, answer.reason) == ("overloaded", RETRIED_STATUS, reason)
    assert answer.message == error.message
    assert answer.details() == {"reason": reason.value}
    assert answer.retry_after_s == (3 if isinstance(error, QueueFull) else 1.0)


@pytest.mark.parametrize(
    "error",
    [
        FunctionFailing("failing"),  # 503, but not a refusal of this call by this worker
        SandboxDied("died", Cause.of(CauseCode.OOM)),
        HandlerTimeout("slow", 1.0),
    ],
)
def test_answers_of_calls_that_may_have_run_are_not_refusals(error) -> None:  # type: ignore[no-untyped-def]
    assert refusal_of(error) is None
    assert as_overloaded(error) is error


def test_only_the_retried_status_is_held() -> None:
    assert held(RETRIED_STATUS) == (HELD_STATUS, [(STATUS_HEADER, str(RETRIED_STATUS))])
    for status in (200, 429, 500, 502, 504):
        assert held(status) == (status, [])


def test_a_released_request_id_can_be_claimed_again() -> None:
    ids = RecentIds(4)
    assert ids.claim("f", "lb-1") == "lb-1"
    assert ids.claim("f", "lb-1") != "lb-1"  # taken
    ids.release("f", "lb-1")
    assert ids.claim("f", "lb-1") == "lb-1"
    ids.release("g", "unknown")  # a no-op
    assert ids.claim("g", "lb-1") == "lb-1"  # ids are per function
