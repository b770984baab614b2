"""`olactors bench cluster [--workers N] [--json]`: consistent hashing vs. round robin, for real.

One run, both routings, the same workload:

* **Real workers.**  For each routing, a fresh :func:`~.testbed.open_testbed`
  (``N`` workers in network-namespace hosts, the nginx code store, HAProxy
  from ``olactors cluster haproxy-config`` with ``--balance hash`` or
  ``roundrobin``).  ``FUNCTIONS`` functions are published once; each
  imports one of ``PACKAGES`` generated packages (wheels of 1 to 4 MB from
  an offline local index, so each worker installs a package, in its
  installer sandbox, the first time one of its functions needs it).  The
  workload is the same seeded sequence for both: ``calls`` calls of
  Zipf(1.0) popularity over the functions, Poisson arrivals at ``rate``
  req/s.  Figures: the cold-start share (the workers' own counts of calls
  that needed a new sandbox), p50/p99 latency at the client, and the
  installed-package disk of each worker (``du`` of its package store).
* **The simulation at scale** (:mod:`simulations.cluster_study`): N = 3, 10,
  30, 100 simulated workers (the real actors), each with the same share of
  the Zipf workload; ``--sim-scale 1`` is the issue's 100 workers, 10,000
  functions, 100,000 calls (minutes of CPU); the default is a tenth of that.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from .._errors import OlactorsError
from ..cluster.haproxy import Balance
from ..packages import Pin, write_lock
from ..packages._wheel import write_wheel
from ..simulation._workload import Zipf, poisson_times
from ._stats import p50, p99
from .testbed import LocalCluster, open_testbed

FUNCTIONS = 24
PACKAGES = 8
SEED = 1


def _package_name(index: int) -> str:
    return f"olbench{index}"


def build_wheels(dest: Path) -> dict[str, int]:
    """``PACKAGES`` wheels, package ``i`` holding ``1 + i % 4`` MB of data; name -> bytes."""
    rng = random.Random(SEED)
    sizes = {}
    for index in range(PACKAGES):
        name = _package_name(index)
        size = (1 + index % 4) << 20
        files = {
            f"{name}/__init__.py": b"VALUE = 1\n",
            f"{name}/data.bin": rng.randbytes(size),
        }
        write_wheel(dest, name, "1.0", files)
        sizes[name] = size
    return sizes


def function_package(index: int) -> str:
    """The package function ``index`` imports (popular packages serve more functions)."""
    return _package_name(int(PACKAGES * (index / FUNCTIONS) ** 2))


def write_function(root: Path, index: int) -> Path:
    package = function_package(index)
    directory = root / f"f{index:02d}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "f.py").write_text(
        f"import {package}\n\ndef f(event):\n    return {{'v': {package}.VALUE}}\n"
    )
    (directory / "requirements.txt").write_text(f"{package}\n")
    write_lock(directory, [Pin(package, "1.0")])
    return directory


def workload(calls: int, rate: float) -> list[tuple[float, str]]:
    """The seeded (time, function) sequence both routings play."""
    rng = random.Random(SEED)
    zipf = Zipf(FUNCTIONS, 1.0)
    times = poisson_times(rng, rate, 0.0, float("inf"))
    return [(next(times), f"f{zipf.draw(rng):02d}") for _ in range(calls)]


def _installed_bytes(store: Path) -> int:
    """Bytes of the installed distributions in a worker's package store
    (``<name>/<version>/``; not the store's own hidden dirs: pip's tools, staging)."""
    if not store.is_dir():
        return 0
    return sum(
        p.stat().st_size
        for top in store.iterdir()
        if top.is_dir() and not top.name.startswith(".")
        for p in top.rglob("*")
        if p.is_file() and not p.is_symlink()
    )


async def _measure(
    bed: LocalCluster, plan: list[tuple[float, str]], functions: Path
) -> dict[str, Any]:
    for index in range(FUNCTIONS):
        await bed.publish_async(f"f{index:02d}", write_function(functions, index))
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    failures: list[str] = []
    # A fresh connection per call: on a reused client connection HAProxy answers
    # a call whose worker closed its idle connection first (the keep-alive race)
    # by closing the client's, unanswered.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:

        async def call(name: str) -> None:
            t0 = time.perf_counter()
            r = await client.post(f"{bed.balancer_url}/run/{name}", json={})
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            if r.status_code != 200:
                failures.append(r.text[:1000])

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for at, name in plan:
                await trio.sleep_until(start + at)
                nursery.start_soon(call, name)
    if len(failures) > len(plan) // 2:  # figures of failed calls would mislead
        raise OlactorsError(f"{len(failures)} of {len(plan)} calls failed, e.g. {failures[0]}")
    cold = warm = 0
    per_worker: list[dict[str, Any]] = []
    disks: list[float] = []
    for w in bed.workers:
        stats = await bed.admin(w, "GET", "/stats")
        calls = 0
        for f in stats["functions"].values():
            cold += f["cold_starts"]
            warm += f["warm_starts"]
            calls += f["invocations"]
        disks.append(round(_installed_bytes(w.directory / "packages") / 2**20, 1))
        per_worker.append(
            {
                "worker": w.address,
                "calls": calls,
                "functions": len(stats["functions"]),
                "package_disk_mb": disks[-1],
            }
        )
    return {
        "calls": len(plan),
        "statuses": statuses,
        "cold_start_share": round(cold / (cold + warm), 4) if cold + warm else 0.0,
        "cold_starts": cold,
        "p50_ms": round(p50(latencies), 1),
        "p99_ms": round(p99(latencies), 1),
        "package_disk_mb_mean": round(sum(disks) / len(disks), 1),
        "package_disk_mb_max": max(disks),
        "workers": per_worker,
    }


async def measure_real(workers: int, calls: int, rate: float, work: Path) -> dict[str, Any]:
    wheels = work / "wheels"
    build_wheels(wheels)
    wheels.chmod(0o755)
    settings = [
        "packages.offline=true",
        f"packages.find_links=[{json.dumps(str(wheels))}]",
        "registry.cache_s=5",
    ]
    plan = workload(calls, rate)
    out: dict[str, Any] = {}
    for balance in (Balance.HASH, Balance.ROUNDROBIN):
        bed_dir = work / balance.value
        async with open_testbed(bed_dir, workers, settings, balance=balance) as bed:
            out[balance.value] = await _measure(bed, plan, work / "functions")
        shutil.rmtree(bed_dir, ignore_errors=True)
    return out


def run_simulation(scale: float) -> dict[str, Any]:
    from simulations.cluster_study import format_study, run_study

    rows = run_study(SEED, scale=scale)
    return {
        "scale": scale,
        "table": format_study(rows),
        "runs": [
            {"workers": r.workers, "routing": r.routing.value, **r.result.summary} for r in rows
        ],
    }


def format_real(figures: dict[str, Any], workers: int) -> str:
    lines = [
        f"| routing ({workers} real workers) | cold-start share | p50 ms | p99 ms "
        "| package disk/worker MB (mean, max) | statuses |",
        "|---|---|---|---|---|---|",
    ]
    for routing, f in figures.items():
        lines.append(
            f"| {routing} | {f['cold_start_share']} | {f['p50_ms']} | {f['p99_ms']} | "
            f"{f['package_disk_mb_mean']}, {f['package_disk_mb_max']} | {f['statuses']} |"
        )
    return "\n".join(lines)


def run(workers: int, calls: int, rate: float, sim_scale: float, as_json: bool) -> int:
    if workers < 1 or calls < 1 or rate <= 0 or sim_scale <= 0:
        raise OlactorsError("--workers, --calls, --rate and --sim-scale must be positive")
    work = Path(tempfile.mkdtemp(prefix="olactors-bench-cluster-"))
    work.chmod(0o755)
    try:
        real = trio.run(measure_real, workers, calls, rate, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not as_json:
        print(f"{calls} calls (Zipf over {FUNCTIONS} functions, {PACKAGES} packages), {rate} req/s")
        print(format_real(real, workers))
        print(f"\nsimulation at scale (--sim-scale {sim_scale}) ...", flush=True)
    simulated = run_simulation(sim_scale)
    if as_json:
        print(json.dumps({"real": real, "simulation": simulated}))
    else:
        print(simulated["table"])
    return 0
