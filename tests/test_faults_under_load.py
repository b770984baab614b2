"""Faults under load: a real worker (SOCK sandboxes) serves mixed load while
faults are injected from outside, and every rule of the worker must hold.

Load: about :data:`RATE` calls a second for :data:`LOAD_S` seconds (override
with ``OLACTORS_FAULT_LOAD_S`` for longer manual runs) over 20 functions:
plain ones (leaves forked from the root zygote), ``reuse_sandbox: false``
ones (a new sandbox per call), ones with packages (forked from per-version
package zygotes), and "churn" functions whose required version moves on
during the run (each move is an install in an installer sandbox).  A few
calls ask to sleep past their runtime limit.

Faults, one every :data:`FAULT_EVERY_S` on average: SIGKILL a random leaf, a
random zygote, any installer sandbox (pids from the admin ``/sandboxes``);
freeze a random sandbox's cgroup (found under the subtree recorded in
``run/cgroups.json``) and thaw it a moment later; publish a code update
(registry dir write or admin upload).

Checked: every call gets exactly one answer, a success carrying its own id or
an error whose code names its cause (:data:`CAUSES`); none waits past its
runtime limit in the queue plus its start and its run (:data:`CALL_LIMIT_S`;
cold starts of package functions may also wait for their install, up to
``packages.install_timeout_s``); the memory
ledger always equals the reservations of the live sandboxes (the admin
``/stats`` ``memory_accounting``, read in one synchronous step inside the
worker); once the functions idle out only the zygotes' reservations remain;
after the worker stops no process, cgroup, mount or sandbox dir is left.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .load_tools import (
    OK,
    LoadRecord,
    RawClient,
    cgroup_holding,
    kill_all,
    leftovers,
    open_loop,
    raw_timed_call,
    sandboxes,
    set_frozen,
    timed_call,
)
from .test_http_api import FAST_CONFIG, Served, serving, tar_gz, write_fn
from .wheel_factory import WheelSpec, build_standard_wheels, build_wheel

LOAD_S = float(os.environ.get("OLACTORS_FAULT_LOAD_S", "90"))
SEED = int(os.environ.get("OLACTORS_FAULT_SEED", "11"))
RATE = 50.0  # calls a second
CONNECTIONS = 256  # the client's keep-alive connections: calls in flight at once, at most
FAULT_EVERY_S = 0.5
CHURN_EVERY_S = 8.0  # a churn function requires the next version this often
RUNTIME_S = 3.0  # every function's limits.runtime_s
SLACK_S = 10.0  # for a sandbox's start (memory, fork or fresh start, import)
# The longest a call may take: a wait in the queue (at most its runtime limit:
# beyond it the worker answers 429), its sandbox's start, and its run.
CALL_LIMIT_S = 2 * RUNTIME_S + SLACK_S
INSTALL_TIMEOUT_S = 30.0
LONG_SLEEP_S = RUNTIME_S + 2  # a few calls sleep this long: 504 timeout
CHURN_VERSIONS = int(LOAD_S // CHURN_EVERY_S) * 2 + 4

# What a call may answer, and why each can happen under these faults.
CAUSES = {
    OK,
    "502 sandbox_died",  # its leaf (or the zygote whose PID namespace it lives in) was killed
    "504 timeout",  # it slept past its runtime limit, or its sandbox was frozen that long
    "500 sandbox_unavailable",  # no sandbox could be started twice in a row (zygote killed)
    "503 function_failing",  # too many sandbox deaths in a row: the function cools down
    "503 memory_exhausted",  # every reservation waited memory.reserve_timeout_s
    "500 package_install_failed",  # its installer sandbox was killed (the worker's side failed)
    "429 queue_full",  # more calls queued than queue.max_depth, or queued past the runtime limit
}

HANDLER = """
import time
{imports}
VERSION = {version}

def f(event):
    time.sleep(event.get("sleep", 0))
    return {{"id": event["id"], "version": VERSION{extra}}}
"""

TREE = """
root:
  name: root
  imports: [json]
  children:
    - name: alpha
      packages: [alpha]
    - name: gamma
      packages: [gamma]
"""


def source(version: int, package: str | None = None) -> str:
    if package is None:
        return HANDLER.format(imports="", version=version, extra="")
    return HANDLER.format(
        imports=f"import {package}", version=version, extra=f', "package": {package}.VERSION'
    )


OL_YAML = f"limits:\n  runtime_s: {RUNTIME_S}\n  mem_mb: 64\n"
FRESH_OL_YAML = OL_YAML + "reuse_sandbox: false\n"

PLAIN = [f"plain-{i}" for i in range(8)]
FRESH = [f"fresh-{i}" for i in range(4)]
PACKAGED = {"alpha1-a": "alpha==1.0", "alpha1-b": "alpha==1.0", "alpha2": "alpha==2.0"}
PACKAGED["gamma"] = "gamma==1.0"
CHURN = [f"churn-{i}" for i in range(4)]
FUNCTIONS = PLAIN + FRESH + list(PACKAGED) + CHURN
assert len(FUNCTIONS) == 20


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    dest = build_standard_wheels(tmp_path_factory.mktemp("wheels"))
    for n in range(1, CHURN_VERSIONS + 1):
        build_wheel(WheelSpec("churn", f"{n}.0"), dest)
    dest.chmod(0o755)  # the installer runs unprivileged
    return dest


def settings(wheels: Path, tmp_path: Path) -> tuple[str, ...]:
    tree = tmp_path / "zygotes.yaml"
    tree.write_text(TREE)
    return (
        "packages.offline=true",
        f"packages.find_links=[{json.dumps(str(wheels))}]",
        f"packages.install_timeout_s={INSTALL_TIMEOUT_S}",
        f"import_cache.tree={tree}",
        "memory.pool_mb=6144",
        "limits.zygote_mem_mb=256",
        "functions.max_instances=4",
        "memory.reserve_timeout_s=5",
        "functions.idle_timeout_s=4",
        "functions.restart_period_s=5",
        "functions.failure_cooldown_s=2",
        "registry.cache_s=1",
        "sandbox.cgroup_pool_size=8",
        "packages.install_mem_mb=256",
        "server.shutdown_timeout_s=10",
    )


def publish_all(registry: Path) -> dict[str, int]:
    """Every function at version 1; churn functions require churn==1.0 (and so on)."""
    for name in PLAIN:
        write_fn(registry, name, source(1), OL_YAML)
    for name in FRESH:
        write_fn(registry, name, source(1), FRESH_OL_YAML)
    for name, requirement in PACKAGED.items():
        code = write_fn(registry, name, source(1, requirement.split("==")[0]), OL_YAML)
        (code / "requirements.txt").write_text(requirement + "\n")
    for i, name in enumerate(CHURN):
        code = write_fn(registry, name, source(1, "churn"), OL_YAML)
        (code / "requirements.txt").write_text(f"churn=={i + 1}.0\n")
    return {name: 1 for name in FUNCTIONS}


@dataclass
class OwnPoolRun:
    served: Served
    left_after_stop: list[str] = field(default_factory=list)  # sandboxes the worker left


@asynccontextmanager
async def serving_on_own_pool(worker_dir: Path, *overrides: str) -> AsyncIterator[OwnPoolRun]:
    """:func:`serving`, but on a SOCK pool this test opens, so that once the worker
    has drained and stopped, what it left in the pool (before the pool's own
    close destroys it) is seen: ``left_after_stop``."""
    from olactors.serve import serve
    from olactors.sock import open_sock_pool
    from olactors.worker_dir import init_worker_dir

    config = init_worker_dir(worker_dir, ["server.port=0", *FAST_CONFIG, *overrides])
    async with open_sock_pool(config, worker_dir) as pool:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            start = partial(serve, config, worker_dir, shutdown=stop, pool=pool)
            endpoints = await nursery.start(start)
            run = OwnPoolRun(Served(endpoints["public"], endpoints["admin"], worker_dir, stop))
            try:
                yield run
            finally:
                stop.set()
        run.left_after_stop = [f"{sb.id} ({sb.meta.label})" for sb in pool.sandboxes()]


class Faults:
    """Injects faults into the worker behind ``admin``; counts what it did."""

    def __init__(self, worker_dir: Path, admin: httpx.AsyncClient, rng: random.Random) -> None:
        self.worker_dir = worker_dir
        self.registry = worker_dir / "registry"
        self.admin = admin
        self.rng = rng
        self.done: Counter[str] = Counter()
        self.frozen: set[Path] = set()
        self.pids_seen: set[int] = set()
        self.versions = {name: 1 for name in FUNCTIONS}
        self.churn_next = len(CHURN) + 1
        self.installers_hit: set[str] = set()

    async def run(self, until: float) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._churn, until)
            while trio.current_time() < until:
                await trio.sleep(self.rng.expovariate(1 / FAULT_EVERY_S))
                await self.one(nursery)
                await self._installers()
        await self.thaw_all()

    async def _listing(self) -> list[dict[str, Any]]:
        found = await sandboxes(self.admin)
        for sb in found:
            self.pids_seen.update(sb["pids"])
        return found

    async def one(self, nursery: trio.Nursery) -> None:
        kind = self.rng.choices(
            ["kill_leaf", "kill_zygote", "freeze", "update"], weights=[35, 15, 30, 20]
        )[0]
        listing = await self._listing()
        leaves = [sb for sb in listing if sb["kind"] == "leaf" and sb["function"] in FUNCTIONS]
        zygotes = [sb for sb in listing if sb["kind"] == "zygote"]
        if kind == "kill_leaf":
            running = [sb for sb in leaves if sb["state"] == "running" and sb["pids"]]
            if running and kill_all(self.rng.choice(running)["pids"]):
                self.done["SIGKILL leaf"] += 1
        elif kind == "kill_zygote":
            if zygotes:
                victim = self.rng.choice(zygotes)
                if not victim["pids"]:
                    return
                if self.rng.random() < 0.5 and kill_all(victim["pids"]):
                    self.done["SIGKILL zygote"] += 1
                elif kill_all([self.rng.choice(victim["pids"])]):
                    # One of its processes: the zygote itself, or its spare child.
                    self.done["SIGKILL a zygote process"] += 1
        elif kind == "freeze":
            candidates = [sb for sb in listing if sb["state"] == "running" and sb["pids"]]
            if candidates:
                victim = self.rng.choice(candidates)
                cgroup = cgroup_holding(self.worker_dir, victim["pids"][0])
                if cgroup is not None and cgroup not in self.frozen and set_frozen(cgroup, True):
                    self.frozen.add(cgroup)
                    self.done[f"freeze {victim['kind']}"] += 1
                    nursery.start_soon(self._thaw_later, cgroup, self.rng.uniform(0.2, 1.5))
        else:
            await self.update(self.rng.choice(PLAIN + FRESH))

    async def update(self, name: str) -> None:
        """A new version of ``name``: half the time written into the registry dir,
        half the time uploaded through the admin API."""
        self.versions[name] += 1
        text = source(self.versions[name])
        yaml = FRESH_OL_YAML if name in FRESH else OL_YAML
        if self.rng.random() < 0.5:
            write_fn(self.registry, name, text, yaml)
            self.done["code update (registry dir)"] += 1
        else:
            r = await self.admin.post(
                f"/registry/{name}", content=tar_gz({"f.py": text, "ol.yaml": yaml})
            )
            assert r.status_code == 201, r.text
            self.done["code update (admin upload)"] += 1

    async def _churn(self, until: float) -> None:
        while trio.current_time() + CHURN_EVERY_S < until:
            await trio.sleep(CHURN_EVERY_S)
            name = self.rng.choice(CHURN)
            if self.churn_next > CHURN_VERSIONS:
                return
            code = self.registry / name
            (code / "requirements.txt").write_text(f"churn=={self.churn_next}.0\n")
            self.churn_next += 1
            self.done["package update"] += 1

    async def _installers(self) -> None:
        for sb in await self._listing():
            label = sb["label"] or ""
            if label.startswith("installer") and sb["id"] not in self.installers_hit:
                self.installers_hit.add(sb["id"])
                if self.rng.random() < 0.5 and kill_all(sb["pids"]):
                    self.done["SIGKILL installer"] += 1

    async def _thaw_later(self, cgroup: Path, after: float) -> None:
        await trio.sleep(after)
        set_frozen(cgroup, False)
        self.frozen.discard(cgroup)

    async def thaw_all(self) -> None:
        for cgroup in list(self.frozen):
            set_frozen(cgroup, False)
        self.frozen.clear()


async def accounting(admin: httpx.AsyncClient) -> dict[str, Any]:
    r = await admin.get("/stats")
    r.raise_for_status()
    return r.json()["memory_accounting"]


@pytest.mark.root
async def test_faults_under_mixed_load(wheels: Path, worker_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    publish_all(worker_dir / "registry")
    record = LoadRecord()
    ledger_samples = 0
    ledger_errors: list[Any] = []
    peak: list[tuple[int, dict[str, int]]] = []  # (MB reserved, sandboxes by kind and state)
    late: list[Any] = []
    pids_seen: set[int] = set()
    faults_done: Counter[str] = Counter()
    phases: dict[str, float] = {}
    started = trio.current_time()
    with trio.fail_after(LOAD_S + 150):
        async with serving_on_own_pool(worker_dir, *settings(wheels, tmp_path)) as run:
            served = run.served
            async with (
                served.admin_client() as admin,
                served.client(limits=httpx.Limits(max_connections=200)) as client,
            ):
                # Warm, all at once: each function answers once before the faults start.
                warm: dict[str, Any] = {}

                async def warm_up(name: str) -> None:
                    warm[name] = await timed_call(client, name, {"id": f"warm-{name}"}, 120)

                async with trio.open_nursery() as nursery:
                    for name in FUNCTIONS:
                        nursery.start_soon(warm_up, name)
                assert all(o.label == OK for o in warm.values()), warm
                phases["warm"] = trio.current_time() - started

                async def one(i: int) -> None:
                    name = FUNCTIONS[i % len(FUNCTIONS)]
                    sleep = LONG_SLEEP_S if rng.random() < 0.01 else rng.uniform(0, 0.05)
                    limit = CALL_LIMIT_S
                    if name in PACKAGED or name in CHURN:
                        limit += INSTALL_TIMEOUT_S
                    outcome = await raw_timed_call(raw, name, {"id": i, "sleep": sleep}, limit + 5)
                    record.add(outcome)
                    if outcome.latency_s > limit:
                        late.append((outcome, limit))

                async def sample_ledger(done: trio.Event) -> None:
                    nonlocal ledger_samples
                    while not done.is_set():
                        stats = (await admin.get("/stats")).json()
                        books = stats["memory_accounting"]
                        ledger_samples += 1
                        peak.append((books["used_mb"], stats["sandboxes"]))
                        if books["discrepancies"]:
                            ledger_errors.append(books)
                        await trio.sleep(0.5)

                faults = Faults(worker_dir, admin, rng)
                done = trio.Event()
                raw = RawClient(served.public, CONNECTIONS, backlog=CONNECTIONS)
                async with trio.open_nursery() as nursery:
                    await nursery.start(raw.run)
                    nursery.start_soon(sample_ledger, done)
                    nursery.start_soon(faults.run, trio.current_time() + LOAD_S)
                    await open_loop(RATE, LOAD_S, one, CONNECTIONS, record)
                    done.set()
                    raw.close()
                faults_done = faults.done
                pids_seen = faults.pids_seen

                # The functions idle out: only zygotes (and their reservations) remain.
                with trio.fail_after(60):
                    while True:
                        listing = await sandboxes(admin)
                        pids_seen.update(pid for sb in listing for pid in sb["pids"])
                        books = await accounting(admin)
                        if (
                            not any(sb["kind"] == "leaf" for sb in listing)
                            and not books["discrepancies"]
                        ):
                            break
                        await trio.sleep(0.5)
                zygote_mb = sum(sb["mem_limit_mb"] for sb in listing if sb["kind"] == "zygote")
                stats = (await admin.get("/stats")).json()
                phases["load and idle-out"] = trio.current_time() - started - phases["warm"]
        phases["stop"] = trio.current_time() - started - sum(phases.values())

    labels = record.by_label()
    print(
        f"\nfaults under load ({LOAD_S:g} s at {RATE:g}/s over {len(FUNCTIONS)} functions, "
        f"seed {SEED}):\n  {record.summary()}\n"
        f"  faults: {dict(sorted(faults_done.items()))}\n"
        f"  ledger samples {ledger_samples}, discrepancies {len(ledger_errors)}; "
        f"after idle-out {books['used_mb']} MB = zygotes {zygote_mb} MB; "
        f"peak {max(peak, key=lambda p: p[0]) if peak else None}\n"
        f"  worker: evictions {stats['evictions']}, escalations {stats['escalations']}, "
        f"cgroup anomalies {stats.get('cgroup_anomalies')}\n"
        f"  over their limit: {Counter((o.function, o.label) for o, _ in late).most_common(12)}\n"
        f"  examples: {json.dumps(record.examples(), indent=2)}\n"
        f"  phases (s): { {k: round(v, 2) for k, v in phases.items()} }"
    )
    assert set(labels) <= CAUSES, {k: v for k, v in labels.items() if k not in CAUSES}
    assert not record.duplicate_request_ids()
    # The worker's own books: every call it received counted once, refusals and errors alike.
    counted = Counter()
    for entry in stats["functions"].values():
        counted["calls"] += entry["invocations"]
        counted["429"] += entry["rejected_429"]
        counted["5xx"] += entry["errors"]
    sent = Counter(
        calls=len(record.outcomes) + len(FUNCTIONS),
        **{"429": labels["429 queue_full"]},
        **{"5xx": sum(n for label, n in labels.items() if label[:1] == "5")},
    )
    assert counted == sent, (counted, sent)
    assert not late, late[:10]
    assert not ledger_errors, ledger_errors[:3]
    assert books["used_mb"] == zygote_mb and books["pending_mb"] == 0, books
    # The drained worker released every sandbox itself: with the ledger always equal
    # to the live sandboxes' limits, nothing stays reserved.
    assert run.left_after_stop == [], run.left_after_stop
    assert labels[OK] > 0.5 * len(record.outcomes), labels
    assert faults_done["SIGKILL leaf"] and faults_done["SIGKILL zygote"], faults_done
    left = leftovers(worker_dir, pids_seen)
    staging = worker_dir / "packages" / ".staging"  # killed installs leave no half-installs
    left += [f"staging dir {d}" for d in staging.iterdir()] if staging.exists() else []
    assert not left, left


@pytest.mark.root
async def test_zygote_killed_while_a_child_is_paused_is_rebuilt(worker_dir: Path) -> None:
    """A SIGKILLed zygote whose child leaf is paused (frozen) cannot finish
    exiting (its PID namespace waits for the frozen child), so the worker does
    not see it die, yet its socket is closed: every fork from it fails.  After
    two failed forks in a row the import cache gives it up and builds a new one,
    instead of starting every new sandbox fresh until the child is thawed."""
    registry = worker_dir / "registry"
    for name in ("held", "one", "two", "three", "four"):
        write_fn(registry, name, source(1))
    settings = ("functions.pause_after_s=0.2", "import_cache.pause_after_s=60")
    async with serving(worker_dir, *settings) as served:
        async with served.admin_client() as admin, served.client() as client:
            assert (await timed_call(client, "held", {"id": 0}, 60)).label == OK
            with trio.fail_after(10):  # held's leaf pauses: it is frozen in the zygote's namespace
                while not any(
                    sb["function"] == "held" and sb["state"] == "paused"
                    for sb in await sandboxes(admin)
                ):
                    await trio.sleep(0.05)
            (zygote,) = [sb for sb in await sandboxes(admin) if sb["kind"] == "zygote"]
            assert zygote["state"] == "running" and kill_all(zygote["pids"])
            await trio.sleep(0.5)
            for i, name in enumerate(("one", "two", "three", "four")):
                assert (await timed_call(client, name, {"id": i}, 60)).label == OK
            cache = (await admin.get("/stats")).json()["import_cache"]
            listing = await sandboxes(admin)
    (root,) = cache
    zygotes = [sb for sb in listing if sb["kind"] == "zygote" and sb["state"] == "running"]
    assert root["builds"] == 2 and root["sandbox"] != zygote["id"], (root, zygote)
    assert [sb["id"] for sb in zygotes] == [root["sandbox"]], listing


def test_memory_accounting_names_every_disagreement() -> None:
    """The books balance only when the ledger equals the bound and pending
    reservations, every bound sandbox is live at its limit, and every live
    sandbox holds a reservation (or one is pending for it)."""
    from olactors.actors.mempool import MemAccounting

    live = {"sb-1": 256, "sb-2": 64}
    creating = {**live, "sb-3": 64}  # sb-3's reservation is granted, its bind not yet heard
    assert MemAccounting(384, {"sb-1": 256, "sb-2": 64}, (64,), creating).discrepancies() == []
    assert MemAccounting(320, {"sb-1": 256}, (64,), live).discrepancies() == []
    problems = {
        "ledger says 400 MB": MemAccounting(400, {"sb-1": 256, "sb-2": 64}, (), live),
        "bound to sb-9, which was released": MemAccounting(
            384, {"sb-1": 256, "sb-2": 64, "sb-9": 64}, (), live
        ),
        "sb-2 reserved 128 MB but its limit is 64 MB": MemAccounting(
            384, {"sb-1": 256, "sb-2": 128}, (), live
        ),
        "hold no reservation": MemAccounting(256, {"sb-1": 256}, (), live),
    }
    for expected, books in problems.items():
        found = books.discrepancies()
        assert len(found) == 1 and expected in found[0], (expected, found)
