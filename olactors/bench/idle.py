"""`olactors bench idle`: memory the worker keeps per function after it idles out.

Runs the real actors (manager, functions, instances, import cache, memory
pool, evictor, code puller) on the simulated sandbox pool, so the figure is
the worker's own memory, not sandboxes'.  Two batches of N distinct
functions are each invoked once and left to idle out
(``functions.idle_timeout_s``); the traced Python heap after the second batch
is compared with that after the first (which grew every table to its
high-water size: dicts keep their capacity), so the difference is what N
idled-out functions keep.  What
remains is each function's metrics record (the accounting that must survive)
plus dict overhead.  Target: under 1 KiB per function.
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import tempfile
import tracemalloc
from pathlib import Path

import trio

from .._config import build_config
from .._errors import OlactorsError
from ..sock import Invocation
from ..sock.simulated import SimulatedBehaviour, open_simulated_pool
from ._functions import write_echo_functions

TARGET_BYTES = 1024


async def _measure(functions: int, worker_dir: Path) -> dict[str, float]:
    from ..worker import open_worker

    write_echo_functions(worker_dir / "registry", 2 * functions)
    config = build_config(
        None,
        [
            "functions.idle_timeout_s=0.5",
            "functions.pause_after_s=0.05",
            "registry.cache_s=60",
            "memory.pool_mb=1000000",
        ],
    )
    behaviour = SimulatedBehaviour(rng=random.Random(1))
    async with open_simulated_pool(behaviour) as pool:
        async with open_worker(config, worker_dir, pool=pool) as worker:
            tracemalloc.start()

            async def call(i: int) -> None:
                result = await worker.invoke(f"fn{i}", Invocation(body=b"1"), f"r{i}")
                if result.status != 200:
                    raise OlactorsError(f"fn{i} answered {result.status}")

            async def batch(first: int) -> tuple[int, int]:
                """Invoke fn<first>..fn<first+functions-1> once each and wait until they
                all idled out; the active count right after the calls, and the heap."""
                async with trio.open_nursery() as nursery:
                    for i in range(first, first + functions):
                        nursery.start_soon(call, i)
                active = len(await worker.functions())
                while await worker.functions():
                    await trio.sleep(0.2)
                await trio.sleep(0.2)
                gc.collect()
                return active, tracemalloc.get_traced_memory()[0]

            # The first batch grows every table to its high-water size (dicts keep
            # their capacity); the second, of new functions, shows what each keeps.
            _, before = await batch(0)
            peak_active, after = await batch(functions)
            tracemalloc.stop()
            sandboxes = len(pool.sandboxes())
    return {
        "functions": functions,
        "active_after_calls": peak_active,
        "sandboxes_left": sandboxes,  # the root zygote
        "bytes_kept_total": after - before,
        "bytes_per_function": (after - before) / functions,
        "target_bytes": TARGET_BYTES,
    }


def run(functions: int, as_json: bool) -> int:
    if functions < 1:
        raise OlactorsError("--functions must be >= 1")
    worker_dir = Path(tempfile.mkdtemp(prefix="olactors-bench-idle-"))
    try:
        figures = trio.run(_measure, functions, worker_dir)
    finally:
        shutil.rmtree(worker_dir, ignore_errors=True)
    if as_json:
        print(json.dumps(figures, indent=2))
        return 0
    per = figures["bytes_per_function"]
    verdict = "met" if per < TARGET_BYTES else "MISSED"
    print(f"functions invoked once, then idled out:  {functions}")
    print(f"still active right after the calls:      {figures['active_after_calls']}")
    print(f"heap kept after all idled out:           {figures['bytes_kept_total']} bytes")
    print(
        f"per function:                            {per:.0f} bytes "
        f"(target < {TARGET_BYTES}: {verdict})"
    )
    print("what remains per function: its metrics record (counters + latency histogram)")
    return 0
