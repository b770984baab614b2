"""A run's outputs: the summary table, the per-interval CSV, a JSON summary, a plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from ._harness import SimResult

_TABLE_ROWS = (
    ("requests", "requests"),
    ("ok", "ok (200)"),
    ("rejected_429", "429 (queue full)"),
    ("errors", "errors (5xx)"),
    ("p50_ms", "p50 latency, virtual ms"),
    ("p99_ms", "p99 latency, virtual ms"),
    ("cold_start_share", "cold-start share"),
    ("evictions", "evictions"),
    ("restarts", "restarts"),
    ("escalations", "escalations"),
    ("sandboxes_created", "sandboxes created"),
    ("peak_memory_mb", "peak memory reserved, MB"),
    ("pool_mb", "memory pool, MB"),
    ("eviction_policy", "eviction policy"),
    ("virtual_s", "virtual time, s"),
    ("real_s", "real time, s"),
    ("events", "trace events"),
    ("events_per_s", "events per real second"),
)


def format_summary(result: SimResult) -> str:
    """The summary table, with the seed and the trace digest that reproduce the run."""
    lines = [f"scenario {result.scenario}  seed {result.seed}  trace digest {result.digest}"]
    width = max(len(label) for _, label in _TABLE_ROWS)
    for key, label in _TABLE_ROWS:
        lines.append(f"  {label:<{width}}  {result.summary.get(key)}")
    if result.violations:
        lines.append(f"  INVARIANTS BROKEN ({len(result.violations)}):")
        lines += [f"    {v}" for v in result.violations[:20]]
    else:
        lines.append("  invariants: all held")
    return "\n".join(lines)


def write_outputs(result: SimResult, out_dir: Path) -> list[Path]:
    """``<scenario>-<seed>.csv`` (per interval), ``.json`` (summary), ``.txt``
    (the table) and, with matplotlib installed, ``.png``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{result.scenario}-{result.seed}"
    written = []
    csv_path = stem.with_suffix(".csv")
    with open(csv_path, "w", newline="") as f:
        if result.intervals:
            writer = csv.DictWriter(f, fieldnames=list(result.intervals[0]))
            writer.writeheader()
            writer.writerows(result.intervals)
    written.append(csv_path)
    json_path = stem.with_suffix(".json")
    payload = {
        "scenario": result.scenario,
        "seed": result.seed,
        "digest": result.digest,
        "settings": list(result.settings),
        "summary": result.summary,
        "violations": result.violations,
    }
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    written.append(json_path)
    txt_path = stem.with_suffix(".txt")
    txt_path.write_text(format_summary(result) + "\n")
    written.append(txt_path)
    png = plot(result.intervals, stem.with_suffix(".png"), result.scenario)
    if png is not None:
        written.append(png)
    return written


def plot(rows: Sequence[dict[str, object]], path: Path, title: str) -> Path | None:
    """Arrivals, cold starts, evictions, 429s and p99 per interval (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t = [row["t_s"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for key in ("arrivals", "cold_starts", "evictions", "rejected_429", "errors"):
        top.plot(t, [row[key] for row in rows], label=key)
    top.set_ylabel("per interval")
    top.legend(loc="upper right")
    bottom.plot(t, [row["p99_ms"] or 0 for row in rows], label="p99 ms")
    bottom.plot(t, [row["p50_ms"] or 0 for row in rows], label="p50 ms")
    bottom.set_ylabel("virtual ms")
    bottom.set_xlabel("virtual time, s")
    bottom.legend(loc="upper right")
    fig.suptitle(title)
    fig.savefig(path)
    plt.close(fig)
    return path
