"""Keeping the watchdog (:mod:`._watchdog`) alive while the worker runs.

The watchdog is what kills a dead worker's frozen sandboxes; if it dies
first (OOM-killed, or killed by an operator) and nobody notices, the next
death of the worker leaves paused sandboxes frozen until the next start's
recovery. The keeper waits for the watchdog's exit (a pidfd, so no polling)
and, unless the worker is stopping it, logs the exit as an error, counts it
(``/stats`` ``sandbox_anomalies.watchdog_restarts``) and starts a new one on
a new pipe. A watchdog that dies within :data:`QUICK_DEATH_S` of its start
is restarted after :data:`RESTART_PAUSE_S`, so a broken one cannot spin.
"""

from __future__ import annotations

import logging
import os

import trio

from ._watchdog import Watchdog, start_watchdog

log = logging.getLogger("olactors.sock")

QUICK_DEATH_S = 10.0
RESTART_PAUSE_S = 1.0


class WatchdogKeeper:
    def __init__(self, python: str, subtrees: list[str]) -> None:
        self._python = python
        self._subtrees = subtrees
        self.restarts = 0
        self.current: Watchdog = start_watchdog(python, subtrees)

    async def keep(self) -> None:
        """Restart the watchdog whenever it exits; runs until cancelled."""
        while True:
            watchdog = self.current
            started = trio.current_time()
            await _wait_for_exit(watchdog)
            status = watchdog.proc.poll()
            log.error(
                "the watchdog (pid %d) exited with status %s while the worker runs; "
                "starting a new one",
                watchdog.proc.pid,
                status,
            )
            watchdog.stop(timeout=1.0)  # closes its pipe; it is reaped already
            self.restarts += 1
            if trio.current_time() - started < QUICK_DEATH_S:
                await trio.sleep(RESTART_PAUSE_S)
            self.current = await self._start_again()

    async def _start_again(self) -> Watchdog:
        while True:
            try:
                return start_watchdog(self._python, self._subtrees)
            except OSError as exc:  # e.g. out of processes or fds: not the keeper's end
                log.error("cannot start a new watchdog (%s); trying again", exc)
                await trio.sleep(RESTART_PAUSE_S)

    def stop(self, timeout: float) -> None:
        """The worker shut down cleanly: tell the watchdog and reap it (blocking)."""
        self.current.stop(timeout)


async def _wait_for_exit(watchdog: Watchdog) -> None:
    try:
        pidfd = os.pidfd_open(watchdog.proc.pid)
    except ProcessLookupError:
        return  # already gone (and not reaped: only Popen reaps it)
    except OSError:  # no pidfds (kernel < 5.3): look once a second
        while watchdog.proc.poll() is None:
            await trio.sleep(1.0)
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
