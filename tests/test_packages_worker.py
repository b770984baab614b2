"""Packages end to end: a real worker resolves and installs locally built
wheels in installer sandboxes, mounts them read-only, builds zygotes per exact
version, finds packages unfit for zygotes, and keeps its disk budget."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from olactors._causes import released
from olactors.packages import Pin, write_lock
from olactors.sock import Invocation
from olactors.worker import open_worker
from olactors.worker_dir import init_worker_dir

from .test_http_api import serving, write_fn
from .wheel_factory import WheelSpec, build_standard_wheels, build_wheel

pytestmark = pytest.mark.root

# What a function reports: the version it imported, whether its zygote had
# preloaded the package, and what it can see of the host.
PROBE = """
import os, sys
PRELOADED = {name} in sys.modules
import {module} as pkg

def f(event):
    try:
        import pip  # noqa: F401
        host_pip = True
    except ImportError:
        host_pip = False
    return {{
        "version": pkg.VERSION,
        "file": pkg.__file__,
        "preloaded": PRELOADED,
        "paths": [p for p in sys.path if p.startswith("/packages")],
        "host_pip": host_pip,
    }}
"""

# Packages that misbehave at import in the ways a zygote must not.
MISFITS = (
    WheelSpec(
        "threader",
        "1.0",
        extra_code="import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n",
    ),
    WheelSpec("writer", "1.0", extra_code="LOG = open('/tmp/writer.log', 'w')\n"),
    WheelSpec(
        "dirholder",
        "1.0",
        extra_code="import os\nFD = os.open('/', os.O_RDONLY | os.O_DIRECTORY)\n",
    ),
)

TREE = """
root:
  name: root
  imports: [json]
  children:
    - name: alpha
      packages: [alpha]
    - name: threader
      packages: [threader]
    - name: writer
      packages: [writer]
    - name: dirholder
      packages: [dirholder]
"""


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    dest = build_standard_wheels(tmp_path_factory.mktemp("wheels"))
    for spec in MISFITS:
        build_wheel(spec, dest)
    dest.chmod(0o755)  # the installer runs unprivileged
    return dest


@pytest.fixture
def settings(wheels, tmp_path) -> tuple[str, ...]:
    tree = tmp_path / "zygotes.yaml"
    tree.write_text(TREE)
    return (
        "packages.offline=true",
        f"packages.find_links=[{json.dumps(str(wheels))}]",
        f"import_cache.tree={tree}",
        "import_cache.pause_after_s=30",
    )


def probe(name: str) -> str:
    module = name.replace("-", "_")
    return PROBE.format(name=repr(module), module=module)


def packaged_fn(served: object, name: str, package: str, requirements: str) -> Path:
    code = write_fn(served, name, probe(package))
    (code / "requirements.txt").write_text(requirements + "\n")
    return code


async def call(served, name: str) -> tuple[int, dict]:
    async with served.client() as client:
        r = await client.post(f"/run/{name}", json=None)
    return r.status_code, r.json()


async def admin_packages(served) -> dict:
    async with served.admin_client() as admin:
        return (await admin.get("/packages")).json()


def installed_dirs(worker_dir: Path) -> list[str]:
    root = worker_dir / "packages"
    return sorted(
        f"{d.parent.name}/{d.name}" for d in root.glob("*/*") if not d.parent.name.startswith(".")
    )


async def test_function_gets_its_resolved_versions_installed_once_and_read_only(
    worker_dir, settings
):
    async with serving(worker_dir, *settings) as served:
        packaged_fn(served, "old", "alpha", "alpha<2")
        packaged_fn(served, "new", "alpha", "alpha>=2")
        packaged_fn(served, "new2", "alpha", "alpha==2.0")
        async with trio.open_nursery() as nursery:
            results = {}

            async def run(name):
                results[name] = await call(served, name)

            for name in ("old", "new", "new2"):
                nursery.start_soon(run, name)
        assert results["old"] == (200, results["old"][1])
        old, new, new2 = (results[n][1] for n in ("old", "new", "new2"))
        assert old["version"] == "1.0" and new["version"] == "2.0" and new2["version"] == "2.0"
        assert old["file"] == "/packages/alpha/1.0/alpha/__init__.py"
        assert old["paths"] == ["/packages/alpha/1.0"]
        assert old["host_pip"] is False  # nothing from the host's site-packages
        # Both versions side by side; concurrent users of alpha 2.0 shared one install.
        assert installed_dirs(worker_dir) == ["alpha/1.0", "alpha/2.0"]
        status = await admin_packages(served)
        assert status["installs"] == 2
        assert {(p["name"], p["version"]) for p in status["installed"]} == {
            ("alpha", "1.0"),
            ("alpha", "2.0"),
        }
        site = worker_dir / "packages/alpha/1.0/site"
        assert site.stat().st_uid == 0 and (site / "alpha/__init__.py").stat().st_uid == 0
        assert not list((worker_dir / "packages/.staging").iterdir())
    # A restarted worker finds them installed: no second install.
    async with serving(worker_dir, *settings) as served:
        status, body = await call(served, "old")
        assert (status, body["version"]) == (200, "1.0")
        assert (await admin_packages(served))["installs"] == 0


async def test_zygotes_are_built_per_exact_version(worker_dir, settings):
    async with serving(worker_dir, *settings) as served:
        packaged_fn(served, "old", "alpha", "alpha<2")
        packaged_fn(served, "new", "alpha", "alpha>=2")
        status, old = await call(served, "old")
        assert status == 200 and old["preloaded"] and old["version"] == "1.0"
        status, new = await call(served, "new")
        assert status == 200 and new["preloaded"] and new["version"] == "2.0"
        async with served.admin_client() as admin:
            stats = (await admin.get("/stats")).json()
        zygotes = {
            (z["node"], json.dumps(z["packages"], sort_keys=True))
            for z in stats["import_cache"]
            if z["state"] != "none"
        }
        assert ("alpha", '{"alpha": "1.0"}') in zygotes
        assert ("alpha", '{"alpha": "2.0"}') in zygotes


async def test_lock_file_pins_exact_versions(worker_dir, settings):
    async with serving(worker_dir, *settings) as served:
        code = packaged_fn(served, "locked", "alpha", "alpha")
        write_lock(code, [Pin("alpha", "1.0")])
        status, body = await call(served, "locked")
        assert (status, body["version"]) == (200, "1.0")  # unlocked, pip would pick 2.0


async def test_install_failure_is_clear_and_leaves_nothing(worker_dir, settings):
    async with serving(worker_dir, *settings) as served:
        code = packaged_fn(served, "tampered", "alpha", "alpha")
        write_lock(code, [Pin("alpha", "1.0", "0" * 64)])  # not the wheel's hash
        status, body = await call(served, "tampered")
        assert status == 424, body
        assert body["error"] == "package_install_failed"
        assert body["package"] == "alpha" and body["version"] == "1.0"
        assert "hash" in body["pip_tail"].lower()
        assert "alpha==1.0" in body["message"]
        # Within the cooldown the same answer comes at once, without another install.
        status, again = await call(served, "tampered")
        assert (status, again["error"]) == (424, "package_install_failed")
        assert (await admin_packages(served))["installs"] == 0
        assert installed_dirs(worker_dir) == []
        assert not list((worker_dir / "packages/.staging").iterdir())
        # Another function is not held up by it.
        packaged_fn(served, "fine", "alpha", "alpha<2")
        assert (await call(served, "fine"))[0] == 200


@pytest.mark.parametrize(
    ("requirements", "named"),
    [("conflict-a\nconflict-b", "conflict-a"), ("no-such-package==1", "no-such-package")],
)
async def test_resolution_failure_is_a_424(worker_dir, settings, requirements, named):
    async with serving(worker_dir, *settings) as served:
        packaged_fn(served, "bad", "alpha", requirements)
        status, body = await call(served, "bad")
        assert status == 424, body
        assert body["error"] == "package_resolution_failed"
        assert named in body["message"] and body["pip_tail"]


@pytest.mark.parametrize(
    ("package", "reason"),
    [
        ("threader", "runs 2 threads"),
        ("writer", "file open for writing (/tmp/writer.log)"),
        ("dirholder", "open directory (/)"),
    ],
)
async def test_unsuitable_package_is_recorded_and_imported_in_the_leaf(
    worker_dir, settings, package, reason
):
    async with serving(worker_dir, *settings) as served:
        packaged_fn(served, "user", package, package)
        status, body = await call(served, "user")
        assert status == 200, body
        assert body["version"] == "1.0"
        assert body["preloaded"] is False  # imported by the leaf, not a zygote
        unsuitable = (await admin_packages(served))["unsuitable"]
        assert unsuitable[package]["version"] == "1.0"
        assert reason in unsuitable[package]["reason"]
        # Later cold starts go straight to the root zygote.
        packaged_fn(served, "user2", package, package)
        status, body = await call(served, "user2")
        assert (status, body["preloaded"]) == (200, False)
    recorded = json.loads((worker_dir / "packages/unsuitable.json").read_text())
    assert reason in recorded[package]["reason"]
    # A restarted worker remembers: no zygote with it is ever built again.
    async with serving(worker_dir, *settings) as served:
        status, body = await call(served, "user")
        assert (status, body["preloaded"]) == (200, False)
        async with served.admin_client() as admin:
            stats = (await admin.get("/stats")).json()
        assert not [z for z in stats["import_cache"] if z["node"] == package]


async def invoke(worker, name: str) -> tuple[int, dict]:
    result = await worker.invoke(name, Invocation(body=b""), "test")
    return result.status, json.loads(result.body)


async def test_disk_budget_evicts_least_recently_used_unused_versions(worker_dir, settings):
    config = init_worker_dir(worker_dir, [*settings, "sandbox.cgroup_pool_size=4"])
    registry = worker_dir / "registry"
    packaged_fn(registry, "a", "alpha", "alpha<2")
    packaged_fn(registry, "g", "gamma", "gamma")
    packaged_fn(registry, "z", "zeta", "zeta")
    async with open_worker(config, worker_dir) as worker:
        store = worker.package_puller.store
        assert (await invoke(worker, "g"))[0] == 200
        store.budget_bytes = 0  # only versions in use may stay
        assert (await invoke(worker, "z"))[0] == 200
        # gamma is mounted in g's live sandbox: it stays; so does zeta, in use too.
        assert installed_dirs(worker_dir) == ["gamma/1.0", "zeta/1.0"]
        for sb in worker.pool.sandboxes():
            if any("/gamma/" in m.source for m in sb.meta.packages):
                await sb.destroy(released("test"))
        assert (await invoke(worker, "a"))[0] == 200
        # alpha is in use by a's leaf and its zygote; gamma by nothing any more.
        assert installed_dirs(worker_dir) == ["alpha/1.0", "zeta/1.0"]
        assert worker.packages()["evicted"] == 1
        # An evicted version is installed again when needed.
        status, body = await invoke(worker, "g")
        assert (status, body["version"]) == (200, "1.0")
        assert "gamma/1.0" in installed_dirs(worker_dir)


def test_bench_imports_reports_its_figures(tmp_path):
    from olactors.bench.imports import measure

    figures = trio.run(measure, 1, 20, tmp_path)
    assert set(figures) >= {"cold_no_zygote_p50_ms", "cold_zygote_p50_ms", "speedup"}
    assert figures["cold_no_zygote_p50_ms"] > 0 and figures["cold_zygote_p50_ms"] > 0


@pytest.mark.skipif(
    not os.environ.get("OLACTORS_TEST_PUBLIC_INDEX"),
    reason="reaches the public package index; set OLACTORS_TEST_PUBLIC_INDEX=1",
)
async def test_installs_from_the_public_index(worker_dir):
    async with serving(worker_dir, "packages.find_links=[]") as served:
        code = write_fn(served, "sixer", "import six\ndef f(event):\n    return six.__version__\n")
        (code / "requirements.txt").write_text("six==1.16.0\n")
        async with served.client() as client:
            r = await client.post("/run/sixer", json=None)
        assert (r.status_code, r.json()) == (200, "1.16.0")
