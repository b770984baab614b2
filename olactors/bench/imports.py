"""`olactors bench imports`: cold starts of a function importing a heavy package,
without and with a zygote that already imported it, in one run.

The heavy package (``olheavy``) is generated locally as a wheel: ``--modules``
modules in 20 subpackages, each doing real import work (a table computed at
import, classes, a compiled regex, imports of its siblings), and its
``__init__`` imports them all, as large libraries do.  It is installed once by
the worker's own installer sandbox from an offline index, so the figure is
reproducible without a network.

Two real workers run one after the other on the same package store: the
first with the import cache off (every sandbox starts fresh and imports the
package), the second with a zygote tree node for ``olheavy`` whose zygote is
built by a warm-up call before timing.  Each sample is the first invocation
of a function never seen before (its own name, code pulled from the
registry), measured around ``worker.invoke``.  Prints the medians and their
ratio; the target is a speedup of at least 10x.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import trio

from .._config import build_config
from .._errors import OlactorsError
from ..packages import Pin, write_lock
from ..packages._wheel import write_wheel
from ..sock import Invocation
from ._stats import p50, p99

TARGET_SPEEDUP = 10.0
PACKAGE = "olheavy"
SUBPACKAGES = 20

_MODULE = '''"""{package}.{sub}.m{index}: generated import work."""
import math
import re
{sibling}
SEED = {seed}
TABLE = {{i: round(math.sin(i * SEED) * 1000, 3) for i in range(200)}}
PATTERN = re.compile(r"(item|{sub}_m{index})_(\\d+)_{seed}")
NAMES = sorted("n%d" % ((i * SEED) % 997) for i in range(50))


class Model{index}:
    """A small model class."""

    scale = SEED

    def __init__(self, value):
        self.value = value

    def scaled(self):
        return self.value * self.scale

    def __repr__(self):
        return "Model{index}(%r)" % (self.value,)


class Store{index}(dict):
    def total(self):
        return sum(self.values())


def compute(x):
    return sum(TABLE[i] for i in range(0, 200, 7)) + x


def parse(text):
    match = PATTERN.search(text)
    return match.group(2) if match else None
'''

FUNCTION = f"""
import {PACKAGE}

def f(event):
    return {{"modules": {PACKAGE}.MODULES}}
"""

TREE = f"""
root:
  name: root
  imports: [json]
  children:
    - name: heavy
      packages: [{PACKAGE}]
"""


def build_heavy_wheel(dest: Path, modules: int) -> Path:
    """The generated heavy package's wheel, written into ``dest``."""
    files: dict[str, bytes] = {}
    imports = []
    for index in range(modules):
        sub = f"sub{index % SUBPACKAGES}"
        position = index // SUBPACKAGES
        sibling = f"from . import m{index - SUBPACKAGES}" if position else ""
        source = _MODULE.format(
            package=PACKAGE, sub=sub, index=index, seed=index * 7919 % 10007 + 1, sibling=sibling
        )
        files[f"{PACKAGE}/{sub}/m{index}.py"] = source.encode()
        imports.append(f"from .{sub} import m{index}")
    for number in range(min(SUBPACKAGES, modules)):
        files[f"{PACKAGE}/sub{number}/__init__.py"] = b""
    init = "\n".join([*imports, f"MODULES = {modules}", ""])
    files[f"{PACKAGE}/__init__.py"] = init.encode()
    return write_wheel(dest, PACKAGE, "1.0", files)


def _function(registry: Path, name: str) -> None:
    code = registry / name
    code.mkdir(parents=True)
    (code / "f.py").write_text(FUNCTION)
    (code / "requirements.txt").write_text(f"{PACKAGE}\n")
    write_lock(code, [Pin(PACKAGE, "1.0")])


async def _cold_starts(
    config_overrides: list[str], worker_dir: Path, samples: int, tag: str
) -> list[float]:
    from ..worker import open_worker

    config = build_config(None, config_overrides)
    registry = worker_dir / "registry"
    for i in range(samples + 1):
        _function(registry, f"{tag}{i}")
    times = []
    async with open_worker(config, worker_dir) as worker:

        async def call(name: str) -> float:
            t0 = time.perf_counter()
            result = await worker.invoke(name, Invocation(body=b""), f"bench-{name}")
            elapsed = (time.perf_counter() - t0) * 1000
            if result.status != 200:
                raise OlactorsError(f"{name} answered {result.status}: {result.body[:500]!r}")
            return elapsed

        await call(f"{tag}0")  # installs the package (once) and, with the cache on, the zygote
        for i in range(1, samples + 1):
            times.append(await call(f"{tag}{i}"))
    return times


async def measure(samples: int, modules: int, work: Path) -> dict[str, float]:
    wheels = work / "wheels"
    build_heavy_wheel(wheels, modules)
    wheels.chmod(0o755)
    tree = work / "zygotes.yaml"
    tree.write_text(TREE)
    common = [
        "packages.offline=true",
        f"packages.find_links=[{json.dumps(str(wheels))}]",
        "memory.pool_mb=16384",
        "functions.pause_after_s=60",
        "import_cache.pause_after_s=60",
        "sandbox.cgroup_pool_size=8",
        f"import_cache.tree={tree}",
        "sandbox.ready_timeout_s=60",
    ]
    worker_dir = work / "worker"
    fresh = await _cold_starts([*common, "import_cache.enabled=false"], worker_dir, samples, "a")
    shutil.rmtree(worker_dir / "registry")
    forked = await _cold_starts([*common, "import_cache.enabled=true"], worker_dir, samples, "b")
    no_zygote, zygote = p50(fresh), p50(forked)
    return {
        "samples": samples,
        "modules": modules,
        "cold_no_zygote_p50_ms": round(no_zygote, 2),
        "cold_no_zygote_p99_ms": round(p99(fresh), 2),
        "cold_zygote_p50_ms": round(zygote, 2),
        "cold_zygote_p99_ms": round(p99(forked), 2),
        "speedup": round(no_zygote / zygote, 1),
        "target_speedup": TARGET_SPEEDUP,
    }


def run(samples: int, modules: int, as_json: bool) -> int:
    if samples < 1 or modules < 1:
        raise OlactorsError("--samples and --modules must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="olactors-bench-imports-"))
    try:
        figures = trio.run(measure, samples, modules, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if as_json:
        print(json.dumps(figures))
    else:
        print(f"cold start of a function importing {PACKAGE} ({modules} modules), ")
        print(f"{samples} never-seen functions each:")
        print(f"  import cache off (fresh sandbox): p50 {figures['cold_no_zygote_p50_ms']:8.1f} ms")
        print(f"  zygote already imported it:       p50 {figures['cold_zygote_p50_ms']:8.1f} ms")
        verdict = "met" if figures["speedup"] >= TARGET_SPEEDUP else "MISSED"
        print(f"  speedup {figures['speedup']}x (target >= {TARGET_SPEEDUP:g}x: {verdict})")
    return 0
