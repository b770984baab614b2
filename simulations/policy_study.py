"""The eviction policy study: one seeded workload, every policy, several pool sizes.

The workload is the memory-pressure shape (Zipf popularity over many
functions, more sandboxes wanted than the pool holds), run with each
policy of :data:`olactors._eviction.POLICY_NAMES` at each pool size.  The
table shows the cold-start share (lower is better), with p99 latency and
evictions; every run also checks every invariant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from olactors._eviction import POLICY_NAMES
from olactors.simulation import Scenario, SimResult, run_scenario

from .scenarios import zipf_scenario

POOL_SIZES_MB = (4096, 8192, 16384, 32768)


def study_scenario(scale: float = 1.0) -> Scenario:
    """1,000 functions (Zipf 0.9), 20 req/s for 10 minutes; handlers vary 20x in length."""
    return zipf_scenario(
        "policy-study",
        "1,000 functions, Zipf 0.9, 20 req/s for 10 minutes (scale 1)",
        functions=max(20, round(1000 * scale)),
        zipf_s=0.9,
        rate_per_s=20.0,
        duration_s=600.0 * scale,
        settings=("limits.mem_mb=128", "memory.free_goal_mb=256"),
        service_sigma=1.5,
        interval_s=60.0 * max(scale, 0.1),
    )


@dataclass(frozen=True)
class StudyRow:
    policy: str
    pool_mb: int
    result: SimResult


def run_study(
    seed: int,
    scale: float = 1.0,
    pools_mb: Sequence[int] = POOL_SIZES_MB,
    policies: Sequence[str] = POLICY_NAMES,
    progress: Callable[[StudyRow], None] | None = None,
) -> list[StudyRow]:
    rows = []
    for pool_mb in pools_mb:
        for policy in policies:
            settings = (f"memory.pool_mb={pool_mb}", f"memory.eviction_policy={policy}")
            result = run_scenario(study_scenario(scale), seed, settings=settings)
            row = StudyRow(policy, pool_mb, result)
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def format_study(rows: Sequence[StudyRow]) -> str:
    """A markdown table: cold-start share per policy (columns) and pool size (rows)."""
    policies = list(dict.fromkeys(r.policy for r in rows))
    pools = list(dict.fromkeys(r.pool_mb for r in rows))
    by = {(r.pool_mb, r.policy): r.result for r in rows}
    head = "| pool MB | " + " | ".join(
        f"{p} cold share | {p} p99 ms | {p} evictions" for p in policies
    )
    lines = [head + " |", "|" + "---|" * (1 + 3 * len(policies))]
    for pool in pools:
        cells = []
        for policy in policies:
            s = by[(pool, policy)].summary
            cells += [f"{s['cold_start_share']:.4f}", f"{s['p99_ms']}", f"{s['evictions']}"]
        lines.append(f"| {pool} | " + " | ".join(cells) + " |")
    broken = [r for r in rows if r.result.violations]
    lines.append("")
    if broken:
        first = broken[0].result.violations[0]
        lines.append(f"INVARIANTS BROKEN in {len(broken)} runs, e.g. {first}")
    else:
        lines.append(f"invariants held in all {len(rows)} runs")
    return "\n".join(lines)
