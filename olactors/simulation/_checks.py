"""The invariants every simulation run checks, as it goes and at the end.

Each broken rule is recorded as a :class:`Violation` (time, rule, detail);
a run passes when there are none.  The rules (the simulation issue's list):

* ``memory``: the memory pool is never over-committed (its ledger's peak
  never exceeds the pool), and after the drain reservations and releases
  balance to zero.
* ``exactly_once``: every accepted request completes exactly once — with a
  response or an :class:`~olactors._errors.OlactorsError` (a clear error),
  never another exception, never twice, never left pending.
* ``backpressure``: a 429 only when the function's queue was actually full.
* ``eviction``: the evictor never chooses a sandbox with live children, and
  chooses a running one only in a critical round when every paused
  candidate was chosen too (no paused one was left that could free memory).
* ``restarts``: each supervised instance restarts at most
  ``restart_intensity`` times within any ``restart_period_s``; an
  escalation comes exactly when the next failure would exceed that (or at
  once for a crash restarting cannot fix, such as an init timeout); a 503
  ``function_failing`` only within ``failure_cooldown_s`` after an
  escalation of that function.
* ``fresh_code``: a request arriving more than ``registry.cache_s`` after a
  code update is never served by an older version.
* ``drain``: after the workload and ``idle_timeout_s``, no function actor, no
  leaf sandbox and no cached code is left; after shutdown no sandbox and no
  task.
* ``cause``: every failed call that reached a sandbox (502 ``sandbox_died``,
  504 ``timeout`` or ``init_timeout``, 500 ``sandbox_unavailable``) carries a
  typed cause other than ``unknown``; the answers the worker gives without a
  sandbox (429, 503 ``function_failing``/``memory_exhausted``/
  ``shutting_down``, 404, 405...) carry none.
* ``no_crash``: no actor logged an unexpected exception.
"""

from __future__ import annotations

import bisect
from collections import defaultdict, deque
from dataclasses import dataclass

from .._causes import CauseCode
from .._config import Config
from .._errors import HandlerTimeout, InitFailed, OlactorsError, SandboxDied, SandboxUnavailable
from ..actors.evictor import EvictionRound

EPSILON_S = 1e-6
#: The errors of calls that reached a sandbox (or the creation of one).
REACHED_A_SANDBOX = (SandboxDied, HandlerTimeout, InitFailed, SandboxUnavailable)


@dataclass(frozen=True, slots=True)
class Violation:
    at: float
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.at:.6f}] {self.rule}: {self.detail}"


class Checker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.violations: list[Violation] = []
        self.pending: dict[int, float] = {}  # request number -> arrival
        self.accepted = 0
        self.completed = 0
        self.restarts: dict[int, deque[float]] = defaultdict(deque)  # child serial -> times
        self.escalations: dict[str, list[float]] = defaultdict(list)  # function -> times
        self.updates: dict[str, list[tuple[float, int]]] = defaultdict(list)  # (time, version)
        self.eviction_rounds = 0

    def fail(self, at: float, rule: str, detail: str) -> None:
        self.violations.append(Violation(at, rule, detail))

    # ------------------------------------------------------------ requests
    def accepted_request(self, number: int, at: float) -> None:
        self.accepted += 1
        self.pending[number] = at

    def completed_request(self, number: int, at: float) -> None:
        if self.pending.pop(number, None) is None:
            self.fail(at, "exactly_once", f"request {number} answered twice")
            return
        self.completed += 1

    def failed_request(self, at: float, number: int, error: OlactorsError) -> None:
        """Rule ``cause`` for one call answered with ``error``."""
        cause = error.cause
        if isinstance(error, REACHED_A_SANDBOX):
            if cause is None or cause.code is CauseCode.UNKNOWN:
                shown = "no cause" if cause is None else cause.summary()
                self.fail(at, "cause", f"request {number}: {error.code} with {shown}")
        elif cause is not None:
            self.fail(
                at,
                "cause",
                f"request {number}: {error.code}, answered without a sandbox, "
                f"carries {cause.summary()}",
            )

    def rejected_429(self, at: float, function: str, queued: int) -> None:
        depth = self.config.queue.max_depth
        if queued < depth:
            self.fail(at, "backpressure", f"429 for {function} with {queued}/{depth} queued")

    def function_failing(self, at: float, function: str) -> None:
        cooldown = self.config.functions.failure_cooldown_s
        times = self.escalations.get(function, [])
        if not any(e - EPSILON_S <= at <= e + cooldown + EPSILON_S for e in times):
            self.fail(at, "restarts", f"503 function_failing for {function} without an escalation")

    def code_updated(self, at: float, function: str, version: int) -> None:
        self.updates[function].append((at, version))

    def served(self, at: float, arrived: float, function: str, version: int) -> None:
        """A 200 from ``version`` for a request that arrived at ``arrived``."""
        updates = self.updates.get(function)
        if not updates:
            return
        cutoff = arrived - self.config.registry.cache_s - EPSILON_S
        i = bisect.bisect_right(updates, (cutoff, float("inf")))
        if i and version < updates[i - 1][1]:
            self.fail(
                at,
                "fresh_code",
                f"{function}: served by v{version} but v{updates[i - 1][1]} was published "
                f"at {updates[i - 1][0]:.3f}, more than registry.cache_s before the request",
            )

    # --------------------------------------------------------- supervision
    def restarted(self, at: float, child: str, serial: int) -> None:
        cfg = self.config.functions
        window = self.restarts[serial]
        window.append(at)
        while window and window[0] <= at - cfg.restart_period_s:
            window.popleft()
        if len(window) > cfg.restart_intensity:
            self.fail(
                at,
                "restarts",
                f"{child} restarted {len(window)} times within {cfg.restart_period_s} s "
                f"(intensity {cfg.restart_intensity})",
            )

    def escalated(self, at: float, child: str, serial: int, unrecoverable: bool = False) -> None:
        cfg = self.config.functions
        window = self.restarts.get(serial, deque())
        recent = sum(1 for t in window if t > at - cfg.restart_period_s)
        if not unrecoverable and recent != cfg.restart_intensity:
            self.fail(
                at,
                "restarts",
                f"{child} escalated after {recent} restarts within {cfg.restart_period_s} s "
                f"(intensity {cfg.restart_intensity})",
            )
        self.escalations[child.rsplit("/", 1)[0]].append(at)

    # ------------------------------------------------------------ eviction
    def eviction_round(self, decision: EvictionRound, spared_paused: list[str]) -> None:
        """One evictor decision; ``spared_paused``: paused, childless sandboxes
        holding memory that were neither chosen nor already being evicted
        (looked up independently of the evictor, when it chose a running one)."""
        self.eviction_rounds += 1
        at = decision.at
        for victim in decision.victims:
            if victim.children:
                self.fail(at, "eviction", f"victim {victim.key} has {victim.children} children")
            if victim.mem_mb <= 0:
                self.fail(at, "eviction", f"victim {victim.key} holds no memory")
        running = [v for v in decision.victims if not v.paused]
        if running:
            if not decision.critical:
                self.fail(at, "eviction", f"running {running[0].key} evicted in a normal round")
            if spared_paused:
                self.fail(
                    at,
                    "eviction",
                    f"running {running[0].key} evicted while paused {spared_paused[0]} was spared",
                )

    # --------------------------------------------------------------- memory
    def memory(self, at: float, total_mb: int, peak_mb: int) -> None:
        if peak_mb > total_mb:
            self.fail(at, "memory", f"pool over-committed: peak {peak_mb} > {total_mb} MB")
