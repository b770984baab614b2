"""A simulation leaves nothing on the machine and shares no file with another run.

The simulated worker is the real worker, which keeps a little on disk (its
package store).  Each run gets its own temporary directory for that, removed
when the run ends.  The child process below runs a simulation with an audit
hook (:func:`sys.addaudithook`) that records every path the process writes,
creates, renames or removes; the test checks each one is inside that run's
temporary area (``TMPDIR``, private to the child) and that the area is empty
afterwards.  Two such runs at once, in two processes, both succeed and, with
the same seed, give the same digest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Run in a child: a simulation under an audit hook; prints what it wrote and the digest.
CHILD = r"""
import json, os, sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: Audit events that change the file system, and where each one's path is.
PATH_EVENTS = {
    "os.mkdir": 0, "os.remove": 0, "os.rmdir": 0, "os.rename": (0, 1),
    "os.symlink": 1, "os.link": 1, "os.chmod": 0, "os.chown": 0, "os.truncate": 0,
    "os.utime": 0, "os.mknod": 0, "os.mkfifo": 0, "shutil.rmtree": 0, "shutil.copyfile": 1,
    "sqlite3.connect": 0,
}
#: Events whose last argument is a dir_fd (None, or the directory a relative path is in).
DIR_FD_LAST = {
    "os.mkdir", "os.remove", "os.rmdir", "os.symlink", "os.chmod", "os.chown", "os.utime",
    "os.mknod", "os.mkfifo", "shutil.rmtree",
}
written = []


def absolute(path, dir_fd=None):
    if isinstance(path, int):
        return os.readlink(f"/proc/self/fd/{path}")
    path = os.fsdecode(path)
    if os.path.isabs(path):
        return path
    base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.getcwd()
    return os.path.join(base, path)


def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is not None and (flags & WRITE_FLAGS or (mode and set(mode) & set("wax+"))):
            written.append((event, absolute(path)))
    elif event in PATH_EVENTS:
        where = PATH_EVENTS[event]
        dir_fd = args[-1] if event in DIR_FD_LAST else None
        for index in where if isinstance(where, tuple) else (where,):
            if event == "sqlite3.connect" and args[index] == ":memory:":
                continue
            written.append((event, absolute(args[index], dir_fd)))


kind, seed = sys.argv[1], int(sys.argv[2])
import olactors.simulation as sim  # imported before the hook: module caches are not the run's
from simulations import SCENARIOS

sys.addaudithook(hook)
if kind == "scenario":
    result = sim.run_scenario(SCENARIOS["crash-storm"](0.03), seed)
    ok = result.ok
else:
    scenario = sim.ClusterScenario(
        name="small", workers=3, functions=30, calls=150, rate_per_s=60.0,
        settings=("memory.pool_mb=4096",), packages=sim.PackageModel(distributions=20),
    )
    result = sim.run_cluster(scenario, sim.Routing.CONSISTENT, seed)
    ok = result.ok
print(json.dumps({"ok": ok, "digest": result.digest, "written": written}))
"""


def start(kind: str, seed: int, tmp: Path) -> subprocess.Popen[str]:
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, str(seed)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen[str], tmp: Path) -> dict:
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    outside = [
        (event, path)
        for event, path in report["written"]
        if not Path(path).resolve().is_relative_to(tmp.resolve())
    ]
    assert not outside, f"the simulation wrote outside its temporary area: {outside[:10]}"
    assert report["written"], "the audit hook saw nothing: it would not see a stray write either"
    assert list(tmp.iterdir()) == [], "the run left files in its temporary area"
    assert report["ok"]
    return report


@pytest.mark.parametrize("kind", ["scenario", "cluster"])
def test_concurrent_runs_write_only_their_own_temporary_dirs(kind, tmp_path):
    one = start(kind, 5, tmp_path / "one")
    two = start(kind, 5, tmp_path / "two")
    first = finish(one, tmp_path / "one")
    second = finish(two, tmp_path / "two")
    # Separate directories (random names) and separate processes: still the same run.
    assert first["digest"] == second["digest"]
