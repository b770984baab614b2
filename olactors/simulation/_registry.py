"""A simulated code registry: the code puller's source, held in memory.

For simulations only.  It implements :class:`olactors.actors.code_puller.CodeSource`
with no files and no threads, so a simulation in virtual time stays
deterministic (the real sources copy code in worker threads, and virtual
time would race them).  Versions are ``v1``, ``v2``, ... per function;
:meth:`SimulatedRegistry.update` publishes the next one.
"""

from __future__ import annotations

import trio

from .._errors import FunctionNotFound
from .._function_config import FunctionConfig
from ..actors.code_puller import CheckResult, Known


class SimulatedRegistry:
    """Functions by name, each with a version number and an ol.yaml config."""

    def __init__(self) -> None:
        self._functions: dict[str, tuple[int, FunctionConfig]] = {}
        self.checks = 0
        self.discards = 0

    def add(self, name: str, config: FunctionConfig | None = None) -> None:
        self._functions[name] = (1, config or FunctionConfig())

    def update(self, name: str) -> int:
        """Publish a new version of ``name``; returns its number."""
        number, config = self._functions[name]
        self._functions[name] = (number + 1, config)
        return number + 1

    def remove(self, name: str) -> None:
        del self._functions[name]

    def version(self, name: str) -> int:
        return self._functions[name][0]

    async def check(self, name: str, known: Known) -> CheckResult:
        await trio.lowlevel.checkpoint()
        self.checks += 1
        entry = self._functions.get(name)
        if entry is None:
            raise FunctionNotFound(f"no function {name!r} in the registry")
        number, config = entry
        return CheckResult(("simulated", number), f"v{number}", config)

    async def discard(self, name: str, version: str | None) -> None:
        await trio.lowlevel.checkpoint()
        self.discards += 1
