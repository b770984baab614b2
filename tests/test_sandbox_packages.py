"""Real sandboxes see exactly their package dirs, read-only; zygotes that
preload a package unfit to fork are refused with the package named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from olactors._errors import SandboxError, ZygoteUnsuitable
from olactors.sock import Invocation, PackageMount, Preload, SandboxMeta

from .conftest import write_function

pytestmark = pytest.mark.root

PROBE = """
import os, sys
def f(event):
    out = {"paths": [p for p in sys.path if p.startswith("/packages")],
           "listing": sorted(os.listdir("/packages")) if os.path.isdir("/packages") else None}
    if event:
        mod = __import__(event)
        out["value"] = mod.VALUE
        out["file"] = mod.__file__
        try:
            open(os.path.join(os.path.dirname(mod.__file__), "x"), "w")
            out["writable"] = True
        except OSError as exc:
            out["writable"] = exc.strerror
    try:
        import pip  # noqa: F401
        out["host_pip"] = True
    except ImportError:
        out["host_pip"] = False
    return out
"""

# Each module misbehaves at import in one way a zygote must not.
MISFITS = {
    "threader": "import threading, time\n"
    "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n",
    "writer": "LOG = open('/tmp/misfit.log', 'w')\n",
    "dirholder": "import os\nFD = os.open('/', os.O_RDONLY | os.O_DIRECTORY)\n",
    "listener": "import socket\nS = socket.socket(socket.AF_UNIX)\nS.bind('/tmp/l.sock')\n"
    "S.listen(1)\n",
    "broken": "raise ImportError('needs libfoo.so')\n",
}


def package_dir(tmp_path: Path, name: str, source: str) -> Path:
    site = tmp_path / "pkgs" / name
    site.mkdir(parents=True)
    (site / f"{name}.py").write_text(source)
    return site


def mount(site: Path, name: str) -> PackageMount:
    return PackageMount(str(site), f"/packages/{name}/1.0")


async def call(sb, event) -> dict:
    result = await sb.invoke(Invocation(body=json.dumps(event).encode()))
    assert result.status == 200, result
    return json.loads(result.body)


async def test_leaf_sees_exactly_its_packages_read_only(pool, tmp_path):
    code = str(write_function(tmp_path, "probe", PROBE))
    site = package_dir(tmp_path, "good", "VALUE = 42\n")
    package_dir(tmp_path, "other", "VALUE = 1\n")
    meta = SandboxMeta(packages=(mount(site, "good"),))
    sb = await pool.create(None, True, code, None, meta)
    out = await call(sb, "good")
    assert out["paths"] == ["/packages/good/1.0"]
    assert out["listing"] == ["good"]
    assert out["value"] == 42 and out["file"] == "/packages/good/1.0/good.py"
    assert out["writable"] == "Read-only file system"
    assert out["host_pip"] is False
    bare = await pool.create(None, True, code, None, SandboxMeta())
    assert (await call(bare, None))["paths"] == []


async def test_zygote_preloads_and_forks_leaf_with_its_packages(pool, tmp_path):
    code = str(write_function(tmp_path, "probe", PROBE))
    site = package_dir(tmp_path, "good", "VALUE = 7\n")
    packages = (mount(site, "good"),)
    zygote = await pool.create(
        None,
        False,
        None,
        None,
        SandboxMeta(packages=packages, preload=(Preload("good", ("good",)),)),
    )
    leaf = await pool.create(zygote, True, code, None, SandboxMeta(packages=packages))
    assert (await call(leaf, "good"))["value"] == 7
    with pytest.raises(SandboxError, match="would not see its package dirs /packages/good/1.0"):
        await pool.create(zygote, True, code, None, SandboxMeta())


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("threader", "runs 2 threads"),
        ("writer", "file open for writing (/tmp/misfit.log)"),
        ("dirholder", "is an open directory (/)"),
        ("listener", "is a listening socket"),
        ("broken", "importing it failed: ImportError: needs libfoo.so"),
    ],
)
async def test_misfit_package_makes_zygote_unsuitable(pool, tmp_path, name, reason):
    good = package_dir(tmp_path, "good", "VALUE = 1\n")
    bad = package_dir(tmp_path, name, MISFITS[name])
    meta = SandboxMeta(
        packages=(mount(good, "good"), mount(bad, name)),
        preload=(Preload("good", ("good",)), Preload(name, (name,))),
    )
    with pytest.raises(ZygoteUnsuitable) as caught:
        await pool.create(None, False, None, None, meta)
    assert caught.value.package == name
    assert reason in caught.value.reason
    assert not pool.sandboxes()
    # Forked from a fit zygote, a child zygote is inspected the same way.
    parent = await pool.create(
        None,
        False,
        None,
        None,
        SandboxMeta(packages=(mount(good, "good"),), preload=(Preload("good", ("good",)),)),
    )
    with pytest.raises(ZygoteUnsuitable, match=name):
        await pool.create(parent, False, None, None, meta)
    assert [sb.id for sb in pool.sandboxes()] == [parent.id]


@pytest.mark.parametrize("target", ["/elsewhere/x", "/packages/../etc", "/packages/a/"])
async def test_bad_package_targets_are_refused(pool, tmp_path, target):
    site = package_dir(tmp_path, "good", "VALUE = 1\n")
    with pytest.raises(SandboxError, match="bad package mount target"):
        await pool.create(
            None, True, None, None, SandboxMeta(packages=(PackageMount(str(site), target),))
        )
