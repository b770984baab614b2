"""A plain (non-editable) install works end to end (issue 11, defect 2).

From a copy of this checkout (found from this file's path, so it works in a
fresh clone) the test builds an sdist with the PEP 517 backend, builds a wheel
from the unpacked sdist without network (``--no-build-isolation``,
``--no-index``), and checks that the wheel holds every file of the package
source: the config defaults, the sandbox runtime, the examples, the C source
and the compiled native module.  It installs the wheel into a fresh venv
(this interpreter's site-packages lend it the dependencies, after the
venv's own; the test checks where olactors is imported from, in the venv's
interpreter and in the running worker's memory maps), runs ``olactors init`` and
``olactors serve`` from that venv in a directory that is not the checkout,
calls the example functions over HTTP, stops the worker with SIGTERM and
checks it cleaned up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site as site_module
import subprocess
import sys
import tarfile
import zipfile
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import cgroup_dirs_named
from .test_http_api import alive

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
#: What a build of the project reads from the checkout.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "olactors", "simulations")
#: Build products and caches a working tree may hold; never build inputs.
NOT_SOURCES = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.so", "*.o", "*.egg-info", "_olnative.c", ".*"
)
SITE_SCRIPT = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
DEADLINE_S = 150  # a hang guard: the test takes about 20 s


async def run(cmd: list[str | Path], cwd: Path, env: dict[str, str]) -> str:
    """Run ``cmd``; its stdout, or an AssertionError carrying its output."""
    result = await trio.run_process(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{out}\n{err}"
    return out


def clean_env() -> dict[str, str]:
    """This environment without what could point Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def package_files(root: Path) -> set[str]:
    """Every file under ``root``/olactors, as a path relative to ``root``."""
    return {p.relative_to(root).as_posix() for p in (root / "olactors").rglob("*") if p.is_file()}


async def build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    """sdist from a copy of the checkout, then a wheel from the unpacked sdist."""
    source = tmp / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=NOT_SOURCES)
        else:
            shutil.copy2(path, source / name)
    dist = tmp / "dist"
    sdist_name = await run(
        [
            sys.executable,
            "-c",
            f"from setuptools import build_meta as b; print(b.build_sdist({str(dist)!r}))",
        ],
        source,
        env,
    )
    unpacked = tmp / "sdist"
    with tarfile.open(dist / sdist_name.split()[-1]) as archive:
        archive.extractall(unpacked, filter="data")
    (tree,) = unpacked.iterdir()
    await run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-q", "-w", dist, tree],
        tmp,
        env,
    )
    (wheel,) = dist.glob("olactors-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
    missing = package_files(source) - shipped
    assert not missing, f"the wheel lacks source files: {sorted(missing)}"
    native = [n for n in shipped if n.startswith("olactors/native/_olnative") and n.endswith(".so")]
    assert native, "the wheel has no compiled native module"
    for name in ("config/worker.yaml", "config/zygotes.yaml", "config/seccomp.yaml"):
        assert f"olactors/{name}" in shipped
    assert "olactors/sock/runtime/server.py" in shipped
    # The SIGSYS handler sandboxes preload (a plain shared library, no Python suffix).
    assert "olactors/sock/runtime/libolsigsys.so" in shipped
    assert "olactors/examples/echo/f.py" in shipped
    return wheel


async def install(wheel: Path, venv: Path, tmp: Path, env: dict[str, str]) -> Path:
    """A fresh venv holding ``wheel``; its site-packages dir.

    The dependencies come from this interpreter's site-packages dirs, named in
    a ``.pth`` file that the venv reads after its own site-packages: the
    wheel's olactors comes first, and the ``.pth`` files of those dirs (the
    editable checkout's import hook among them) are not run.
    """
    await run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    site = Path((await run([python, "-c", SITE_SCRIPT], tmp, env)).strip())
    (site / "zz_test_dependencies.pth").write_text("\n".join(site_module.getsitepackages()))
    await run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
        + ["--no-index", "--ignore-installed", wheel],
        tmp,
        env,
    )
    where = json.loads(
        await run(
            [
                python,
                "-c",
                "import json, olactors, olactors.native._olnative as n\n"
                "print(json.dumps([olactors.__file__, n.__file__]))",
            ],
            tmp,
            env,
        )
    )
    assert site.is_relative_to(venv), site
    for path in where:
        assert Path(path).is_relative_to(site / "olactors"), (path, site)
    return site


async def stop_on_failure(proc: trio.Process) -> None:
    """A worker still running after a failure: SIGTERM (so it removes its
    sandboxes and cgroups), SIGKILL if that takes over 30 s."""
    if proc.returncode is not None:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(30):
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    if proc.returncode is None:
        proc.kill()


def mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {parts[5] for line in f if len(parts := line.split()) >= 6}


async def test_wheel_installs_and_serves(tmp_path: Path) -> None:
    from olactors.sock import worker_id

    env = clean_env()
    elsewhere = tmp_path / "elsewhere"  # the cwd of every command: not the checkout
    elsewhere.mkdir()
    worker = tmp_path / "worker"
    venv = tmp_path / "venv"
    with trio.fail_after(DEADLINE_S):
        wheel = await build_wheel(tmp_path, env)
        site = await install(wheel, venv, elsewhere, env)
        olactors = venv / "bin" / "olactors"

        await run([olactors, "init", "--path", worker], elsewhere, env)
        defaults = (site / "olactors" / "config" / "worker.yaml").read_text()
        assert (worker / "worker.yaml").read_text() == defaults

        log_path = tmp_path / "serve.log"
        endpoints_file = worker / "run" / "endpoints.json"
        with open(log_path, "wb") as log:
            async with trio.open_nursery() as nursery:
                proc = await nursery.start(
                    partial(
                        trio.run_process,
                        [str(olactors), "serve", "--path", str(worker)]
                        + ["--set", "server.port=0", "--set", "sandbox.cgroup_pool_size=2"],
                        cwd=elsewhere,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        check=False,
                    )
                )
                try:
                    while not endpoints_file.exists():
                        assert proc.returncode is None, log_path.read_text()
                        await trio.sleep(0.05)
                    endpoints = json.loads(endpoints_file.read_text())
                    assert endpoints["pid"] == proc.pid

                    # The worker runs the wheel's code, native module included.
                    maps = mapped_files(proc.pid)
                    assert any(m.startswith(f"{site}/olactors/native/_olnative") for m in maps)
                    assert not any(m.startswith(f"{REPO}/") for m in maps), sorted(maps)

                    async with httpx.AsyncClient(base_url=endpoints["public"], timeout=60) as c:
                        r = await c.post("/run/echo", json={"hi": [1, 2]})
                        assert r.status_code == 200, r.text
                        assert r.json() == {"hi": [1, 2]}
                        r = await c.get("/run/hello-wsgi")
                        assert r.status_code == 200, r.text
                        assert r.json()["hello"] == "world"
                    admin = httpx.AsyncHTTPTransport(uds=endpoints["admin"])
                    async with httpx.AsyncClient(transport=admin, base_url="http://admin") as a:
                        sandboxes = (await a.get("/sandboxes")).json()
                    pids = [pid for sb in sandboxes for pid in sb["pids"]]
                    assert pids

                    proc.send_signal(signal.SIGTERM)
                    assert await proc.wait() == 0, log_path.read_text()
                finally:
                    await stop_on_failure(proc)
    assert "worker stopped" in log_path.read_text()
    assert not (worker / "admin.sock").exists()
    assert not endpoints_file.exists()
    assert not [pid for pid in pids if alive(pid)]
    assert not cgroup_dirs_named(f"olactors-{worker_id(worker.resolve())}")
