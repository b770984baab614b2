"""The cluster simulation: N real workers (simulated sandboxes) behind HAProxy's policies."""

from __future__ import annotations

from olactors.simulation import ClusterScenario, PackageModel, Routing, run_cluster
from simulations.cluster_study import format_study, run_study, scale_scenario


def small(workers: int = 6) -> ClusterScenario:
    return ClusterScenario(
        name="small",
        workers=workers,
        functions=120,
        calls=800,
        rate_per_s=60.0,
        settings=("memory.pool_mb=4096",),
        packages=PackageModel(distributions=60),
    )


def test_same_seed_same_run_and_every_call_answered() -> None:
    first = run_cluster(small(), Routing.CONSISTENT, 3)
    again = run_cluster(small(), Routing.CONSISTENT, 3)
    other = run_cluster(small(), Routing.CONSISTENT, 4)
    assert first.digest == again.digest
    assert first.summary == {**again.summary, "real_s": first.summary["real_s"]}
    assert other.digest != first.digest
    s = first.summary
    assert first.ok, s
    assert s["ok"] == s["calls"] == 800 and s["errors"] == 0


def test_consistent_hashing_keeps_functions_and_packages_on_few_workers() -> None:
    ch = run_cluster(small(), Routing.CONSISTENT, 1).summary
    pure = run_cluster(small(), Routing.CONSISTENT_UNBOUNDED, 1).summary
    rr = run_cluster(small(), Routing.ROUND_ROBIN, 1).summary
    # Round robin spreads every function over every worker: more cold starts,
    # more packages installed per worker, more functions per worker.
    assert rr["cold_starts"] > 1.3 * ch["cold_starts"]
    assert rr["package_disk_mb_mean"] > 1.1 * ch["package_disk_mb_mean"]
    assert rr["functions_per_worker_mean"] > 1.3 * ch["functions_per_worker_mean"]
    # The load bound spills calls whose owner is busy (at light load, busy
    # means one call in flight): fewer cold starts without it, but an uneven spread.
    assert ch["spilled_share"] > 0 and pure["spilled_share"] == 0
    assert pure["cold_starts"] < ch["cold_starts"]
    assert pure["functions_per_worker_mean"] <= 20.0  # 120 functions, 6 workers, no overlap
    assert rr["calls_per_worker_max_over_mean"] < 1.01
    assert pure["calls_per_worker_max_over_mean"] > ch["calls_per_worker_max_over_mean"]


def test_the_simulated_factor_is_the_generated_configs() -> None:
    from dataclasses import fields

    from olactors.cluster.haproxy import HaproxySettings
    from olactors.simulation._cluster import DEFAULT_BALANCE_FACTOR

    default = {f.name: f.default for f in fields(HaproxySettings)}["balance_factor"]
    assert DEFAULT_BALANCE_FACTOR == default


def test_study_table_has_every_size_and_the_gap() -> None:
    rows = run_study(1, sizes=(2, 4), scale=0.05)
    assert [r.workers for r in rows] == [2, 2, 2, 4, 4, 4]
    table = format_study(rows)
    assert "| 4 | 20 | 200 | roundrobin |" in table
    assert "cold starts RR / CH" in table
    assert "every call answered" in table
    assert scale_scenario(100).functions == 10_000 and scale_scenario(100).calls == 100_000
