"""What a call leaves behind: its output, its record, and the plain-language
explanation of a failure (pure: no trio, no I/O).

A :class:`CallRecord` is kept for every call that reached a function (see
``olactors/records/``); its JSON form is the admin API's
``GET /debug/<fn>/<request_id>``.  :func:`explain` turns a record into the
sentence ``olactors why`` prints.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._causes import Cause, CauseCode, SignalSender


@dataclass(frozen=True, slots=True)
class StreamCapture:
    """One stream of one call, cut at a byte limit: ``data`` is what was kept,
    ``dropped`` how many bytes after it were not."""

    data: bytes = b""
    dropped: int = 0

    def text(self) -> str:
        """The kept bytes as text, with a marker where bytes were dropped."""
        text = self.data.decode("utf-8", "replace")
        if self.dropped:
            text += f"\n[olactors: output cut here, {self.dropped} more bytes dropped]\n"
        return text


@dataclass(frozen=True, slots=True)
class CallOutput:
    """What a call wrote to stdout and stderr (any writer: print, logging, a C
    extension, a child process) and the syscalls its sandbox blocked."""

    stdout: StreamCapture = field(default_factory=StreamCapture)
    stderr: StreamCapture = field(default_factory=StreamCapture)
    blocked_syscalls: tuple[str, ...] = ()


NO_OUTPUT = CallOutput()


class ColdReason(enum.StrEnum):
    """Why a call needed a new sandbox (null in a record when it was warm)."""

    FIRST = "first"  # the instance's first sandbox
    SCALED_UP = "scaled_up"  # a new instance beside busy ones
    EVICTED = "evicted"  # its paused sandbox had been evicted
    CODE_UPDATED = "code_updated"  # a new version of the code
    SECRETS_CHANGED = "secrets_changed"  # a secret granted to it was set, granted or revoked
    RESTARTED = "restarted"  # the previous sandbox died


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Everything kept about one call (field names are the JSON keys)."""

    request_id: str
    function: str
    version: str | None
    status: int
    cause: Cause | None
    blocked_syscalls: tuple[str, ...]
    started_at: str  # RFC 3339, UTC
    duration_ms: float
    queue_ms: float
    cold: bool
    cold_reason: ColdReason | None
    sandbox: str | None
    cpu_ms: float | None
    memory_peak_mb: float | None
    memory_limit_mb: int | None
    stdout: str
    stderr: str
    owner: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "function": self.function,
            "version": self.version,
            "status": self.status,
            "cause": self.cause.as_json() if self.cause is not None else None,
            "blocked_syscalls": list(self.blocked_syscalls),
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
            "queue_ms": self.queue_ms,
            "cold": self.cold,
            "cold_reason": self.cold_reason.value if self.cold_reason is not None else None,
            "sandbox": self.sandbox,
            "cpu_ms": self.cpu_ms,
            "memory_peak_mb": self.memory_peak_mb,
            "memory_limit_mb": self.memory_limit_mb,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "owner": self.owner,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        """The inverse of :meth:`as_json` (the store keeps records as JSON)."""
        cause = data.get("cause")
        cold_reason = data.get("cold_reason")
        return cls(
            request_id=str(data["request_id"]),
            function=str(data["function"]),
            version=data.get("version"),
            status=int(data["status"]),
            cause=Cause.from_json(cause) if isinstance(cause, dict) else None,
            blocked_syscalls=tuple(data.get("blocked_syscalls") or ()),
            started_at=str(data["started_at"]),
            duration_ms=float(data.get("duration_ms") or 0.0),
            queue_ms=float(data.get("queue_ms") or 0.0),
            cold=bool(data.get("cold")),
            cold_reason=ColdReason(cold_reason) if cold_reason else None,
            sandbox=data.get("sandbox"),
            cpu_ms=data.get("cpu_ms"),
            memory_peak_mb=data.get("memory_peak_mb"),
            memory_limit_mb=data.get("memory_limit_mb"),
            stdout=str(data.get("stdout") or ""),
            stderr=str(data.get("stderr") or ""),
            owner=data.get("owner"),
        )

    @property
    def failed(self) -> bool:
        return not 200 <= self.status < 400


@dataclass(slots=True)
class CallTrace:
    """What the actors learn about one call on its way (mutable, one per call).

    The worker makes one per call and passes it with the call request; the
    function actor and the instance that serves the call fill it in; the
    worker then hands it to the recorder in a :class:`FinishedCall`, which
    builds the :class:`CallRecord` from it (:meth:`record`) off the request path.

    ``queue_ms`` doubles as the mark that the call *reached the function*: it is
    set when an instance took the call (after the function actor's checks:
    queue, cool-down, method, wait).  A call whose trace has no ``queue_ms``
    was answered by the worker itself (400, 404, 405, 413, 429, 503
    shutting_down or function_failing) and leaves no record.
    """

    version: str | None = None
    queue_ms: float | None = None  # set when an instance took the call
    sandbox: str | None = None
    cold: bool = False
    cold_reason: ColdReason | None = None
    cpu_ms: float | None = None
    memory_peak_mb: float | None = None
    memory_limit_mb: int | None = None
    output: CallOutput = NO_OUTPUT
    cause: Cause | None = None
    owner: str | None = None  # the function's owner when the call was admitted

    @property
    def reached_function(self) -> bool:
        """Did an instance take the call (so it gets a record)?"""
        return self.queue_ms is not None

    def record(
        self,
        request_id: str,
        function: str,
        status: int,
        started_at: str,
        duration_ms: float,
        cause: Cause | None = None,
    ) -> CallRecord:
        """The record of the call, answered with ``status``.  ``cause`` (e.g.
        the answering error's) stands in when the trace has none; a 2xx/3xx
        answer has no cause."""
        failed = not 200 <= status < 400
        return CallRecord(
            request_id=request_id,
            function=function,
            version=self.version,
            status=status,
            cause=(self.cause or cause) if failed else None,
            blocked_syscalls=self.output.blocked_syscalls,
            started_at=started_at,
            duration_ms=round(duration_ms, 3),
            queue_ms=round(self.queue_ms or 0.0, 3),
            cold=self.cold,
            cold_reason=self.cold_reason if self.cold else None,
            sandbox=self.sandbox,
            cpu_ms=self.cpu_ms,
            memory_peak_mb=self.memory_peak_mb,
            memory_limit_mb=self.memory_limit_mb,
            stdout=self.output.stdout.text(),
            stderr=self.output.stderr.text(),
            owner=self.owner,
        )


def rfc3339(epoch_s: float) -> str:
    """``epoch_s`` as an RFC 3339 UTC timestamp in milliseconds (``...T14:00:00.000Z``)."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(slots=True)
class FinishedCall:
    """A call that reached its function, as the worker hands it to the recorder
    once answered: the trace and the answer.  Its :class:`CallRecord` is made
    (:meth:`record`: the output decoded, the timestamp formatted) by the
    recorder in its own task, not by the request's: a call pays only for
    this small object."""

    trace: CallTrace
    request_id: str
    function: str
    status: int
    started: float  # epoch seconds, when the worker took the call
    duration_ms: float
    #: The answering error's cause, standing in when the trace has none.
    cause: Cause | None = None

    @property
    def output_bytes(self) -> int:
        """The captured output it holds (what the recorder's queue bounds)."""
        output = self.trace.output
        return len(output.stdout.data) + len(output.stderr.data)

    def record(self) -> CallRecord:
        return self.trace.record(
            self.request_id,
            self.function,
            self.status,
            rfc3339(self.started),
            self.duration_ms,
            self.cause,
        )


def _syscalls(names: tuple[str, ...]) -> str:
    calls = [f"{name}(2)" for name in names]
    if len(calls) == 1:
        return calls[0]
    return ", ".join(calls[:-1]) + " and " + calls[-1]


def _cause_sentence(cause: Cause) -> str:
    d = cause.detail
    code = cause.code
    if code is CauseCode.HANDLER_EXCEPTION:
        return f"the handler raised {d.get('type', 'an exception')}: {d.get('message', '')}".strip()
    if code is CauseCode.IMPORT_ERROR:
        return "the function's code (f.py or one of its packages) failed to import"
    if code is CauseCode.INIT_TIMEOUT:
        return f"its import took longer than its init limit of {d.get('limit_s')} s (limits.init_s)"
    if code is CauseCode.OOM:
        return (
            f"it was killed for exceeding its memory limit of {d.get('limit_mb')} MB "
            "(limits.mem_mb)"
        )
    if code is CauseCode.PIDS_LIMIT:
        return (
            f"it tried to start more than its limit of {d.get('limit')} processes and threads "
            "(limits.procs)"
        )
    if code is CauseCode.TIMEOUT:
        return (
            f"it ran longer than its runtime limit of {d.get('limit_s')} s (limits.runtime_s); "
            "the worker stopped it"
        )
    if code is CauseCode.EXIT:
        return f"its process exited with status {d.get('exit_code')}"
    if code is CauseCode.SIGNAL:
        sender = d.get("sender")
        by = {
            SignalSender.WORKER.value: " sent by the worker",
            SignalSender.OOM_KILLER.value: " sent by the kernel's OOM killer",
            SignalSender.SECCOMP.value: " sent by seccomp for a blocked system call",
        }.get(str(sender), "")
        return f"its process was killed by {d.get('signal', 'a signal')}{by}"
    if code is CauseCode.STARTUP_FAILED:
        return "its sandbox never became ready"
    if code is CauseCode.BAD_RESPONSE:
        return f"its sandbox sent a malformed or oversized reply ({d.get('reason', '')})"
    if code is CauseCode.ZYGOTE_DIED:
        return "the zygote its sandbox was forked from died, taking the sandbox with it"
    if code is CauseCode.EVICTED:
        return "its sandbox was evicted to free memory"
    if code is CauseCode.CODE_UPDATED:
        return "its sandbox was replaced because the function's code was updated"
    if code is CauseCode.WORKER_SHUTDOWN:
        return "the worker shut down"
    if code is CauseCode.RELEASED:
        return f"its sandbox was released ({d.get('why', 'no longer needed')})"
    return f"it failed for a reason the worker could not tell ({d.get('error', 'no detail')})"


def explain(record: CallRecord) -> str:
    """A plain-language account of the call, e.g. "the function called
    mount(2), which sandboxes block; it then raised PermissionError"."""
    blocked = record.blocked_syscalls
    if record.cause is None:
        if not record.failed:
            base = f"the call succeeded ({record.status})"
            if blocked:
                return f"{base}; it called {_syscalls(blocked)}, which sandboxes block, and went on"
            return base
        return f"the call answered {record.status} without reaching a sandbox"
    sentence = _cause_sentence(record.cause)
    if not blocked:
        return sentence[0].upper() + sentence[1:]
    what = f"The function called {_syscalls(blocked)}, which sandboxes block"
    if record.cause.code is CauseCode.HANDLER_EXCEPTION:
        raised = record.cause.detail.get("type", "an exception")
        return f"{what}; it then raised {raised}: {record.cause.detail.get('message', '')}".strip()
    return f"{what}; then {sentence}"
