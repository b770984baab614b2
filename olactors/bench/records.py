"""`olactors bench records`: the worker's memory while it records many calls.

Runs the real actors and the real recorder and store (``<tmp>/records.db``)
on the simulated sandbox pool, so the figure is the worker's own memory, not
sandboxes'.  ``calls`` calls (default 100,000) spread over ``functions``
functions, each with a fresh request id claimed as the HTTP layer does and
with ``output_bytes`` of stdout and stderr, are recorded; the process's RSS
(``VmRSS``) is sampled every tenth of the run.  Nothing is kept in memory
per record beyond the bounded write queue (``debug.queue_max`` records, at
most 16 MiB of output) and ``debug.keep_per_function`` request ids per
function.  The clients hold back while more than ``PACE_BYTES`` of output
waits to be written (the simulated pool answers faster than a disk takes
records; a full queue is a bounded, tested case of its own), so the samples
show what recording keeps per call: the RSS must stay flat, its growth over
the second half of the run within ``FLAT_MB``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import trio

from .._config import build_config
from .._errors import OlactorsError
from .._records import CallOutput, StreamCapture
from ..sock import Invocation, InvocationResult
from ..sock.simulated import SimulatedBehaviour, open_simulated_pool
from ._functions import write_echo_functions
from .sandbox import rss_bytes

CONCURRENCY = 16
PACE_BYTES = 1 << 20
#: RSS growth over the second half of the run beyond which it counts as not flat.
FLAT_MB = 4.0


def rss_mb() -> float:
    return rss_bytes(os.getpid()) / (1 << 20)


async def _measure(calls: int, functions: int, output_bytes: int, worker_dir: Path) -> dict:
    from ..worker import open_worker

    write_echo_functions(worker_dir / "registry", functions)
    config = build_config(
        None,
        [
            "registry.cache_s=60",
            "memory.pool_mb=1000000",
            f"functions.max_instances={CONCURRENCY}",
            f"queue.max_depth={4 * CONCURRENCY}",
        ],
    )
    output = CallOutput(
        StreamCapture(b"o" * output_bytes), StreamCapture(b"e" * output_bytes, dropped=7)
    )

    async def handler(sandbox: Any, inv: Invocation) -> InvocationResult:
        return InvocationResult(200, (), inv.body, output)

    behaviour = SimulatedBehaviour(rng=random.Random(1))
    behaviour.handler = handler
    samples: list[tuple[int, float]] = []
    step = max(1, calls // 10)
    async with open_simulated_pool(behaviour) as pool:
        async with open_worker(config, worker_dir, pool=pool) as worker:
            assert worker.recorder is not None
            counter = iter(range(calls))
            counts = worker.recorder.counts

            async def client() -> None:
                for n in counter:
                    while counts.queued_bytes > PACE_BYTES:
                        await trio.sleep(0.005)
                    name = f"fn{n % functions}"
                    request_id = worker.claim_request_id(name, None)
                    result = await worker.invoke(name, Invocation(body=b"1"), request_id)
                    if result.status != 200:
                        raise OlactorsError(f"{name} answered {result.status}")
                    if (n + 1) % step == 0:
                        samples.append((n + 1, rss_mb()))

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(CONCURRENCY):
                    nursery.start_soon(client)
            elapsed = trio.current_time() - start
            while worker.recorder.stats()["queued"]:
                await trio.sleep(0.05)
            await trio.sleep(0.5)
            stats = worker.record_stats()
    db = worker_dir / "records.db"
    db_mb = sum(p.stat().st_size for p in worker_dir.glob("records.db*")) / 2**20
    first, half, last = samples[0][1], samples[len(samples) // 2 - 1][1], samples[-1][1]
    return {
        "calls": calls,
        "functions": functions,
        "output_bytes": output_bytes,
        "calls_per_s": round(calls / elapsed, 1),
        "rss_mb": [(n, round(mb, 1)) for n, mb in samples],
        "rss_growth_mb": round(last - first, 1),
        "rss_growth_second_half_mb": round(last - half, 1),
        "flat": last - half <= FLAT_MB,
        "records": stats,
        "db_mb": round(db_mb, 1),
        "db": str(db),
    }


def run(calls: int = 100_000, functions: int = 10, output_bytes: int = 1024) -> dict:
    worker_dir = Path(tempfile.mkdtemp(prefix="olactors-bench-records-"))
    try:
        return trio.run(_measure, calls, functions, output_bytes, worker_dir)
    finally:
        shutil.rmtree(worker_dir, ignore_errors=True)


def main(calls: int, functions: int, output_bytes: int, as_json: bool) -> int:
    figures = run(calls, functions, output_bytes)
    if as_json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"{figures['calls']} calls over {figures['functions']} functions "
            f"({figures['output_bytes']} B of stdout and stderr each), "
            f"{figures['calls_per_s']} calls/s"
        )
        print("RSS (MB) by calls: " + ", ".join(f"{n}: {mb}" for n, mb in figures["rss_mb"]))
        print(
            f"growth over the second half: {figures['rss_growth_second_half_mb']} MB "
            f"({'flat' if figures['flat'] else 'NOT flat'}, limit {FLAT_MB} MB); "
            f"over the whole run: {figures['rss_growth_mb']} MB"
        )
        r = figures["records"]
        print(
            f"records written {r.get('written')}, dropped {r.get('dropped')}, "
            f"failed {r.get('failed')}; queue peak {r.get('queued_bytes_peak', 0) >> 20} MiB; "
            f"request ids held {r.get('request_ids_held')}; "
            f"records.db {figures['db_mb']} MB"
        )
    return 0 if figures["flat"] else 1
