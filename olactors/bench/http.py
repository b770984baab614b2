"""`olactors bench http`: the worker over real HTTP vs. a bare quart-trio app.

One run, side by side on the same machine and in the same process:

* a real worker (:func:`olactors.serve.serve` on port 0, in a temporary
  worker dir under /tmp, removed afterwards) serving an echo function:
  warm throughput and p50/p99 latency at concurrency 1 and 16 (httpx,
  HTTP/1.1 keep-alive, one client per concurrent task);
* a bare quart-trio app that echoes the body, served by hypercorn with the
  same settings: the same two measurements;
* cold starts: the first call of each of ``COLD_FUNCTIONS`` never-seen
  copies of echo;
* a raw fork+exit+wait of a process as large as the worker's zygote
  (:func:`olactors.bench.sandbox.raw_fork_samples`).

The load generator runs on the worker's own trio loop, so it competes with
the worker (and its sandboxes) for the machine's CPUs; the bare app pays the
same cost, which keeps the ratios fair but the absolute figures low.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from quart import request
from quart_trio import QuartTrio

from .._config import Config
from .._errors import OlactorsError
from ._stats import p50, p99
from .sandbox import ECHO, raw_fork_samples, rss_bytes

PAYLOAD = b'{"n": 1}'
COLD_FUNCTIONS = 20
CONCURRENCY = 16
WARMUP_S = 1.0
RAW_FORK_SAMPLES = 60
FALLBACK_ZYGOTE_BYTES = 32 << 20
NOTE = (
    "the load generator runs in the worker's process (same trio loop) and competes with "
    "the worker and its sandboxes for the machine's {cpus} CPUs"
)


def bare_app() -> QuartTrio:
    """The baseline: a quart-trio app that echoes the request body."""
    app = QuartTrio("olactors-bench-bare")

    @app.route("/", methods=["GET", "POST"])
    async def echo() -> tuple[str | bytes, int, dict[str, str]]:
        return await request.get_data(), 200, {"content-type": "application/json"}

    return app


async def timed_load(url: str, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """``concurrency`` keep-alive clients POSTing ``PAYLOAD`` for ``seconds``.

    Returns (requests per second, latencies in ms).  Any non-200 answer aborts
    the benchmark with its body.
    """
    latencies: list[float] = []
    deadline = trio.current_time() + seconds

    async def one_client() -> None:
        async with httpx.AsyncClient(timeout=60.0) as client:
            while trio.current_time() < deadline:
                t0 = time.perf_counter()
                response = await client.post(url, content=PAYLOAD)
                latencies.append((time.perf_counter() - t0) * 1000)
                if response.status_code != 200:
                    raise OlactorsError(
                        f"{url} answered {response.status_code}: {response.text[:500]}"
                    )

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(one_client)
    return len(latencies) / (time.perf_counter() - t0), latencies


async def measure_target(url: str, seconds: float) -> dict[str, float]:
    """Warm ``url`` up, then c1 and c16 runs of ``seconds`` each."""
    await timed_load(url, CONCURRENCY, WARMUP_S)
    rps_c1, lat_c1 = await timed_load(url, 1, seconds)
    await timed_load(url, CONCURRENCY, WARMUP_S)
    rps_c16, lat_c16 = await timed_load(url, CONCURRENCY, seconds)
    return {
        "rps_c1": rps_c1,
        "p50_ms_c1": p50(lat_c1),
        "p99_ms_c1": p99(lat_c1),
        "rps_c16": rps_c16,
        "p50_ms_c16": p50(lat_c16),
        "p99_ms_c16": p99(lat_c16),
    }


async def cold_calls(public: str, names: list[str]) -> list[float]:
    """The first call of each never-seen function, one at a time."""
    out = []
    async with httpx.AsyncClient(timeout=60.0) as client:
        for name in names:
            t0 = time.perf_counter()
            response = await client.post(f"{public}/run/{name}", content=PAYLOAD)
            out.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                raise OlactorsError(f"cold {name} answered {response.status_code}: {response.text}")
    return out


async def zygote_rss(admin_socket: str) -> int:
    """The largest live zygote's RSS (from the admin API), or a nominal size if none."""
    transport = httpx.AsyncHTTPTransport(uds=admin_socket)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        sandboxes = (await client.get("/sandboxes")).json()
    sizes = []
    for sb in sandboxes:
        if sb.get("kind") == "zygote" and sb.get("state") != "dead":
            for pid in sb.get("pids", [])[:1]:
                try:
                    sizes.append(rss_bytes(pid))
                except OSError:
                    pass
    return max(sizes, default=FALLBACK_ZYGOTE_BYTES)


async def measure(seconds: float, worker_dir: Path) -> dict[str, Any]:
    from ..serve import bind_tcp, serve, serve_app
    from ..worker_dir import init_worker_dir

    config: Config = init_worker_dir(worker_dir, ["server.port=0"])
    registry = worker_dir / "registry"
    cold_names = [f"cold-{i:02d}" for i in range(COLD_FUNCTIONS)]
    for name in ["echo", *cold_names]:
        (registry / name).mkdir(parents=True)
        (registry / name / "f.py").write_text(ECHO)
    figures: dict[str, Any] = {}
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        endpoints = await nursery.start(partial(serve, config, worker_dir, shutdown=stop))
        try:
            warm = await measure_target(f"{endpoints['public']}/run/echo", seconds)
            bare_stop = trio.Event()
            bare_sock = bind_tcp("127.0.0.1", 0)
            try:
                await nursery.start(serve_app, bare_app(), bare_sock, config, bare_stop.wait)
                host, port = bare_sock.getsockname()[:2]
                bare = await measure_target(f"http://{host}:{port}/", seconds)
            finally:
                bare_stop.set()
                bare_sock.close()
            cold = await cold_calls(endpoints["public"], cold_names)
            figures["zygote_rss_mb"] = await zygote_rss(endpoints["admin"]) / (1 << 20)
        finally:
            stop.set()
    figures.update({f"warm_{k}": v for k, v in warm.items()})
    figures.update({f"bare_{k}": v for k, v in bare.items()})
    figures["cold_p50_ms"] = p50(cold)
    figures["cold_p99_ms"] = p99(cold)
    return figures


def report(f: dict[str, Any]) -> str:
    lines = [f"{'':36} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}"]
    for label, prefix in (("olactors echo (warm)", "warm"), ("bare quart-trio echo", "bare")):
        for c in (1, CONCURRENCY):
            lines.append(
                f"{f'{label}, c{c}':36} {f[f'{prefix}_rps_c{c}']:9.0f} "
                f"{f[f'{prefix}_p50_ms_c{c}']:9.3f} {f[f'{prefix}_p99_ms_c{c}']:9.3f}"
            )
    cold_label = f"cold first call ({f['cold_functions']} functions)"
    lines.append(f"{cold_label:36} {'':9} {f['cold_p50_ms']:9.3f} {f['cold_p99_ms']:9.3f}")
    lines.append(f"{'raw fork+exit+wait (zygote-sized)':36} {'':9} {f['raw_fork_p50_ms']:9.3f}")
    lines.append(f"warm_rps_c16 / bare_rps_c16 = {f['warm_vs_bare_rps_c16']:.2f} (target >= 0.6)")
    lines.append(
        f"warm_p50_ms_c1 - bare_p50_ms_c1 = {f['warm_minus_bare_p50_ms_c1']:.3f} ms "
        "(target <= 1 ms)"
    )
    lines.append(
        f"cold_p50_ms / raw_fork_p50_ms = {f['cold_vs_raw_fork']:.1f}x (target <= 4x; "
        f"zygote RSS {f['zygote_rss_mb']:.1f} MiB)"
    )
    lines.append(f"{f['seconds']:g} s per timed run; note: {f['note']}")
    return "\n".join(lines)


def run(seconds: float, as_json: bool) -> int:
    from ..sock import prepare_worker_process

    prepare_worker_process()
    with tempfile.TemporaryDirectory(prefix="olactors-bench-http-", dir="/tmp") as tmp:
        figures = trio.run(measure, seconds, Path(tmp) / "worker")
    raw = raw_fork_samples(int(figures["zygote_rss_mb"] * (1 << 20)), RAW_FORK_SAMPLES)
    cpus = os.cpu_count() or 1
    figures.update(
        {
            "seconds": seconds,
            "concurrency": CONCURRENCY,
            "cold_functions": COLD_FUNCTIONS,
            "raw_fork_p50_ms": p50(raw),
            "warm_vs_bare_rps_c16": figures["warm_rps_c16"] / figures["bare_rps_c16"],
            "warm_minus_bare_p50_ms_c1": figures["warm_p50_ms_c1"] - figures["bare_p50_ms_c1"],
            "cold_vs_raw_fork": figures["cold_p50_ms"] / p50(raw),
            "cpus": cpus,
            "note": NOTE.format(cpus=cpus),
        }
    )
    print(json.dumps(figures, indent=2) if as_json else report(figures))
    sys.stdout.flush()
    return 0
