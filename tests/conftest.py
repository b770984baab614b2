"""Shared fixtures.

Before anything else this process enters a private mount namespace (as the
worker does), so every mount a test makes is invisible to the host and dies
with the test process.  A session-level check then asserts that the tests
left no cgroup, mount or process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0
if IS_ROOT:
    from olactors.sock import prepare_worker_process

    prepare_worker_process()

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (cgroups, mounts, namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def cgroup_dirs_named(token: str) -> list[str]:
    """Directories under /sys/fs/cgroup (depth <= 7) whose name contains ``token``."""
    found = []
    base_depth = "/sys/fs/cgroup".count("/")
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        if dirpath.count("/") - base_depth >= 7:
            dirnames.clear()
        found += [os.path.join(dirpath, d) for d in dirnames if token in d]
    return found


def v1_layout():
    """This host's cgroup v1 layout, or None (not root, or no v1 hierarchies)."""
    from olactors._errors import CgroupError
    from olactors.sock.cgroups import CgroupLayout

    if os.geteuid() != 0:
        return None
    try:
        return CgroupLayout.current("v1")
    except CgroupError:
        return None


def olactors_cgroups() -> list[str]:
    return sorted(cgroup_dirs_named("olactors"))


def olactors_networks() -> list[str]:
    """Workers' nftables tables and sandbox veths on this host (root only)."""
    if not IS_ROOT:
        return []
    found = []
    if shutil.which("nft"):
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
        found += [t for t in tables.stdout.splitlines() if " olactors_" in t]
    links = subprocess.run(["ip", "-json", "link", "show"], capture_output=True, text=True)
    found += [
        f"veth {link['ifname']}"
        for link in json.loads(links.stdout or "[]")
        if str(link.get("ifalias", "")).startswith("olactors-")
    ]
    return found


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; killed and reaped by pid afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def spawn_in(cgroup, code: str, processes: list, stdout=None) -> subprocess.Popen[bytes]:
    """Start ``python3 -c code`` that joins ``cgroup`` (writes "0" to each procs fd) before exec."""
    fds = cgroup.open_procs_fds()

    def join() -> None:
        for fd in fds:
            os.write(fd, b"0")

    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", code], pass_fds=fds, preexec_fn=join, stdout=stdout
        )
    finally:
        for fd in fds:
            os.close(fd)
    processes.append(proc)
    return proc


def mounts_mentioning(word: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if word in line.split()[4]]


def child_processes(parent: int | None = None) -> list[int]:
    """Live processes whose parent is ``parent`` (default: this test process)."""
    me = os.getpid() if parent is None else parent
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leaks(tmp_path_factory):
    """Every cgroup, mount, process and sandbox network (nftables table, veth)
    the tests created is gone at the end."""
    before_cgroups = set(olactors_cgroups())
    before_networks = set(olactors_networks())
    root = str(tmp_path_factory.getbasetemp())
    yield
    leaked_cgroups = sorted(set(olactors_cgroups()) - before_cgroups)
    leaked_networks = sorted(set(olactors_networks()) - before_networks)
    leaked_mounts = mounts_mentioning(root)
    leaked_procs = child_processes()
    assert not leaked_cgroups, f"tests leaked cgroups: {leaked_cgroups}"
    assert not leaked_mounts, f"tests leaked mounts: {leaked_mounts}"
    assert not leaked_procs, f"tests leaked processes: {leaked_procs}"
    assert not leaked_networks, f"tests leaked sandbox networks: {leaked_networks}"


@pytest.fixture
def worker_dir(tmp_path: Path) -> Path:
    path = tmp_path / "worker"
    path.mkdir()
    return path


def write_function(parent: Path, name: str, source: str) -> Path:
    """A function dir ``parent/name`` with ``f.py`` holding ``source`` (dedented)."""
    code = parent / name
    code.mkdir(parents=True, exist_ok=True)
    (code / "f.py").write_text(textwrap.dedent(source))
    return code


@pytest.fixture
async def pool(worker_dir: Path):
    """A real SOCK pool on a fresh worker dir (root only)."""
    if not IS_ROOT:
        pytest.skip("needs root")
    from olactors._config import build_config
    from olactors.sock import open_sock_pool

    async with open_sock_pool(build_config(None, ["sandbox.cgroup_pool_size=2"]), worker_dir) as p:
        yield p


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "olactors.cli", *args],
        capture_output=True,
        text=True,
        check=check,
        cwd=REPO,
    )
