"""`olactors bench sandbox`: SOCK sandbox lifecycle latencies vs. reference figures.

Measured in one run, ``samples`` times each: fresh create-to-first-response,
fork-from-zygote create-to-first-response, pause, unpause, destroy; the
making of a function's network namespace (``none``: loopback up; ``egress``:
also its veth and addresses), which a function pays once, not per call; and
two references on the same machine: a raw fork+exit+wait of a process as
large as the zygote, and a bare ``python -c pass`` start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from .._causes import released
from .._config import build_config
from .._errors import OlactorsError
from .._network import Network
from ..sock import Invocation, InvocationResult, SandboxMeta, SockSandbox, open_sock_pool
from ..sock._rootfs import python_executable
from ._stats import p50, p99

ECHO = "def f(event):\n    return event\n"
#: The leaves measured are one function's: they share its network namespace.
LEAF = SandboxMeta(network_scope="bench-echo")

RAW_FORK_SCRIPT = r"""
import os, sys, time
ballast = bytearray(int(sys.argv[1]))
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
samples = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    samples.append((time.perf_counter() - t) * 1000)
print(" ".join(f"{x:.4f}" for x in samples))
"""


def expect_ok(result: InvocationResult) -> None:
    if result.status != 200:
        raise OlactorsError(f"benchmark echo answered {result.status}: {result.body[:500]!r}")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def raw_fork_samples(size_bytes: int, samples: int) -> list[float]:
    """fork+exit+wait of a python process whose RSS is about ``size_bytes``."""
    base = 10 << 20  # an idle interpreter is already about this large
    out = subprocess.run(
        [
            python_executable(),
            "-I",
            "-S",
            "-c",
            RAW_FORK_SCRIPT,
            str(max(0, size_bytes - base)),
            str(samples),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [float(x) for x in out.split()]


def python_start_samples(samples: int) -> list[float]:
    xs = []
    for _ in range(samples):
        t0 = time.perf_counter()
        subprocess.run([python_executable(), "-c", "pass"], check=True)
        xs.append(_ms(t0))
    return xs


async def time_creates(pool, parent, code: Path, samples: int, destroy: list[float]) -> list[float]:
    """Create-to-first-response of ``samples`` leaves (fresh when ``parent`` is
    None, else forked from it); each destroy's time is appended to ``destroy``."""
    request = Invocation(body=b'{"n": 1}')
    created = []
    for _ in range(samples):
        t0 = time.perf_counter()
        sb = await pool.create(parent, True, str(code), None, LEAF)
        result = await sb.invoke(request)
        created.append(_ms(t0))
        expect_ok(result)
        t0 = time.perf_counter()
        await sb.destroy(released("bench"))
        destroy.append(_ms(t0))
    return created


async def time_namespaces(pool, mode: Network, samples: int) -> list[float]:
    """Making (and destroying, untimed) the network namespace of ``samples`` new functions."""
    made = []
    for i in range(samples):
        scope = f"bench-netns-{mode.value}-{i}"
        t0 = time.perf_counter()
        lease = await pool.networks.acquire(scope, mode)
        made.append(_ms(t0))
        await pool.networks.release(lease)
        await pool.forget_network(scope)
    return made


async def measure(samples: int, worker_dir: Path) -> dict[str, float]:
    code = worker_dir / "bench-echo"
    code.mkdir(exist_ok=True)
    (code / "f.py").write_text(ECHO)
    request = Invocation(body=b'{"n": 1}')
    pause: list[float] = []
    unpause: list[float] = []
    destroy: list[float] = []
    async with open_sock_pool(build_config(None), worker_dir) as pool:
        fresh = await time_creates(pool, None, code, samples, destroy)
        zygote = await pool.create(None, False, None, None, SandboxMeta())
        fork = await time_creates(pool, zygote, code, samples, destroy)
        zygote_raw = zygote.raw
        assert isinstance(zygote_raw, SockSandbox)  # the real pool's sandboxes
        zygote_rss = rss_bytes(zygote_raw.pid)
        leaf = await pool.create(zygote, True, str(code), None, LEAF)
        for _ in range(samples):
            t0 = time.perf_counter()
            await leaf.pause()
            pause.append(_ms(t0))
            t0 = time.perf_counter()
            await leaf.unpause()
            unpause.append(_ms(t0))
        expect_ok(await leaf.invoke(request))
        anomalies = pool.anomalies.total()
        netns = {mode: await time_namespaces(pool, mode, samples) for mode in Network}
    raw = raw_fork_samples(zygote_rss, samples)
    start = python_start_samples(samples)
    return {
        "samples": samples,
        "fresh_p50_ms": p50(fresh),
        "fresh_p99_ms": p99(fresh),
        "fork_p50_ms": p50(fork),
        "fork_p99_ms": p99(fork),
        "pause_p50_ms": p50(pause),
        "pause_p99_ms": p99(pause),
        "unpause_p50_ms": p50(unpause),
        "unpause_p99_ms": p99(unpause),
        "destroy_p50_ms": p50(destroy),
        "destroy_p99_ms": p99(destroy),
        "netns_none_p50_ms": p50(netns[Network.NONE]),
        "netns_none_p99_ms": p99(netns[Network.NONE]),
        "netns_egress_p50_ms": p50(netns[Network.EGRESS]),
        "netns_egress_p99_ms": p99(netns[Network.EGRESS]),
        "raw_fork_p50_ms": p50(raw),
        "python_start_p50_ms": p50(start),
        "zygote_rss_mb": zygote_rss / (1 << 20),
        "cgroup_anomalies": anomalies,
        "fork_vs_raw_fork": p50(fork) / p50(raw),
        "fresh_vs_python_start": p50(fresh) / p50(start),
    }


def report(figures: dict[str, float]) -> str:
    rows = [
        ("fresh create-to-first-response", "fresh"),
        ("fork-from-zygote create-to-first-response", "fork"),
        ("pause", "pause"),
        ("unpause", "unpause"),
        ("destroy", "destroy"),
        ("function network namespace, none (once)", "netns_none"),
        ("function network namespace, egress (once)", "netns_egress"),
    ]
    lines = [f"{'':44} {'p50 ms':>9} {'p99 ms':>9}"]
    for label, key in rows:
        lines.append(f"{label:44} {figures[key + '_p50_ms']:9.3f} {figures[key + '_p99_ms']:9.3f}")
    lines.append(
        f"{'raw fork+exit+wait (zygote-sized process)':44} {figures['raw_fork_p50_ms']:9.3f}"
    )
    lines.append(f"{'python -c pass':44} {figures['python_start_p50_ms']:9.3f}")
    lines.append(
        f"zygote RSS: {figures['zygote_rss_mb']:.1f} MiB; samples: {figures['samples']}; "
        f"cgroup anomalies (slow/failed kernel operations): {figures['cgroup_anomalies']}"
    )
    lines.append(f"fork p50 / raw fork p50 = {figures['fork_vs_raw_fork']:.2f}x (target <= 3x)")
    lines.append(
        f"fresh p50 / python start p50 = {figures['fresh_vs_python_start']:.2f}x (target <= 1.3x)"
    )
    return "\n".join(lines)


def run(samples: int, as_json: bool, worker_dir: Path | None) -> int:
    from ..sock import prepare_worker_process

    prepare_worker_process()
    with tempfile.TemporaryDirectory(prefix="olactors-bench-") as tmp:
        figures = trio.run(measure, samples, worker_dir or Path(tmp))
    print(json.dumps(figures, indent=2) if as_json else report(figures))
    sys.stdout.flush()
    return 0
