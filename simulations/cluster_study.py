"""The cluster study: consistent hashing with bounded loads vs. round robin as the cluster grows.

Each row is one run of :func:`olactors.simulation.run_cluster`: ``N``
simulated workers (the real actors), the same Zipf workload shape per
worker (``FUNCTIONS_PER_WORKER`` functions and ``CALLS_PER_WORKER`` calls
each, ``RATE_PER_WORKER`` req/s), routed by HAProxy's consistent hashing
with ``hash-balance-factor`` 150 (the generated config's), without
the bound, and by round robin.  At N = 100 that is
the issue's figure: 10,000 functions, 100,000 calls.  Keeping each
worker's share fixed isolates what the routing does: with consistent
hashing a worker sees about its own share of the functions whatever N is;
with round robin every worker sees every popular function, so its cold
starts and installed packages grow with N.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from olactors.simulation import ClusterResult, ClusterScenario, Routing, run_cluster

SIZES = (3, 10, 30, 100)
FUNCTIONS_PER_WORKER = 100
CALLS_PER_WORKER = 1000
RATE_PER_WORKER = 10.0
#: Each worker's memory pool holds 62 sandboxes of the default 128 MB.
SETTINGS = ("memory.pool_mb=8192", "limits.mem_mb=128")


def scale_scenario(workers: int, scale: float = 1.0) -> ClusterScenario:
    """``workers`` workers, each with its share of the functions and calls (times ``scale``)."""
    return ClusterScenario(
        name=f"cluster-{workers}",
        workers=workers,
        functions=max(1, round(FUNCTIONS_PER_WORKER * workers * scale)),
        calls=max(1, round(CALLS_PER_WORKER * workers * scale)),
        rate_per_s=RATE_PER_WORKER * workers,
        zipf_s=1.0,
        settings=SETTINGS,
    )


@dataclass(frozen=True)
class StudyRow:
    workers: int
    routing: Routing
    result: ClusterResult


def run_study(
    seed: int,
    sizes: Sequence[int] = SIZES,
    scale: float = 1.0,
    progress: Callable[[StudyRow], None] | None = None,
) -> list[StudyRow]:
    rows = []
    for workers in sizes:
        for routing in Routing:
            result = run_cluster(scale_scenario(workers, scale), routing, seed)
            row = StudyRow(workers, routing, result)
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


_COLUMNS = (
    ("cold_start_share", "cold-start share"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("package_disk_mb_mean", "package disk/worker MB"),
    ("functions_per_worker_mean", "functions/worker"),
    ("calls_per_worker_max_over_mean", "max/mean calls"),
)


def format_study(rows: Sequence[StudyRow]) -> str:
    """A markdown table: one line per (N, routing), and the gap per N."""
    head = "| N | functions | calls | routing | " + " | ".join(h for _, h in _COLUMNS) + " |"
    lines = [head, "|" + "---|" * (4 + len(_COLUMNS))]
    for row in rows:
        s = row.result.summary
        cells = [str(s[key]) for key, _ in _COLUMNS]
        lines.append(
            f"| {row.workers} | {s['functions']} | {s['calls']} | {row.routing.value} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "| N | cold starts RR / CH | package disk RR / CH | p99 RR / CH |",
        "|---|---|---|---|",
    ]
    by = {(r.workers, r.routing): r.result.summary for r in rows}
    for workers in dict.fromkeys(r.workers for r in rows):
        ch = by.get((workers, Routing.CONSISTENT))  # the deployed config: bounded loads
        rr = by.get((workers, Routing.ROUND_ROBIN))
        if ch is None or rr is None:
            continue
        lines.append(
            f"| {workers} | {_ratio(rr['cold_starts'], ch['cold_starts'])} | "
            f"{_ratio(rr['package_disk_mb_mean'], ch['package_disk_mb_mean'])} | "
            f"{_ratio(rr['p99_ms'], ch['p99_ms'])} |"
        )
    broken = [r for r in rows if not r.result.ok]
    lines.append("")
    if broken:
        lines.append(f"UNANSWERED OR CRASHED CALLS in {len(broken)} runs")
    else:
        lines.append(f"every call answered, no actor crashed, in all {len(rows)} runs")
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"
