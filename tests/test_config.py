"""Configuration: defaults, validation, overrides, `olactors init`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from olactors._config import DEFAULTS_PATH, build_config, load_defaults
from olactors._errors import ConfigError
from olactors.worker_dir import init_worker_dir

from .conftest import run_cli


def test_defaults_load_and_are_documented():
    config = build_config(None)
    assert config.sandbox.network == "none"
    assert config.limits.mem_mb == 128
    text = DEFAULTS_PATH.read_text()
    for values in load_defaults().values():
        for key in values:
            assert f"{key}:" in text, key
    assert text.count("#") > 10  # the defaults file explains its keys


@pytest.mark.parametrize(
    "text, message",
    [
        ("sandbox:\n  tmpmb: 3\n", "unknown key 'sandbox.tmpmb'"),
        ("sandboxes: {}\n", "unknown section 'sandboxes'"),
        ("sandbox:\n  network: bridge\n", "sandbox.network must be one of none, egress"),
        ("sandbox:\n  tmp_mb: lots\n", "sandbox.tmp_mb must be int"),
        ("sandbox:\n  tmp_mb: true\n", "sandbox.tmp_mb must be int"),
        ("limits:\n  mem_mb: 4\n", "limits.mem_mb must be >= 16"),
        ("limits:\n  mem_mb: 4096\n", "limits.mem_mb (4096) exceeds limits.max_mem_mb"),
        ("limits:\n  init_s: 601\n", "limits.init_s (601.0) exceeds limits.max_init_s (600.0)"),
        ("limits:\n  init_s: 0.01\n", "limits.init_s must be >= 0.1"),
        ("limits:\n  init_s: soon\n", "limits.init_s must be float"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("sandbox: [1]\n", "section 'sandbox' must be a mapping"),
        ("sandbox: {tmp_mb: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_problem(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(text)


def test_init_limit_defaults_and_bounds():
    config = build_config(None)
    assert (config.limits.init_s, config.limits.max_init_s) == (60.0, 600.0)
    config = build_config("limits:\n  max_init_s: 900\n", ["limits.init_s=700"])
    assert (config.limits.init_s, config.limits.max_init_s) == (700.0, 900.0)
    assert isinstance(config.limits.init_s, float)


def test_overrides_are_typed_and_validated():
    config = build_config(
        "sandbox:\n  tmp_mb: 32\n", ["sandbox.tmp_mb=48", "sandbox.ready_timeout_s=3"]
    )
    assert config.sandbox.tmp_mb == 48
    assert config.sandbox.ready_timeout_s == 3.0 and isinstance(
        config.sandbox.ready_timeout_s, float
    )
    for bad, message in [
        ("sandbox.tmp_mb", "expected section.key=value"),
        ("tmp_mb=3", "expected section.key=value"),
        ("sandbox.nope=1", "unknown key 'sandbox.nope'"),
        ("sandbox.tmp_mb=[", "bad value"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_config(None, [bad])


def test_init_creates_worker_dir_and_keeps_existing_config(tmp_path):
    path = tmp_path / "w"
    init_worker_dir(path)
    assert (path / "registry").is_dir()
    assert (path / "base" / "etc" / "passwd").is_file()
    assert yaml.safe_load((path / "worker.yaml").read_text()) == load_defaults()
    (path / "worker.yaml").write_text("sandbox:\n  tmp_mb: 20\n")
    config = init_worker_dir(path)
    assert config.sandbox.tmp_mb == 20
    assert (path / "worker.yaml").read_text() == "sandbox:\n  tmp_mb: 20\n"


def test_base_etc_holds_no_host_secrets(tmp_path):
    init_worker_dir(tmp_path / "w")
    etc = tmp_path / "w" / "base" / "etc"
    names = {p.name for p in etc.iterdir()}
    assert not names & {"shadow", "gshadow", "ssh", "ssl", "sudoers", "machine-id"}
    assert "x:0:0" in (etc / "passwd").read_text()


def test_cli_init_and_errors_without_traceback(tmp_path):
    ok = run_cli("init", "--path", str(tmp_path / "w"))
    assert ok.returncode == 0 and "initialised" in ok.stdout
    (tmp_path / "w" / "worker.yaml").write_text("sandbox:\n  netwrk: none\n")
    bad = run_cli("init", "--path", str(tmp_path / "w"))
    assert bad.returncode == 2
    assert "unknown key 'sandbox.netwrk'" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad_set = run_cli("init", "--path", str(tmp_path / "v"), "--set", "limits.procs=two")
    assert bad_set.returncode == 2 and "limits.procs must be int" in bad_set.stderr


def test_cgroup_parent_is_refused_on_cgroup_v1(tmp_path):
    from olactors.sock.cgroups import CgroupLayout

    if CgroupLayout.current().version != 1:
        pytest.skip("host runs cgroup v2")
    run_cli("init", "--path", str(tmp_path / "w"), check=True)
    result = run_cli(
        "cleanup", "--path", str(tmp_path / "w"), "--set", "sandbox.cgroup_parent=/sys/fs/cgroup"
    )
    assert result.returncode == 2
    assert "sandbox.cgroup_parent is for cgroup v2 only" in result.stderr


def test_init_set_writes_the_values_into_worker_yaml(tmp_path: Path) -> None:
    """`olactors init --set k=v` persists: a later load (serve) uses the values,
    and the rest of the documented file, comments included, is kept."""
    from olactors._config import load_worker_config

    path = tmp_path / "w"
    init_worker_dir(
        path,
        ["server.port=0", "sandbox.egress_deny=[10.9.0.0/16]", "debug.keep_s=60", "state.dir=s"],
        write_overrides=True,
    )
    config = load_worker_config(path)
    assert config.server.port == 0
    assert config.sandbox.egress_deny == ["10.9.0.0/16"]
    assert config.debug.keep_s == 60.0 and config.state.dir == "s"
    text = (path / "worker.yaml").read_text()
    assert "# 0 = any free port" in text and text.count("\nserver:") == 1
    # Again on the existing file: only that key's line changes.
    init_worker_dir(path, ["server.port=5123"], write_overrides=True)
    assert load_worker_config(path).server.port == 5123
    assert load_worker_config(path).sandbox.egress_deny == ["10.9.0.0/16"]


def test_init_set_refuses_bad_values_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "w"
    init_worker_dir(path)
    before = (path / "worker.yaml").read_bytes()
    with pytest.raises(ConfigError, match="server.port"):
        init_worker_dir(path, ["server.port=-1"], write_overrides=True)
    with pytest.raises(ConfigError, match="unknown key"):
        init_worker_dir(path, ["server.nope=1"], write_overrides=True)
    assert (path / "worker.yaml").read_bytes() == before


def test_serve_set_is_for_one_run_only(tmp_path: Path) -> None:
    path = tmp_path / "w"
    config = init_worker_dir(path, ["server.port=0"])
    assert config.server.port == 0
    from olactors._config import load_worker_config

    assert load_worker_config(path).server.port == 5000
