"""The contract between a worker and the load balancer in front of it (pure).

A balancer may retry a call on another worker only when the call never ran:
the connection failed, or the worker refused it before anything ran.  HAProxy
2.6's ``retry-on`` matches response *statuses* (not headers) and cannot retry
429, so the worker and the generated HAProxy configuration
(:mod:`olactors.cluster.haproxy`) agree on this, for requests the balancer
marks with ``X-Olactors-Balancer`` (it sets the header itself and so replaces
whatever a client sent):

* A **refusal** (the function's queue is full, no memory could be reserved
  within ``memory.reserve_timeout_s``, the worker is shutting down) is
  ``503`` with the error code ``overloaded``, the reason in the body and in
  ``X-Olactors-Refused``, and ``Retry-After``.  The balancer retries 503
  (``retry-on conn-failure 503``) on another worker; when every try was
  refused, the client gets the last ``503 overloaded``.
* **Any other answer whose status is 503** (a function that itself answers
  503, ``function_failing``) travels as :data:`HELD_STATUS` with
  ``X-Olactors-Status: 503``, which the balancer does not retry; its
  ``http-response`` rules (run after the retry decision) put the 503 back and
  drop the header, so the client sees exactly what the function answered.
* Every other status goes through unchanged.

Without the mark nothing changes: a full queue is the client-facing ``429
queue_full``, memory ``503 memory_exhausted``, shutdown ``503 shutting_down``.
"""

from __future__ import annotations

from enum import Enum

from ._errors import MemoryExhausted, OlactorsError, QueueFull, ShuttingDown

#: Request header the balancer sets (any value) on every request it forwards.
BALANCER_HEADER = "X-Olactors-Balancer"
#: Response header naming why a marked call was refused (a :class:`Refusal` value).
REFUSED_HEADER = "X-Olactors-Refused"
#: Response header holding the real status of a marked answer sent as HELD_STATUS.
STATUS_HEADER = "X-Olactors-Status"
#: The status the balancer retries on another worker (``retry-on``).
RETRIED_STATUS = 503
#: The status a marked call's own 503 travels as (one the balancer never retries).
HELD_STATUS = 500


class Refusal(Enum):
    """Why a worker refused a call before anything ran."""

    QUEUE_FULL = "queue_full"
    MEMORY_EXHAUSTED = "memory_exhausted"
    SHUTTING_DOWN = "shutting_down"


class Overloaded(OlactorsError):
    """A balanced call this worker refused before anything ran (see the module
    docstring): the balancer may send it to another worker."""

    code = "overloaded"
    status = RETRIED_STATUS

    def __init__(self, message: str, reason: Refusal, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s

    def details(self) -> dict[str, object]:
        return {"reason": self.reason.value, **self.cause_details()}


def refusal_of(exc: OlactorsError) -> Refusal | None:
    """The refusal ``exc`` is, when it answers a call that never ran; else None."""
    if isinstance(exc, QueueFull):
        return Refusal.QUEUE_FULL
    if isinstance(exc, MemoryExhausted):
        return Refusal.MEMORY_EXHAUSTED
    if isinstance(exc, ShuttingDown):
        return Refusal.SHUTTING_DOWN
    return None


def as_overloaded(exc: OlactorsError) -> OlactorsError:
    """``exc`` as a balanced call's answer: a refusal becomes :class:`Overloaded`
    (keeping the message and the retry hint), anything else stays itself."""
    reason = refusal_of(exc)
    if reason is None:
        return exc
    retry_after_s = exc.retry_after_s if isinstance(exc, QueueFull) else 1.0
    return Overloaded(exc.message, reason, retry_after_s)


def held(status: int) -> tuple[int, list[tuple[str, str]]]:
    """A balanced answer that is not a refusal: the status to send and the
    headers to add, so the balancer does not retry it (see the module docstring)."""
    if status == RETRIED_STATUS:
        return HELD_STATUS, [(STATUS_HEADER, str(status))]
    return status, []
