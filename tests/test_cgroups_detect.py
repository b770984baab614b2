"""Unit tests for cgroup layout detection (pure: text in, layout out)."""

from __future__ import annotations

import os

import pytest

from olactors._errors import CgroupError
from olactors.sock.cgroups import CgroupLayout, CgroupLimits, detect_layout
from olactors.sock.cgroups._api import check_name, subtree_dir_name
from olactors.sock.cgroups._common import check_subtree_root
from olactors.sock.cgroups._detect import parse_mountinfo, parse_proc_cgroup

HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/adfd1357f080b84fc3bae7ec1253c210
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""

HYBRID_MOUNTINFO = """\
24 1 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

PURE_V2_CGROUP = "0::/system.slice/olactors.service\n"

PURE_V2_MOUNTINFO = """\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
"""

# A typical systemd "hybrid" with cpu and cpuacct co-mounted.
COMOUNTED_CGROUP = """\
12:pids:/user.slice
6:cpu,cpuacct:/user.slice
5:memory:/user.slice/session-1.scope
3:freezer:/
0::/user.slice/session-1.scope
"""

COMOUNTED_MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 25 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
36 25 0:32 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
"""


def test_hybrid_machine_picks_v1_with_own_paths() -> None:
    layout = detect_layout(HYBRID_CGROUP, HYBRID_MOUNTINFO, "auto", v2_controllers="hugetlb\n")
    assert layout.version == 1
    memory = layout.hierarchy_for("memory")
    assert memory.mount_point == "/sys/fs/cgroup/memory"
    assert memory.own_path == "/process_api/adfd1357f080b84fc3bae7ec1253c210"
    assert memory.own_dir == "/sys/fs/cgroup/memory/process_api/adfd1357f080b84fc3bae7ec1253c210"
    assert layout.hierarchy_for("freezer").own_dir == "/sys/fs/cgroup/freezer"
    assert layout.hierarchy_for("cpuacct").own_dir == "/sys/fs/cgroup/cpuacct"
    assert len(layout.hierarchies) == 5  # memory pids cpu cpuacct freezer, nothing else
    assert {h.mount_point for h in layout.hierarchies} == {
        f"/sys/fs/cgroup/{c}" for c in ("memory", "pids", "cpu", "cpuacct", "freezer")
    }
    with pytest.raises(CgroupError):
        layout.hierarchy_for("blkio")


def test_hybrid_machine_refuses_v2_naming_controllers() -> None:
    with pytest.raises(CgroupError, match="memory, pids, cpu"):
        detect_layout(HYBRID_CGROUP, HYBRID_MOUNTINFO, "v2", v2_controllers="")
    # Without knowing cgroup.controllers, v2 is treated as having none.
    assert detect_layout(HYBRID_CGROUP, HYBRID_MOUNTINFO, "v1").version == 1


def test_pure_v2_detected() -> None:
    controllers = "cpuset cpu io memory hugetlb pids rdma misc\n"
    for prefer in ("auto", "v2"):
        layout = detect_layout(
            PURE_V2_CGROUP, PURE_V2_MOUNTINFO, prefer, v2_controllers=controllers
        )
        assert layout.version == 2
        (unified,) = layout.hierarchies
        assert unified.mount_point == "/sys/fs/cgroup"
        assert unified.own_path == "/system.slice/olactors.service"
        assert unified.own_dir == "/sys/fs/cgroup/system.slice/olactors.service"
        assert {"memory", "pids", "cpu"} <= unified.controllers
        assert layout.hierarchy_for("memory") is unified


def test_pure_v2_missing_controllers_is_a_clear_error() -> None:
    with pytest.raises(CgroupError) as info:
        detect_layout(PURE_V2_CGROUP, PURE_V2_MOUNTINFO, "v2", v2_controllers="cpu io\n")
    assert "memory, pids" in info.value.message
    assert "/sys/fs/cgroup/system.slice/olactors.service" in info.value.message
    # auto falls back to v1, which is not mounted: both reasons are given.
    with pytest.raises(CgroupError) as info:
        detect_layout(PURE_V2_CGROUP, PURE_V2_MOUNTINFO, "auto", v2_controllers="cpu io")
    assert "memory, pids" in info.value.message
    assert "freezer" in info.value.message


def test_prefer_v1_on_pure_v2_fails() -> None:
    with pytest.raises(CgroupError, match="v1 controller"):
        detect_layout(PURE_V2_CGROUP, PURE_V2_MOUNTINFO, "v1", v2_controllers="cpu memory pids")


def test_prefer_must_be_known() -> None:
    with pytest.raises(CgroupError, match="preference"):
        detect_layout(PURE_V2_CGROUP, PURE_V2_MOUNTINFO, "v3")  # type: ignore[arg-type]


def test_comounted_cpu_cpuacct_share_one_hierarchy() -> None:
    layout = detect_layout(COMOUNTED_CGROUP, COMOUNTED_MOUNTINFO, "auto", v2_controllers="")
    assert layout.version == 1
    assert layout.hierarchy_for("cpu") == layout.hierarchy_for("cpuacct")
    assert layout.hierarchy_for("cpu").own_dir == "/sys/fs/cgroup/cpu,cpuacct/user.slice"
    assert layout.hierarchy_for("cpu").controllers == frozenset({"cpu", "cpuacct"})
    assert len(layout.hierarchies) == 4


def test_v1_missing_controller_is_named() -> None:
    text = COMOUNTED_MOUNTINFO.replace("rw,freezer", "rw,devices")
    with pytest.raises(CgroupError, match="freezer") as info:
        detect_layout(COMOUNTED_CGROUP, text, "v1")
    assert "memory" not in info.value.message


def test_bind_mounted_hierarchy_root_is_stripped() -> None:
    cgroup = "4:memory:/docker/abc/worker\n1:pids,cpu,cpuacct,freezer:/docker/abc\n"
    mountinfo = (
        "50 40 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
        "51 40 0:33 /docker/abc /sys/fs/cgroup/misc\\040set rw - cgroup cgroup "
        "rw,pids,cpu,cpuacct,freezer\n"
    )
    layout = detect_layout(cgroup, mountinfo, "auto")
    assert layout.hierarchy_for("memory").own_dir == "/sys/fs/cgroup/memory/worker"
    assert layout.hierarchy_for("pids").own_dir == "/sys/fs/cgroup/misc set"


def test_mount_not_containing_own_cgroup_is_ignored() -> None:
    cgroup = "0::/elsewhere\n"
    mountinfo = "50 40 0:32 /container /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    with pytest.raises(CgroupError, match="no cgroup2 hierarchy"):
        detect_layout(cgroup, mountinfo, "v2", v2_controllers="memory pids cpu")


def test_parsers() -> None:
    own = parse_proc_cgroup(HYBRID_CGROUP)
    assert own["memory"].startswith("/process_api/")
    assert own[""] == "/"
    assert "name=systemd" not in own
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert [m.fstype for m in mounts].count("cgroup2") == 1
    assert len(mounts) == 10  # proc and tmpfs are skipped
    with pytest.raises(CgroupError, match="malformed"):
        parse_proc_cgroup("garbage\n")


def test_names_and_subtree_roots_are_checked() -> None:
    assert subtree_dir_name("w1") == "olactors-w1"
    for bad in ("", "..", "a/b", "x" * 65, "-lead"):
        with pytest.raises(ValueError):
            check_name("worker id", bad)
    assert check_subtree_root("/sys/fs/cgroup/pids/olactors-w1", "w1")
    with pytest.raises(CgroupError, match="refusing"):
        check_subtree_root("/sys/fs/cgroup/pids", "w1")
    with pytest.raises(CgroupError, match="refusing"):
        check_subtree_root("/sys/fs/cgroup/pids/olactors-w2", "w1")


def test_limits_are_validated() -> None:
    CgroupLimits(mem_bytes=0, pids=0, cpu_percent=0)
    for bad in (
        dict(mem_bytes=-1, pids=1, cpu_percent=1),
        dict(mem_bytes=1000, pids=1, cpu_percent=1),
        dict(mem_bytes=1 << 30, pids=True, cpu_percent=1),
        dict(mem_bytes=1 << 30, pids=1, cpu_percent=1.5),
    ):
        with pytest.raises(ValueError):
            CgroupLimits(**bad)  # type: ignore[arg-type]


@pytest.mark.skipif(not os.path.exists("/proc/self/cgroup"), reason="needs Linux /proc")
def test_current_reads_real_files() -> None:
    try:
        layout = CgroupLayout.current()
    except CgroupError as exc:
        pytest.skip(f"no usable cgroups here: {exc}")
    for hierarchy in layout.hierarchies:
        assert os.path.isdir(hierarchy.own_dir), hierarchy
