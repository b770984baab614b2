"""Error types shared across layers (pure: no trio, no I/O).

Every error that can reach a user carries a stable machine-readable ``code``
(used as the JSON ``error`` field by the HTTP layer) and a human message.
"""

from __future__ import annotations


class OlactorsError(Exception):
    """Base class for every error olactors raises on purpose."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(OlactorsError):
    """A worker.yaml, ol.yaml or ``--set`` override is malformed.

    The message names the offending key path (``section.key``).
    """

    code = "bad_config"


class SandboxError(OlactorsError):
    """A sandbox operation failed; the sandbox has been (or is being) destroyed."""

    code = "sandbox_error"


class SandboxDead(SandboxError):
    """The sandbox is destroyed; ``reason`` says why (OOM, pids limit, crash, destroy call...)."""

    code = "sandbox_dead"

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class SandboxStateError(SandboxError):
    """The call is not valid in the sandbox's current state (e.g. invoke while paused)."""

    code = "sandbox_state"


class CgroupError(OlactorsError):
    """A cgroup could not be created, configured or removed."""

    code = "cgroup_error"
