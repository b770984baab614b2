"""The watchdog: kills a dead worker's sandboxes at once, frozen ones included.

Fresh sandboxes die with the worker by themselves (``PR_SET_PDEATHSIG``), and
a zygote's death kills its PID namespace.  A *frozen* (paused) process does
not die of a pending SIGKILL until it is thawed (cgroup v1), and while a
paused zygote waits so does every leaf forked from it, running or not.  No
one is left to thaw them, so the pool starts this small process
(:func:`start_watchdog`, ``python -I -S`` on this file: stdlib only, a few MB)
with the read end of a pipe whose write end only the worker holds.  When the
read end reaches end of file without the word ``done`` first, the worker is
gone, however it died: the watchdog kills every process of the worker's
cgroup subtree and thaws every cgroup, then exits.  Removing the cgroups,
``run/`` and the rest is left to the next worker's recovery.

It runs in a session of its own (no terminal signal reaches it) and ignores
SIGINT, SIGTERM and SIGHUP: the worker ends it, by writing ``done`` at a
clean shutdown or by dying.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

DONE = b"done"
#: Rounds of kill-and-thaw are repeated (a fork racing the first round) up to this long.
KILL_DEADLINE_S = 10.0
FREEZE_WAIT_S = 0.05


class Watchdog:
    """The worker's side: the watchdog process and the pipe's write end."""

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int) -> None:
        self.proc = proc
        self._write_fd = write_fd

    def stop(self, timeout: float) -> None:
        """Tell it the worker shut down cleanly and reap it (blocking, bounded by ``timeout``)."""
        if self._write_fd < 0:
            return
        fd, self._write_fd = self._write_fd, -1
        try:
            os.write(fd, DONE)
        except OSError:
            pass  # it died: nothing to tell
        finally:
            os.close(fd)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_watchdog(python: str, subtrees: list[str]) -> Watchdog:
    """Start the watchdog of the cgroup ``subtrees`` (the worker's ``olactors-<id>`` dirs)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            [python, "-I", "-S", os.path.abspath(__file__), str(read_fd), *subtrees],
            pass_fds=[read_fd],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return Watchdog(proc, write_fd)


# ------------------------------------------------------------- the watchdog
def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError:
        pass  # gone meanwhile, or not this cgroup version's file


def _cgroups(subtrees: list[str]) -> list[str]:
    """Every cgroup dir below ``subtrees``, parents first."""
    found = []
    for root in subtrees:
        for dirpath, _dirs, files in os.walk(root):
            if "cgroup.procs" in files:
                found.append(dirpath)
    return found


def _pids(cgroup: str) -> list[int]:
    return [int(p) for p in _read(os.path.join(cgroup, "cgroup.procs")).split()]


def _kill_round(cgroups: list[str]) -> None:
    """Freeze (so no listed pid exits and is reused before it is signalled), SIGKILL, thaw."""
    for cg in cgroups:
        if os.path.exists(os.path.join(cg, "cgroup.kill")):  # v2: atomic, frozen ones too
            _write(os.path.join(cg, "cgroup.kill"), "1")
            continue
        state = os.path.join(cg, "freezer.state")
        if os.path.exists(state):
            _write(state, "FROZEN")
            deadline = time.monotonic() + FREEZE_WAIT_S
            while _read(state).strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(0.002)
        for pid in _pids(cg):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for cg in cgroups:  # parents first: a v1 child stays frozen under a frozen parent
        _write(os.path.join(cg, "freezer.state"), "THAWED")
        if os.path.exists(os.path.join(cg, "cgroup.freeze")):
            _write(os.path.join(cg, "cgroup.freeze"), "0")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def kill_subtrees(subtrees: dict[str, tuple[int, int] | None]) -> bool:
    """Kill every process below ``subtrees`` until none is left; True if none is.

    ``subtrees`` maps each root to its identity when the worker started: a
    root removed and made again since (a new worker recovered the dir and
    started) is someone else's and never touched.
    """
    deadline = time.monotonic() + KILL_DEADLINE_S
    while True:
        ours = [root for root, ident in subtrees.items() if _identity(root) == ident]
        cgroups = _cgroups(ours)
        if not any(_pids(cg) for cg in cgroups):
            return True
        if time.monotonic() > deadline:
            return False
        _kill_round(cgroups)
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    read_fd = int(argv[1])
    subtrees = {root: _identity(root) for root in argv[2:]}  # the worker's, made before us
    said = b""
    while chunk := os.read(read_fd, 64):
        said += chunk
    if said == DONE:
        return 0
    if kill_subtrees(subtrees):
        return 0
    print(f"olactors watchdog: processes left below {list(subtrees)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
