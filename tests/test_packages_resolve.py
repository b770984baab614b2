"""Resolving with pip against a local directory of generated wheels (offline); `olactors lock`."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import textwrap
from pathlib import Path

import pytest
import trio

from olactors._config import build_config
from olactors._errors import BadFunction, ConfigError, PackageResolutionFailed
from olactors.cli import main
from olactors.packages import (
    LOCK_FILE,
    IndexOptions,
    Pin,
    parse_lock,
    pip_environment,
    read_function_packages,
    resolve,
    resolve_async,
)
from olactors.packages._resolve import pip_command

from .wheel_factory import WheelSpec, build_standard_wheels, build_wheel

TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    return build_standard_wheels(tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="module")
def index(wheels) -> IndexOptions:
    return IndexOptions(offline=True, find_links=(str(wheels),))


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's directory for this test, so that leftovers can be seen."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def _versions(resolution) -> dict[str, str]:
    return {dist.name: dist.version for dist in resolution.distributions}


# ------------------------------------------------------------------ resolving
@pytest.mark.parametrize(
    ("requirements", "expected"),
    [
        (["alpha"], {"alpha": "2.0"}),
        (["alpha<2"], {"alpha": "1.0"}),
        (["Alpha>=1,!=2.0"], {"alpha": "1.0"}),
        (["alpha>=1.5"], {"alpha": "2.0"}),
        (["beta"], {"beta": "1.0"}),
        (["beta[fast]"], {"beta": "1.0", "gamma": "1.0"}),
        (["delta"], {"delta": "1.0", "alpha": "1.0"}),
        (["alpha", "delta"], {"alpha": "1.0", "delta": "1.0"}),
        (["epsilon"], {"epsilon": "1.0"}),
        (['zeta; sys_platform == "win32"', "gamma"], {"gamma": "1.0"}),
    ],
)
def test_resolution(index, requirements, expected):
    resolution = resolve(requirements, index, TIMEOUT_S)
    assert _versions(resolution) == expected
    assert resolution.requirements == tuple(requirements)
    names = [dist.name for dist in resolution.distributions]
    assert names == sorted(names)


def test_distributions_carry_wheel_and_digest(index, wheels):
    resolution = resolve(["beta[fast]"], index, TIMEOUT_S)
    gamma = resolution.get("Gamma")
    beta = resolution.get("beta")
    assert beta is not None and gamma is not None
    assert beta.requested and not gamma.requested
    assert gamma.filename == "gamma-1.0-py3-none-any.whl"
    assert gamma.url.startswith("file://") and gamma.url.endswith(gamma.filename)
    assert gamma.sha256 == hashlib.sha256((wheels / gamma.filename).read_bytes()).hexdigest()
    assert resolution.pins() == (Pin("beta", "1.0", beta.sha256), Pin("gamma", "1.0", gamma.sha256))


def test_no_requirements_resolve_to_nothing(index):
    assert resolve([], IndexOptions(offline=True), TIMEOUT_S).distributions == ()


def test_conflict_is_424_with_pips_reason(index):
    with pytest.raises(PackageResolutionFailed) as info:
        resolve(["conflict-a", "conflict-b"], index, TIMEOUT_S)
    error = info.value
    assert (error.status, error.code) == (424, "package_resolution_failed")
    assert error.requirements == ("conflict-a", "conflict-b")
    assert error.message.startswith(
        "cannot resolve conflict-a, conflict-b: pip exited with status 1:\n"
    )
    assert "conflict-a 1.0 depends on alpha>=2" in error.pip_tail
    assert "conflict-b 1.0 depends on alpha<2" in error.pip_tail
    assert "ResolutionImpossible" in error.message
    assert len(error.pip_tail.splitlines()) <= 15


@pytest.mark.parametrize(
    ("requirements", "needle"),
    [
        (["no-such-package"], "No matching distribution found for no-such-package"),
        (["alpha>=3"], "satisfies the requirement alpha>=3 (from versions: 1.0, 2.0)"),
        (["beta", "gamma>1"], "No matching distribution found for gamma>1"),
    ],
)
def test_unresolvable_names_the_requirement(index, requirements, needle):
    with pytest.raises(PackageResolutionFailed) as info:
        resolve(requirements, index, TIMEOUT_S)
    assert info.value.status == 424
    assert info.value.message.startswith(f"cannot resolve {', '.join(requirements)}: ")
    assert needle in info.value.message


def test_sdists_are_never_built(tmp_path, wheels):
    """An sdist's setup.py would run on the host: resolution only takes wheels."""
    witness = tmp_path / "setup-ran"
    setup = f"open({str(witness)!r}, 'w').close()\nfrom setuptools import setup\nsetup()\n"
    links = tmp_path / "links"
    links.mkdir()
    with tarfile.open(links / "omega-1.0.tar.gz", "w:gz") as archive:
        for name, text in {
            "omega-1.0/setup.py": setup,
            "omega-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: omega\nVersion: 1.0\n",
        }.items():
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    index = IndexOptions(offline=True, find_links=(str(links),))
    with pytest.raises(PackageResolutionFailed, match="No matching distribution found for omega"):
        resolve(["omega"], index, TIMEOUT_S)
    assert not witness.exists()


def test_the_callers_pip_settings_are_ignored(index, tmp_path, monkeypatch):
    newer = tmp_path / "newer"
    build_wheel(WheelSpec("alpha", "3.0"), newer)
    monkeypatch.setenv("PIP_FIND_LINKS", str(newer))
    monkeypatch.setenv("PIP_NO_INDEX", "0")
    monkeypatch.setenv("PIP_ONLY_BINARY", "")
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nfind-links = {newer}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    assert _versions(resolve(["alpha"], index, TIMEOUT_S)) == {"alpha": "2.0"}


def test_pip_environment():
    env = pip_environment(
        {"PATH": "/bin", "PIP_INDEX_URL": "x", "PIP_CERT": "/ca.pem", "PIP_CONFIG_FILE": "/p"}
    )
    assert env == {"PATH": "/bin", "PIP_CERT": "/ca.pem", "PIP_CONFIG_FILE": os.devnull}


def test_timeout_kills_pip(index, private_tmp):
    with pytest.raises(PackageResolutionFailed) as info:
        resolve(["alpha"], index, 0.01)
    assert info.value.message.startswith("cannot resolve alpha: pip took longer than 0.01 s")
    assert list(private_tmp.iterdir()) == []


# -------------------------------------------------------------------- async
async def test_resolve_async(index, private_tmp):
    resolution = await resolve_async(["delta", "beta[fast]"], index, TIMEOUT_S)
    assert _versions(resolution) == {"alpha": "1.0", "beta": "1.0", "delta": "1.0", "gamma": "1.0"}
    with pytest.raises(PackageResolutionFailed, match="conflict-a 1.0 depends on alpha>=2"):
        await resolve_async(["conflict-a", "conflict-b"], index, TIMEOUT_S)
    assert list(private_tmp.iterdir()) == []


async def test_resolve_async_timeout_and_cancel(index, private_tmp):
    with pytest.raises(PackageResolutionFailed, match="pip took longer than 0.05 s"):
        await resolve_async(["alpha"], index, 0.05)
    with trio.move_on_after(0.05) as scope:
        await resolve_async(["alpha"], index, TIMEOUT_S)
    assert scope.cancelled_caught
    assert list(private_tmp.iterdir()) == []


# --------------------------------------------------------------- index options
def test_pip_command(tmp_path):
    offline = IndexOptions(
        index_url="https://example.org/simple", find_links=("/w", "https://example.org/l")
    )
    command = pip_command(["alpha<2"], offline, tmp_path / "r.json")
    assert command[1:5] == ["-I", "-m", "pip", "install"]
    for flag in ("--dry-run", "--ignore-installed", "--only-binary=:all:", "--no-input"):
        assert flag in command
    assert f"--report={tmp_path / 'r.json'}" in command
    assert command[-2:] == ["--", "alpha<2"]
    assert "--index-url=https://example.org/simple" in command
    assert "--find-links=/w" in command and "--no-index" not in command
    options = IndexOptions(
        offline=True, extra_index_urls=("https://x.example/simple",), find_links=("/w",)
    )
    assert options.pip_args() == ["--no-index", "--find-links=/w"]
    with pytest.raises(ValueError, match="not a requirement: '--pre'"):
        pip_command(["--pre"], options, tmp_path / "r.json")


def test_index_options_from_config(tmp_path):
    config = build_config(
        "packages:\n  extra_index_urls: [https://x.example/simple]\n"
        "  find_links: [wheels, /abs, https://l.example/links]\n"
    )
    options = IndexOptions.from_config(config, base_dir=tmp_path)
    assert options == IndexOptions(
        index_url="https://pypi.org/simple",
        extra_index_urls=("https://x.example/simple",),
        find_links=(str(tmp_path / "wheels"), "/abs", "https://l.example/links"),
        offline=False,
    )
    assert options.pip_args() == [
        "--index-url=https://pypi.org/simple",
        "--extra-index-url=https://x.example/simple",
        f"--find-links={tmp_path / 'wheels'}",
        "--find-links=/abs",
        "--find-links=https://l.example/links",
    ]
    with pytest.raises(ConfigError, match="packages.index_url is empty"):
        IndexOptions.from_config(build_config(None, ["packages.index_url="]))
    offline = build_config(None, ["packages.index_url=", "packages.offline=true"])
    assert IndexOptions.from_config(offline).offline


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("packages.find_links=[1, a]", "packages.find_links must be a list of strings, got [1, "),
        ("packages.extra_index_urls=https://x", "packages.extra_index_urls must be a list of"),
        ("packages.offline=maybe", "packages.offline must be bool"),
        ("packages.resolve_timeout_s=0", "packages.resolve_timeout_s must be >= 1"),
        ("packages.install_mem_mb=8", "packages.install_mem_mb must be >= 64"),
        ("packages.max_disk_mb=1", "packages.max_disk_mb must be >= 16"),
        ("packages.install_timeout_s=fast", "packages.install_timeout_s must be float"),
    ],
)
def test_packages_config_is_validated(override, message):
    with pytest.raises(ConfigError) as info:
        build_config(None, [override])
    assert message in info.value.message


def test_packages_config_defaults():
    section = build_config(None).packages
    assert section.as_dict() == {
        "index_url": "https://pypi.org/simple",
        "extra_index_urls": [],
        "find_links": [],
        "offline": False,
        "resolve_timeout_s": 120.0,
        "install_timeout_s": 300.0,
        "install_mem_mb": 512,
        "max_disk_mb": 4096,
    }


# ---------------------------------------------------------------- olactors lock
def _lock_cli(fn: Path, wheels: Path, tmp_path: Path) -> int:
    return main(
        [
            "lock",
            str(fn),
            "--path",
            str(tmp_path / "worker"),
            "--set",
            "packages.offline=true",
            "--set",
            f"packages.find_links=[{wheels}]",
        ]
    )


def test_lock_command_end_to_end(tmp_path, wheels, capsys):
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "requirements.txt").write_text(
        textwrap.dedent(
            """\
            # what the handler imports
            delta
            beta[fast]>=1
            epsilon; python_version >= "3"
            """
        )
    )
    assert _lock_cli(fn, wheels, tmp_path) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:5] == [
        "alpha==1.0",
        "beta==1.0",
        "delta==1.0",
        "epsilon==1.0",
        "gamma==1.0",
    ]
    assert f"wrote {fn / LOCK_FILE} (5 pinned, from requirements.txt)" in out
    first = (fn / LOCK_FILE).read_bytes()
    lock = parse_lock(first.decode())
    digests = {pin.name: pin.sha256 for pin in lock.pins}
    assert (
        digests["alpha"]
        == hashlib.sha256((wheels / "alpha-1.0-py3-none-any.whl").read_bytes()).hexdigest()
    )
    assert _lock_cli(fn, wheels, tmp_path) == 0
    assert (fn / LOCK_FILE).read_bytes() == first
    assert sorted(p.name for p in fn.iterdir()) == [LOCK_FILE, "requirements.txt"]
    assert read_function_packages(fn).lock == lock


def test_lock_that_no_longer_satisfies_the_declaration(tmp_path, wheels):
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "f.py").write_text("# ol-install: alpha<2\ndef f(event):\n    return event\n")
    assert _lock_cli(fn, wheels, tmp_path) == 0
    assert read_function_packages(fn).lock.pins[0].version == "1.0"
    (fn / "f.py").write_text("# ol-install: alpha>=2\ndef f(event):\n    return event\n")
    with pytest.raises(
        BadFunction, match=r"ol.lock pins alpha==1.0, which does not satisfy alpha>=2"
    ):
        read_function_packages(fn)
    assert _lock_cli(fn, wheels, tmp_path) == 0
    assert read_function_packages(fn).lock.pins[0].version == "2.0"


def test_lock_command_failures_leave_the_lock(tmp_path, wheels, capsys):
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "ol.yaml").write_text("packages: [alpha]\n")
    assert _lock_cli(fn, wheels, tmp_path) == 0
    before = (fn / LOCK_FILE).read_bytes()
    capsys.readouterr()
    (fn / "ol.yaml").write_text("packages: [conflict-a, conflict-b]\n")
    assert _lock_cli(fn, wheels, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("olactors lock: cannot resolve conflict-a, conflict-b: pip exited")
    assert "Traceback" not in err
    (fn / "ol.yaml").write_text("packages: ['-e .']\n")
    assert _lock_cli(fn, wheels, tmp_path) == 2
    err = capsys.readouterr().err
    assert err == "olactors lock: ol.yaml: packages[0]: pip option '-e' is not supported; " + (
        "declare requirements only (a name with optional extras, version range and marker, "
        "like 'name[extra]>=1.0')\n"
    )
    assert (fn / LOCK_FILE).read_bytes() == before
    assert sorted(p.name for p in fn.iterdir()) == [LOCK_FILE, "ol.yaml"]


def test_lock_command_without_declaration_and_bad_arguments(tmp_path, wheels, capsys):
    fn = tmp_path / "fn"
    fn.mkdir()
    assert _lock_cli(fn, wheels, tmp_path) == 0
    assert "(0 pinned, from no declaration)" in capsys.readouterr().out
    assert parse_lock((fn / LOCK_FILE).read_text()).pins == ()
    assert _lock_cli(tmp_path / "missing", wheels, tmp_path) == 2
    assert "is not a directory" in capsys.readouterr().err
    bad = main(["lock", str(fn), "--path", str(tmp_path / "w"), "--set", "packages.offline=2"])
    assert bad == 2 and "packages.offline must be bool" in capsys.readouterr().err


# ------------------------------------------------------------- public index
@pytest.mark.skipif(
    os.environ.get("OLACTORS_TEST_PUBLIC_INDEX") != "1",
    reason="set OLACTORS_TEST_PUBLIC_INDEX=1 to resolve against the public index",
)
def test_public_index():
    resolution = resolve(["six==1.16.0"], IndexOptions(), TIMEOUT_S)
    six = resolution.get("six")
    assert six is not None and six.version == "1.16.0"
    assert six.filename == "six-1.16.0-py2.py3-none-any.whl"
    assert six.sha256 is not None and len(six.sha256) == 64
