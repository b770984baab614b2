"""The state directory: atomic, locked read-modify-write of JSON documents."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from olactors._config import build_config
from olactors._errors import ConfigError
from olactors.state import StateDir, state_path


def test_state_path_defaults_and_relative(tmp_path: Path) -> None:
    assert build_config().state.dir == ""
    assert state_path("", tmp_path) == tmp_path / "state"
    assert state_path("shared", tmp_path) == tmp_path / "shared"
    assert state_path("/srv/state", tmp_path) == Path("/srv/state")


def test_missing_document_is_empty_and_update_stores(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "state")
    assert stat.S_IMODE(os.stat(sd.path).st_mode) == 0o700
    doc = sd.read("tokens")
    assert doc.data == {} and doc.stamp.inode is None
    stored = sd.update("tokens", lambda d: {**d, "a": 1})
    assert stored.data == {"a": 1}
    assert sd.stamp("tokens") == stored.stamp
    assert stat.S_IMODE(os.stat(sd.path / "tokens.json").st_mode) == 0o600
    assert json.loads((sd.path / "tokens.json").read_text()) == {"a": 1}


def test_failed_change_writes_nothing(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    sd.update("owners", lambda d: {"f": "alice"})
    before = sd.stamp("owners")

    def boom(d: dict) -> dict:
        d["f"] = "mallory"
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        sd.update("owners", boom)
    assert sd.read("owners").data == {"f": "alice"}
    assert sd.stamp("owners") == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_bad_names_and_bad_documents(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    for name in ("", "../x", "a/b", ".lock", "UPPER"):
        with pytest.raises(ValueError):
            sd.read(name)
    (tmp_path / "grants.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        sd.read("grants")
    (tmp_path / "grants.json").write_text("{half")
    with pytest.raises(ConfigError, match="not valid JSON"):
        sd.read("grants")


def _add_many(path: str, who: str, count: int) -> None:
    sd = StateDir(Path(path))
    for i in range(count):
        sd.update("counter", lambda d, key=f"{who}{i}": {**d, key: True})


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Two processes (as two workers sharing the dir) each add 50 keys."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path), w, 50)) for w in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(StateDir(tmp_path).read("counter").data) == 100


def test_unusable_location_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="state.dir"):
        StateDir(tmp_path / "file" / "state")
