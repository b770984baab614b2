"""Error types shared across layers (pure: no trio, no I/O).

Every error that can reach a user carries a stable machine-readable ``code``
(used as the JSON ``error`` field by the HTTP layer) and a human message.
"""

from __future__ import annotations

from ._causes import Cause, CauseCode
from ._records import NO_OUTPUT, CallOutput


class OlactorsError(Exception):
    """Base class for every error olactors raises on purpose.

    ``code`` is the stable JSON ``error`` field and ``status`` the HTTP status
    the HTTP layer answers with when the error reaches a client.
    """

    code = "internal"
    status = 500
    #: Why the call failed, when it reached a sandbox (a finer, typed field
    #: beside ``code``; ``"cause"`` in the error body).  None otherwise.
    cause: Cause | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, object]:
        """Extra JSON fields of the error response (beside ``error`` and ``message``):
        subclasses add theirs to :meth:`cause_details`."""
        return self.cause_details()

    def cause_details(self) -> dict[str, object]:
        """``{"cause": ...}`` when the error has a cause, else nothing."""
        return {} if self.cause is None else {"cause": self.cause.as_json()}


class ConfigError(OlactorsError):
    """A worker.yaml, ol.yaml or ``--set`` override is malformed.

    The message names the offending key path (``section.key``).
    """

    code = "bad_config"


class SandboxError(OlactorsError):
    """A sandbox operation failed; the sandbox has been (or is being) destroyed."""

    code = "sandbox_error"


class SandboxDead(SandboxError):
    """The sandbox is destroyed; ``cause`` says why (OOM, pids limit, crash, destroy call...)."""

    code = "sandbox_dead"
    #: What the failed call wrote before the sandbox died (a failed
    #: ``invoke``'s; empty for other operations).
    output: CallOutput = NO_OUTPUT

    def __init__(self, message: str, cause: Cause) -> None:
        super().__init__(message)
        self.cause = cause


class SandboxStateError(SandboxError):
    """The call is not valid in the sandbox's current state (e.g. invoke while paused)."""

    code = "sandbox_state"


class UnknownNetworkMode(SandboxError):
    """A sandbox was asked for a network mode that does not exist (``host``
    included: it was removed).  ol.yaml and worker.yaml are checked when
    read, so this is a caller's bug; every pool refuses it the same way."""

    def __init__(self, network: object, problem: str) -> None:
        super().__init__(f"unknown network mode {network!r}: {problem}")
        self.network = network


class CgroupError(OlactorsError):
    """A cgroup could not be created, configured or removed."""

    code = "cgroup_error"


# ------------------------------------------------------------ request errors
# Raised on the invocation path; the HTTP layer turns them into
# ``{"error": code, "message": ..., "request_id": ...}`` with ``status``.


class BadFunctionName(OlactorsError):
    code = "bad_function_name"
    status = 400


class FunctionNotFound(OlactorsError):
    code = "function_not_found"
    status = 404


class SandboxNotFound(OlactorsError):
    """No live sandbox has that id (admin API)."""

    code = "sandbox_not_found"
    status = 404


class MethodNotAllowed(OlactorsError):
    code = "method_not_allowed"
    status = 405

    def __init__(self, message: str, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allowed = allowed


class BodyTooLarge(OlactorsError):
    code = "body_too_large"
    status = 413


class QueueFull(OlactorsError):
    """The function's bounded queue is full: backpressure, retry later."""

    code = "queue_full"
    status = 429

    def __init__(self, message: str, retry_after_s: float = 1.0, queued: int = 0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.queued = queued  # requests in the queue when this one was refused


class BadFunction(OlactorsError):
    """A function's code or ol.yaml is unusable (bad archive, bad config, no entry).

    400 when a client uploads it; 500 when an invocation finds it in the registry.
    """

    code = "bad_function"

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class PackageResolutionFailed(OlactorsError):
    """pip could not resolve a function's requirements (a conflict, no matching
    version, an unreachable index, a timeout). The message names the
    requirements and ends with the tail of pip's output; ``requirements`` and
    ``pip_tail`` hold them apart."""

    code = "package_resolution_failed"
    status = 424

    def __init__(
        self, message: str, requirements: tuple[str, ...] = (), pip_tail: str = ""
    ) -> None:
        super().__init__(message)
        self.requirements = requirements
        self.pip_tail = pip_tail

    def details(self) -> dict[str, object]:
        return {
            "requirements": list(self.requirements),
            "pip_tail": self.pip_tail,
            **self.cause_details(),
        }


class PackageInstallFailed(OlactorsError):
    """A pinned distribution could not be installed. 424 when pip refused it
    (not found, hash mismatch, no wheel for this interpreter); 500 when the
    installer itself failed (timed out, ran out of memory, crashed). The
    message names the package and ends with the tail of pip's output."""

    code = "package_install_failed"
    status = 424

    def __init__(
        self, message: str, package: str, version: str, pip_tail: str = "", status: int = 424
    ) -> None:
        super().__init__(message)
        self.package = package
        self.version = version
        self.pip_tail = pip_tail
        self.status = status

    def details(self) -> dict[str, object]:
        return {
            "package": self.package,
            "version": self.version,
            "pip_tail": self.pip_tail,
            **self.cause_details(),
        }


class ZygoteUnsuitable(SandboxError):
    """A zygote's process became unfit to fork after importing ``package``
    (a second thread, a file open for writing, a directory fd, a listening
    socket, or the import failed); ``reason`` says which."""

    code = "zygote_unsuitable"

    def __init__(self, package: str, reason: str) -> None:
        super().__init__(f"package {package!r} is unsuitable for a zygote: {reason}")
        self.package = package
        self.reason = reason


class RegistryUnavailable(OlactorsError):
    code = "registry_unavailable"
    status = 502


class SandboxDied(OlactorsError):
    """The sandbox died during the call; ``cause`` is the diagnosis."""

    code = "sandbox_died"
    status = 502

    def __init__(self, message: str, cause: Cause) -> None:
        super().__init__(message)
        self.cause = cause


class BadSandboxResponse(OlactorsError):
    """The sandbox answered outside what the worker accepts: malformed, or
    beyond ``limits.max_response_bytes``, ``max_response_headers`` or
    ``max_response_header_bytes``.  The sandbox was destroyed (cause
    ``bad_response``) without the worker buffering more than the limits."""

    code = "bad_response"
    status = 502

    def __init__(self, message: str, cause: Cause) -> None:
        super().__init__(message)
        self.cause = cause


class SandboxUnavailable(OlactorsError):
    """No sandbox could be created for the call (creation failed twice);
    ``cause`` is the last creation failure's, when it was diagnosed."""

    code = "sandbox_unavailable"
    status = 500

    def __init__(self, message: str, cause: Cause | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class FunctionFailing(OlactorsError):
    """The function's sandboxes kept failing beyond the restart intensity;
    it reports this error until its cool-down passes or its code changes."""

    code = "function_failing"
    status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InitFailed(OlactorsError):
    """The function's own code failed while its sandbox started: the handler's
    import (the init phase, bounded by ``limits.init_s``) ran too long, or the
    process died during it.  The sandbox is destroyed.  A failure of the
    function, not of the sandbox: never retried as if the sandbox were at fault
    (a subclass of :class:`OlactorsError`, not of :class:`SandboxError`)."""


class InitTimeout(InitFailed):
    """The handler's import took longer than the function's ``limits.init_s``
    (``init_s``): 504, answered once, the function then cools down."""

    code = "init_timeout"
    status = 504

    def __init__(self, init_s: float) -> None:
        super().__init__(
            f"the function's import took longer than its init limit of {init_s:g} s "
            "(limits.init_s); its sandbox was destroyed"
        )
        self.init_s = init_s
        self.cause = Cause.of(CauseCode.INIT_TIMEOUT, limit_s=init_s)

    def details(self) -> dict[str, object]:
        return {"init_s": self.init_s, **self.cause_details()}


class InitBadReport(InitFailed):
    """While the handler was imported, something wrote on the sandbox's start
    channel that the worker does not take in that phase (only the leaf's own
    ``{"ready": true}`` and its zygote's fork reply): function code answering
    for its runtime.  502 ``bad_response`` (cause ``bad_response``), the
    sandbox destroyed; the function's failure, never retried as the sandbox's."""

    code = "bad_response"
    status = 502

    def __init__(self, message: str, cause: Cause) -> None:
        super().__init__(message)
        self.cause = cause


class InitDied(InitFailed):
    """The sandbox's process died while it imported the handler (an OOM at its
    memory limit, a crash in native code, ``os._exit``); ``cause`` is the
    diagnosis.  502 ``sandbox_died``, like a death during a call."""

    code = "sandbox_died"
    status = 502

    def __init__(self, message: str, cause: Cause) -> None:
        super().__init__(message)
        self.cause = cause


class MemoryExhausted(OlactorsError):
    """The memory pool had no room for the sandbox within the wait limit."""

    code = "memory_exhausted"
    status = 503


class HandlerTimeout(OlactorsError):
    """The handler outlasted the function's runtime limit (``limit_s``); its
    sandbox was destroyed (cause ``timeout``)."""

    code = "timeout"
    status = 504

    def __init__(self, message: str, limit_s: float) -> None:
        super().__init__(message)
        self.cause = Cause.of(CauseCode.TIMEOUT, limit_s=limit_s)


class ShuttingDown(OlactorsError):
    code = "shutting_down"
    status = 503


# ------------------------------------------------------------------- secrets
class BadSecretName(OlactorsError):
    """A secret name outside ``[A-Za-z0-9_.-]{1,128}`` (or ``.``/``..``)."""

    code = "bad_secret_name"
    status = 400


class SecretTooLarge(OlactorsError):
    """A secret's value is larger than 64 KiB."""

    code = "secret_too_large"
    status = 413


class SecretNotFound(OlactorsError):
    """No secret of that name is stored (admin API)."""

    code = "secret_not_found"
    status = 404


class SecretNotGranted(OlactorsError):
    """The function's ol.yaml declares ``secret`` and the admin has not granted
    it to the function: 424 before any of its code runs."""

    code = "secret_not_granted"
    status = 424

    def __init__(self, message: str, secret: str) -> None:
        super().__init__(message)
        self.secret = secret

    def details(self) -> dict[str, object]:
        return {"secret": self.secret, **self.cause_details()}


class SecretKeyUnusable(OlactorsError):
    """The secrets key file (``secrets.key_file``) is missing, unreadable, too
    open, or not the key the stored secrets were encrypted under: no secret
    can be read or written until the right key file is in place."""

    code = "secret_key_unusable"
    status = 500
