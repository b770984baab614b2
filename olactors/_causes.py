"""Why a sandbox ended or a call failed: a typed cause (pure: no trio, no I/O).

A :class:`Cause` is a stable code (:class:`CauseCode`) plus structured detail
(JSON values only).  Whoever destroys or diagnoses a sandbox sets it;
supervision, metrics, records and error responses all read the same value,
and no decision is ever taken on a message string.

The JSON form, used in error bodies and call records, is
``{"code": "<code>", "detail": {...}}``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class CauseCode(enum.StrEnum):
    """Stable codes.  The first group are failures of a call; the second ends
    a sandbox for reasons of the worker's own (never the function's fault)."""

    # --- the function's code or its sandbox failed
    HANDLER_EXCEPTION = "handler_exception"  # detail: type, message, traceback
    IMPORT_ERROR = "import_error"  # detail: traceback (f.py or a package failed to import)
    INIT_TIMEOUT = "init_timeout"  # detail: limit_s
    OOM = "oom"  # detail: limit_mb
    PIDS_LIMIT = "pids_limit"  # detail: limit
    TIMEOUT = "timeout"  # detail: limit_s (the runtime limit)
    EXIT = "exit"  # detail: exit_code
    SIGNAL = "signal"  # detail: signal (e.g. "SIGSEGV"), sender (see SignalSender)
    STARTUP_FAILED = "startup_failed"  # detail: output (what it printed), error
    BAD_RESPONSE = "bad_response"  # detail: reason
    ZYGOTE_DIED = "zygote_died"  # detail: zygote (its sandbox id)
    # --- the worker ended it
    EVICTED = "evicted"  # detail: policy
    CODE_UPDATED = "code_updated"  # detail: version (the new one)
    WORKER_SHUTDOWN = "worker_shutdown"
    RELEASED = "released"  # its owner no longer needs it; detail: why
    # --- nobody could tell
    UNKNOWN = "unknown"  # detail: error (what the caller saw)


class SignalSender(enum.StrEnum):
    """Who sent the signal that killed a process, where that can be known."""

    WORKER = "worker"
    OOM_KILLER = "oom_killer"
    SECCOMP = "seccomp"
    OTHER = "other"


#: Deaths that do not count against the function's restart intensity: the
#: worker ended the sandbox, or its zygote (shared, not the function's) died.
NOT_THE_FUNCTIONS_FAULT = frozenset(
    {
        CauseCode.EVICTED,
        CauseCode.CODE_UPDATED,
        CauseCode.WORKER_SHUTDOWN,
        CauseCode.RELEASED,
        CauseCode.ZYGOTE_DIED,
    }
)


def _frozen(detail: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(detail))


@dataclass(frozen=True, slots=True)
class Cause:
    """A code and its detail (read-only; JSON values only)."""

    code: CauseCode
    detail: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", _frozen(self.detail))

    @classmethod
    def of(cls, code: CauseCode, **detail: Any) -> Cause:
        return cls(code, detail)

    @property
    def counts_against_function(self) -> bool:
        """Does this death count as the function's failure (supervision)?"""
        return self.code not in NOT_THE_FUNCTIONS_FAULT

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code.value, "detail": dict(self.detail)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cause:
        """The inverse of :meth:`as_json`; an unknown code reads as ``unknown``."""
        try:
            code = CauseCode(str(data.get("code")))
        except ValueError:
            code = CauseCode.UNKNOWN
        detail = data.get("detail")
        return cls(code, detail if isinstance(detail, Mapping) else {})

    def summary(self) -> str:
        """One line for logs and messages, e.g. ``oom (limit_mb=128)``."""
        if not self.detail:
            return self.code.value
        shown = ", ".join(
            f"{key}={value}"
            for key, value in self.detail.items()
            if key not in ("traceback", "output") and not isinstance(value, (dict, list))
        )
        return f"{self.code.value} ({shown})" if shown else self.code.value


def released(why: str) -> Cause:
    """The cause for a sandbox its owner no longer needs (``RELEASED``, ``why``)."""
    return Cause.of(CauseCode.RELEASED, why=why)
