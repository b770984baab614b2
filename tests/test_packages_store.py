"""PackageStore: versions appear complete or not at all, the disk budget, the
unsuitable record, and top-level modules from a distribution's metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from olactors.packages import Pin
from olactors.packages._store import BadInstall, PackageStore, top_level_modules

ALPHA = Pin("alpha", "1.0")


def fake_install(staging: Path, name: str = "alpha", version: str = "1.0", size: int = 10) -> None:
    """What pip --target leaves: a package and its dist-info (RECORD, no top_level.txt)."""
    site = staging / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("x" * size)
    (site / "helper.py").write_text("")
    (site / "_speedups.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "RECORD").write_text(
        f"{name}/__init__.py,,\nhelper.py,,\n_speedups.cpython-311-x86_64-linux-gnu.so,,\n"
        f"{name}-{version}.dist-info/RECORD,,\n../../bin/tool,,\n"
    )


@pytest.fixture
def store(tmp_path) -> PackageStore:
    s = PackageStore(tmp_path / "packages", max_disk_mb=16)
    s.open()
    return s


def test_commit_moves_a_checked_install_into_place(store):
    staging = store.new_staging(ALPHA)
    assert (staging / "req.txt").read_text() == "alpha==1.0\n"
    fake_install(staging)
    package = store.commit(ALPHA, staging)
    assert package.modules == ("_speedups", "alpha", "helper")
    assert package.site == store.root / "alpha/1.0/site"
    meta = json.loads((store.root / "alpha/1.0/meta.json").read_text())
    assert meta["size_bytes"] == package.size_bytes > 10
    assert not staging.exists() and not list((store.root / ".staging").iterdir())
    assert store.get(ALPHA) == package
    reopened = PackageStore(store.root, 16)
    reopened.open()
    assert reopened.get(ALPHA) == package


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda st: None, "pip installed nothing"),
        (lambda st: fake_install(st, version="2.0"), "pip installed alpha-2.0, not alpha==1.0"),
        (lambda st: fake_install(st, name="beta"), "pip installed beta-1.0"),
    ],
)
def test_commit_refuses_what_is_not_the_pin_and_leaves_nothing(store, make, message):
    staging = store.new_staging(ALPHA)
    make(staging)
    with pytest.raises(BadInstall, match=message):
        store.commit(ALPHA, staging)
    assert not (store.root / "alpha").exists()
    assert not list((store.root / ".staging").iterdir())


def test_symlinks_in_an_install_are_never_followed(store, tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("secret")
    staging = store.new_staging(ALPHA)
    fake_install(staging)
    os.symlink(outside, staging / "site" / "alpha" / "link")
    os.chown(outside, 1234, 1234)
    package = store.commit(ALPHA, staging)
    assert outside.stat().st_uid == 1234  # lchown, not chown through the link
    plain = Pin("alpha", "2.0")
    staging = store.new_staging(plain)
    fake_install(staging, version="2.0")
    assert package.size_bytes == store.commit(plain, staging).size_bytes  # link not counted


def test_open_drops_incomplete_versions_and_staging_leftovers(tmp_path):
    root = tmp_path / "packages"
    (root / "alpha" / "1.0" / "site").mkdir(parents=True)  # no meta.json: a crash mid-install
    (root / ".staging" / "alpha-1.0-dead").mkdir(parents=True)
    store = PackageStore(root, 16)
    store.open()
    assert store.get(ALPHA) is None
    assert not (root / "alpha" / "1.0").exists()
    assert not list((root / ".staging").iterdir())


def test_evicts_least_recently_used_versions_nothing_holds(store):
    for version in ("1.0", "2.0", "3.0"):
        pin = Pin("alpha", version)
        staging = store.new_staging(pin)
        fake_install(staging, version=version, size=1000)
        size = store.commit(pin, staging).size_bytes
    store.hold([("alpha", "1.0")])  # the oldest, but held
    store.hold([("alpha", "3.0")])
    store.unhold([("alpha", "3.0")])  # used last: evicted last
    store.budget_bytes = 2 * size  # room for two of the three
    removed = store.evict_to_budget(mounted=set())
    assert removed == [("alpha", "2.0")]
    store.budget_bytes = 0
    assert store.evict_to_budget(mounted={str(store.root / "alpha/3.0/site")}) == []
    store.unhold([("alpha", "1.0")])
    assert store.evict_to_budget(mounted=set()) == [("alpha", "1.0"), ("alpha", "3.0")]
    assert not (store.root / "alpha").exists()
    assert store.describe()["evicted"] == 3


def test_unsuitable_packages_are_persisted(store):
    store.mark_unsuitable("My_Pkg", "1.2", "it runs 3 threads")
    reopened = PackageStore(store.root, 16)
    reopened.open()
    assert reopened.unsuitable_names() == frozenset({"my-pkg"})
    assert reopened.describe()["unsuitable"]["my-pkg"] == {
        "version": "1.2",
        "reason": "it runs 3 threads",
    }


def test_top_level_txt_wins_but_only_for_importable_names(tmp_path):
    site = tmp_path / "site"
    (site / "real").mkdir(parents=True)
    (site / "real" / "__init__.py").write_text("")
    info = site / "d-1.dist-info"
    info.mkdir()
    (info / "top_level.txt").write_text("real\nmissing\n__pycache__\n")
    assert top_level_modules(site, info) == ("real",)
