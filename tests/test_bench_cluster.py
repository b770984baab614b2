"""olactors bench cluster's own parts: the workload, the packages, the table, bad arguments.
(The real run is the end-to-end test's machinery, olactors.bench.testbed.)"""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pytest

from olactors._errors import OlactorsError
from olactors.bench import cluster


def test_workload_is_seeded_and_zipf() -> None:
    plan = cluster.workload(2000, 5.0)
    assert plan == cluster.workload(2000, 5.0)
    times = [t for t, _ in plan]
    assert times == sorted(times) and 300 < times[-1] < 500  # 2000 calls at 5/s
    counts = Counter(name for _, name in plan)
    assert counts["f00"] > 3 * counts["f10"] > 0  # popularity falls off


def test_functions_share_few_packages(tmp_path: Path) -> None:
    packages = [cluster.function_package(i) for i in range(cluster.FUNCTIONS)]
    assert len(set(packages)) == cluster.PACKAGES
    assert packages.count("olbench0") > packages.count("olbench7")
    d = cluster.write_function(tmp_path, 5)
    assert (d / "ol.lock").read_text().count("==") == 1
    sizes = cluster.build_wheels(tmp_path / "wheels")
    assert len(list((tmp_path / "wheels").glob("*.whl"))) == cluster.PACKAGES
    with zipfile.ZipFile(next((tmp_path / "wheels").glob("olbench3-*.whl"))) as z:
        assert z.getinfo("olbench3/data.bin").file_size == sizes["olbench3"] == 4 << 20


def test_table_and_bad_arguments() -> None:
    row = {
        "cold_start_share": 0.1,
        "p50_ms": 5.0,
        "p99_ms": 50.0,
        "package_disk_mb_mean": 3.0,
        "package_disk_mb_max": 4.0,
        "statuses": {"200": 10},
    }
    table = cluster.format_real({"hash": row, "roundrobin": row}, 3)
    assert "| hash | 0.1 | 5.0 | 50.0 | 3.0, 4.0 |" in table
    with pytest.raises(OlactorsError):
        cluster.run(0, 10, 1.0, 0.1, False)
    with pytest.raises(OlactorsError):
        cluster.run(3, 10, 1.0, 0.0, False)
