"""A SIGKILLed worker takes its sandboxes with it, and `olactors serve` on its dir just works.

A supervisor (systemd, Kubernetes) restarts a crashed worker with the same
command.  The new worker takes the dir's lock (the dead one's went with its
process), recovers what the dead one left (its cgroup subtree with any frozen
sandbox in it, ``run/``) and serves; a worker whose dir is held by a live
worker is refused and touches nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from olactors.sock import worker_id

from .conftest import REPO, cgroup_dirs_named, child_processes, run_cli, write_function

pytestmark = pytest.mark.root

START_TIMEOUT_S = 60.0  # generous: the machine is shared; the figures are printed
RESTART_WITHIN_S = 20.0  # "within seconds" on a shared 2-core machine
DEATH_TIMEOUT_S = 5.0
MIN_CALLS_BEFORE_KILL = 40

FUNCTIONS = {
    "echo": "def f(event):\n    return event\n",
    "slow": "import time\ndef f(event):\n    time.sleep(0.3)\n    return event\n",
    "idle": "def f(event):\n    return {'idle': event}\n",
}


def state_of(pid: int) -> str | None:
    """The process's state letter, or None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if state in ("Z", "X") else state


def subtree_processes(subtrees: list[str]) -> dict[int, str]:
    """Live processes in any cgroup below ``subtrees`` -> their freezer state there."""
    found: dict[int, str] = {}
    for root in subtrees:
        for dirpath, _dirs, files in os.walk(root):
            if "cgroup.procs" not in files:
                continue
            freezer = "THAWED"
            if "freezer.state" in files:
                with open(os.path.join(dirpath, "freezer.state")) as f:
                    freezer = f.read().strip()
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                continue
            for pid in pids:
                if state_of(pid) is not None and found.get(pid) != "FROZEN":
                    found[pid] = freezer
    return found


class Worker:
    """`olactors serve` in a subprocess, logging to a file."""

    def __init__(self, path: Path, log: Path, *settings: str) -> None:
        self.path = path
        self.log = log
        self.started_at = time.monotonic()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "olactors.cli", "serve", "--path", str(path)]
                + [arg for s in ("server.port=0", *settings) for arg in ("--set", s)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.public = ""

    def wait_serving(self) -> float:
        """Wait until this process's endpoints are written and a call succeeds; seconds taken."""
        deadline = self.started_at + START_TIMEOUT_S
        endpoints = self.path / "run" / "endpoints.json"
        while True:
            assert self.proc.poll() is None, f"serve exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not serving: {self.log.read_text()[-3000:]}"
            try:
                data = json.loads(endpoints.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("pid") == self.proc.pid:
                self.public = data["public"]
                break
            time.sleep(0.02)
        assert self.call("echo", 1) == 1
        return time.monotonic() - self.started_at

    def call(self, name: str, event: object) -> object:
        r = httpx.post(f"{self.public}/run/{name}", json=event, timeout=20)
        assert r.status_code == 200, r.text
        return r.json()

    def admin(self, route: str) -> object:
        transport = httpx.HTTPTransport(uds=str(self.path / "admin.sock"))
        with httpx.Client(transport=transport, timeout=20) as client:
            r = client.get(f"http://admin{route}")
        assert r.status_code == 200, r.text
        return r.json()

    def sandboxes(self) -> list[dict]:
        return self.admin("/sandboxes")  # type: ignore[return-value]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def load(worker: Worker, names: list[str], threads: int = 4) -> Iterator[list[int]]:
    """Calls in a loop from a few threads until the block ends; yields [calls answered]."""
    stop = threading.Event()
    answered = [0]

    def run(i: int) -> None:
        with httpx.Client(timeout=5) as client:
            n = i
            while not stop.is_set():
                n += 1
                try:
                    r = client.post(f"{worker.public}/run/{names[n % len(names)]}", json=n)
                    if r.status_code == 200:
                        answered[0] += 1
                except httpx.HTTPError:
                    time.sleep(0.01)

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    try:
        yield answered
    finally:
        stop.set()
        for t in pool:
            t.join(timeout=10)


def wait_paused(worker: Worker, name: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for sb in worker.sandboxes():
            if sb["function"] == name and sb["state"] == "paused":
                return sb
        time.sleep(0.1)
    raise AssertionError(f"no paused sandbox of {name}: {worker.sandboxes()}")


def kill_under_load(worker: Worker, figures: dict[str, object], phase: str) -> list[str]:
    """Run load, pause ``idle``'s sandbox, SIGKILL the worker mid-load; check its sandboxes
    die (those the kernel lets die: a frozen one waits for its thaw).  Returns the dead
    worker's cgroup subtrees."""
    worker.call("idle", 0)
    with load(worker, ["echo", "slow"]) as answered:
        paused = wait_paused(worker, "idle")
        sandboxes = worker.sandboxes()
        kinds = sorted({(sb["kind"], sb["state"]) for sb in sandboxes})
        subtrees = json.loads((worker.path / "run" / "cgroups.json").read_text())["subtrees"]
        pids = [pid for sb in sandboxes for pid in sb["pids"]]
        deadline = time.monotonic() + 15
        while answered[0] < MIN_CALLS_BEFORE_KILL:  # well under way, calls in flight
            assert time.monotonic() < deadline, f"only {answered[0]} calls answered"
            time.sleep(0.05)
        worker.kill()
    killed_at = time.monotonic()
    assert paused["pids"] and pids
    # Every sandbox process dies with the worker: fresh ones of their parent-death
    # signal, forked ones with their zygote's PID namespace, and frozen (paused) ones,
    # which cgroup v1 lets die only once thawed, killed and thawed by the watchdog.
    while subtree_processes(subtrees) and time.monotonic() < killed_at + DEATH_TIMEOUT_S:
        time.sleep(0.02)
    left = subtree_processes(subtrees)
    figures[f"{phase}: sandboxes at the kill"] = kinds
    figures[f"{phase}: calls answered before the kill"] = answered[0]
    figures[f"{phase}: all sandbox processes gone after (s)"] = round(
        time.monotonic() - killed_at, 3
    )
    assert not left, f"sandbox processes outlived the worker (pid: freezer state): {left}"
    assert not [pid for pid in pids if state_of(pid) is not None]
    return subtrees


def assert_nothing_left_of(old_subtrees: list[str], old_pids: list[int], worker: Worker) -> None:
    """Nothing of a dead worker remains next to the running ``worker``."""
    assert not [pid for pid in old_pids if state_of(pid) is not None]
    live = {sb["id"] for sb in worker.sandboxes()}
    live_pids = {pid for sb in worker.sandboxes() for pid in sb["pids"]}
    sandbox_dirs = {p.name for p in (worker.path / "run" / "sandboxes").iterdir()}
    assert sandbox_dirs <= live, f"stale sandbox dirs: {sandbox_dirs - live}"
    subtrees = json.loads((worker.path / "run" / "cgroups.json").read_text())["subtrees"]
    for old in old_subtrees:
        assert old in subtrees or not os.path.exists(old), f"stale cgroup subtree {old}"
    strangers = set(subtree_processes(subtrees)) - live_pids
    assert not strangers, f"processes in the subtree that are no sandbox of the worker: {strangers}"


def test_spawned_child_dies_with_its_spawner(tmp_path: Path) -> None:
    """die_with_parent: a SIGKILLed spawner takes its child along (a fresh sandbox's case)."""
    spawner = textwrap.dedent(
        """
        import sys, time
        from olactors import native
        pid = native.spawn(native.SpawnSpec(
            path=sys.executable,
            argv=[sys.executable, "-c", "import time; time.sleep(60)"],
            env={}, die_with_parent=True,
        ))
        print(pid, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", spawner], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        assert state_of(child) is not None
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + DEATH_TIMEOUT_S
    while state_of(child) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state_of(child) is None, "the child outlived its spawner"


def test_restart_after_sigkill_under_load(tmp_path: Path) -> None:
    path = tmp_path / "worker"
    for name, source in FUNCTIONS.items():
        write_function(path / "registry", name, source)
    log = tmp_path / "serve.log"
    figures: dict[str, object] = {}
    wid = worker_id(path.resolve())
    worker = Worker(path, log, "import_cache.enabled=false")  # fresh leaves
    try:
        figures["first start (s)"] = round(worker.wait_serving(), 2)
        old_pids = [pid for sb in worker.sandboxes() for pid in sb["pids"]]
        subtrees = kill_under_load(worker, figures, "fresh leaves")

        worker = Worker(path, log)  # the same command a supervisor runs; leaves fork
        figures["restart after SIGKILL (s)"] = took = round(worker.wait_serving(), 2)
        assert took < RESTART_WITHIN_S
        assert_nothing_left_of(subtrees, old_pids, worker)
        old_pids = [pid for sb in worker.sandboxes() for pid in sb["pids"]]
        subtrees = kill_under_load(worker, figures, "forked leaves")

        worker = Worker(path, log)
        figures["second restart after SIGKILL (s)"] = took = round(worker.wait_serving(), 2)
        assert took < RESTART_WITHIN_S
        assert_nothing_left_of(subtrees, old_pids, worker)
        text = log.read_text()
        assert "recovering from a worker that did not shut down: removed cgroup subtree" in text
        worker.call("idle", 2)
        wait_paused(worker, "idle")
    finally:
        worker.stop()
    print(json.dumps(figures, indent=2, default=str))
    assert worker.proc.returncode == 0, log.read_text()[-3000:]
    assert not (path / "run").exists()
    assert not cgroup_dirs_named(f"olactors-{wid}")


def children_of(worker: Worker, word: bytes) -> list[int]:
    """The worker's live child processes whose command line holds ``word``."""
    found = []
    for pid in child_processes(worker.proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if word in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def watchdogs_of(worker: Worker) -> list[int]:
    """The worker's watchdog processes (its children running _watchdog.py)."""
    return children_of(worker, b"_watchdog.py")


def test_a_killed_watchdog_is_replaced_and_still_kills_frozen_sandboxes(tmp_path: Path) -> None:
    path = tmp_path / "worker"
    for name, source in FUNCTIONS.items():
        write_function(path / "registry", name, source)
    log = tmp_path / "serve.log"
    worker = Worker(path, log)
    try:
        worker.wait_serving()
        (first,) = watchdogs_of(worker)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not (replaced := [p for p in watchdogs_of(worker) if p != first]):
            assert time.monotonic() < deadline, "no new watchdog"
            time.sleep(0.05)
        assert watchdogs_of(worker) == replaced  # the dead one was reaped
        stats = worker.admin("/stats")
        assert stats["sandbox_anomalies"]["watchdog_restarts"] == 1  # type: ignore[index]
        assert f"the watchdog (pid {first}) exited" in log.read_text()

        worker.call("idle", 0)
        paused = wait_paused(worker, "idle")
        subtrees = json.loads((path / "run" / "cgroups.json").read_text())["subtrees"]
        worker.kill()
        killed_at = time.monotonic()
        # The frozen sandbox dies only if the new watchdog thaws and kills it.
        while subtree_processes(subtrees) and time.monotonic() < killed_at + DEATH_TIMEOUT_S:
            time.sleep(0.02)
        assert not subtree_processes(subtrees), subtree_processes(subtrees)
        assert not [pid for pid in paused["pids"] if state_of(pid) is not None]

        worker = Worker(path, log)  # recovers what is left (cgroups, run/)
        worker.wait_serving()
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, log.read_text()[-3000:]


def test_the_egress_rules_watcher_dies_with_the_worker(tmp_path: Path) -> None:
    """The worker follows ``nft monitor`` while its egress table exists; SIGKILLed,
    the worker leaves no monitor behind waiting for events forever."""
    path = tmp_path / "worker"
    write_function(path / "registry", "echo", FUNCTIONS["echo"])
    out = write_function(path / "registry", "out", FUNCTIONS["echo"])
    (out / "ol.yaml").write_text("network: egress\n")
    log = tmp_path / "serve.log"
    worker = Worker(path, log, "sandbox.network=egress")
    try:
        worker.wait_serving()
        assert worker.call("out", 5) == 5  # the table is made: the monitor starts
        deadline = time.monotonic() + 10
        while not (monitors := children_of(worker, b"monitor")):
            assert time.monotonic() < deadline, "no nft monitor"
            time.sleep(0.05)
        worker.kill()
        deadline = time.monotonic() + DEATH_TIMEOUT_S
        while [pid for pid in monitors if state_of(pid) is not None]:
            assert time.monotonic() < deadline, "nft monitor outlived the worker"
            time.sleep(0.02)
        worker = Worker(path, log)  # recovers the dead worker's table, veths and cgroups
        worker.wait_serving()
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, log.read_text()[-3000:]


def test_a_live_workers_dir_is_refused_and_untouched(tmp_path: Path) -> None:
    import trio

    from olactors._config import build_config
    from olactors.sock import AlreadyRunning, open_sock_pool

    path = tmp_path / "worker"
    write_function(path / "registry", "echo", FUNCTIONS["echo"])
    write_function(path / "registry", "idle", FUNCTIONS["idle"])
    worker = Worker(path, tmp_path / "serve.log")
    try:
        worker.wait_serving()
        worker.call("idle", 0)
        deadline = time.monotonic() + 10  # every sandbox paused: nothing changes on its own
        while any(sb["state"] != "paused" for sb in worker.sandboxes()):
            assert time.monotonic() < deadline, worker.sandboxes()
            time.sleep(0.1)

        def snapshot() -> dict[str, object]:
            subtrees = json.loads((path / "run" / "cgroups.json").read_text())["subtrees"]
            return {
                "endpoints": (path / "run" / "endpoints.json").read_text(),
                "admin.sock": os.stat(path / "admin.sock").st_ino,
                "run": sorted(str(p.relative_to(path)) for p in (path / "run").rglob("*")),
                "cgroups": sorted(cgroup_dirs_named(f"olactors-{worker_id(path.resolve())}")),
                "processes": subtree_processes(subtrees),
                "sandboxes": worker.sandboxes(),
            }

        before = snapshot()
        # Through the CLI (refused by the admin socket answering, or else the lock) ...
        r = run_cli("serve", "--path", str(path), "--set", "server.port=0")
        assert r.returncode == 2 and "already running" in r.stderr, r.stderr
        r = run_cli("cleanup", "--path", str(path))
        assert r.returncode == 2 and "already running" in r.stderr, r.stderr
        assert f"pid {worker.proc.pid}" in r.stderr

        # ... and the pool itself, whatever the admin socket says.
        async def second_pool() -> None:
            async with open_sock_pool(build_config(None), path):
                raise AssertionError("a second pool opened on a live worker's dir")

        with pytest.raises(AlreadyRunning) as refused:
            trio.run(second_pool)
        assert refused.value.status == 409 and refused.value.code == "already_running"
        assert snapshot() == before
        assert worker.call("echo", 3) == 3
        assert worker.call("idle", 4) == {"idle": 4}  # the paused one, unpaused
    finally:
        worker.stop()
    assert worker.proc.returncode == 0


def test_watchdog_never_touches_a_subtree_made_again(tmp_path: Path) -> None:
    """The dead worker's watchdog kills below the subtree it was started for, never below
    one made again at the same path (a new worker that recovered the dir): cgroupfs never
    reuses an inode number, so the root's identity tells them apart."""
    from olactors.sock._watchdog import _identity, kill_subtrees

    from .conftest import v1_layout

    layout = v1_layout()
    if layout is None:
        pytest.skip("needs the cgroup v1 pids hierarchy")
    own = layout.hierarchy_for("pids").own_dir
    root = Path(own) / f"olactors-watchdog-test-{os.getpid()}"
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (root / "cg-1").mkdir(parents=True)
        started_for = {str(root): _identity(str(root))}
        (root / "cg-1").rmdir()
        root.rmdir()
        (root / "cg-1").mkdir(parents=True)  # the new worker's subtree, same path
        (root / "cg-1" / "cgroup.procs").write_text(str(victim.pid))
        assert _identity(str(root)) != started_for[str(root)]
        assert kill_subtrees(started_for)
        time.sleep(0.1)
        assert victim.poll() is None, "the watchdog killed a process of another subtree"
    finally:
        victim.kill()
        victim.wait()
        for path in (root / "cg-1", root):
            deadline = time.monotonic() + 5
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)


def test_die_with_parent_is_refused_off_the_main_thread() -> None:
    """PR_SET_PDEATHSIG follows the creating *thread*: a spawn from a trio.to_thread
    worker thread would lose its sandbox when that idle thread exits."""
    from olactors import native

    spec = native.SpawnSpec(path=sys.executable, argv=[sys.executable, "-c", ""], env={})
    errors: list[BaseException] = []

    def spawn() -> None:
        try:
            native.spawn(dataclasses.replace(spec, die_with_parent=True))
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])
