"""The secret store (encrypted at rest, grants, key file), names and ol.yaml's
``secrets:``, without sandboxes; and the function actor's use of the grants
against the simulated pool, in virtual time."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from olactors._errors import (
    BadFunction,
    BadFunctionName,
    BadSecretName,
    SecretKeyUnusable,
    SecretNotFound,
    SecretNotGranted,
    SecretTooLarge,
)
from olactors._function_config import parse_function_config
from olactors._records import ColdReason
from olactors._secrets import MAX_SECRET_BYTES, validate_secret_name
from olactors.secrets import SecretStore, key_file_path
from olactors.sock import InvocationResult
from olactors.state import StateDir

from .test_actors import call, fn, leaves, sim_worker
from .thread_aware_clock import thread_aware_clock

VALUE = b"correct horse battery staple"


@pytest.fixture
def clock(monkeypatch):
    """Virtual time, as in test_actors (the code puller's threads need real time)."""
    return thread_aware_clock(monkeypatch)


def store(tmp_path: Path, key: str = "keys/secrets.key", cache_s: float = 2.0) -> SecretStore:
    return SecretStore(StateDir(tmp_path / "state"), tmp_path / key, cache_s)


def every_byte_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------ names and ol.yaml
@pytest.mark.parametrize("name", ["a", "DB_PASSWORD", "x.y-z_1", ".env", "A" * 128])
def test_good_names(name: str) -> None:
    assert validate_secret_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "é", "A" * 129, "a%2Fb", "a\0"])
def test_bad_names(name: str) -> None:
    with pytest.raises(BadSecretName):
        validate_secret_name(name)


def test_ol_yaml_declares_secrets() -> None:
    assert parse_function_config("secrets: [DB, api.key]").secrets == ("DB", "api.key")
    assert parse_function_config("entry: f:f").secrets == ()
    for bad in ("secrets: DB", "secrets: [../x]", "secrets: [1]", "secrets: [a, a]"):
        with pytest.raises(BadFunction, match="secrets"):
            parse_function_config(bad)


def test_key_file_path(tmp_path: Path) -> None:
    assert key_file_path("", tmp_path) == tmp_path / "keys" / "secrets.key"
    assert key_file_path("k/key", tmp_path) == tmp_path / "k" / "key"
    assert key_file_path("/etc/olactors/key", tmp_path) == Path("/etc/olactors/key")


# ------------------------------------------------------------------ the store
async def test_set_list_grant_revoke_delete(tmp_path: Path) -> None:
    s = store(tmp_path)
    created = await s.set("DB", VALUE)
    assert created["created"] and created["version"] == 1 and created["grants"] == []
    assert (await s.set("DB", b"new"))["version"] == 2
    granted = await s.grant("DB", "fn")
    assert granted["changed"] and granted["grants"] == ["fn"]
    assert not (await s.grant("DB", "fn"))["changed"]
    listed = await s.list()
    assert [(e["name"], e["version"], e["grants"]) for e in listed] == [("DB", 2, ["fn"])]
    assert set(listed[0]) == {"name", "version", "created_at", "updated_at", "grants"}
    got = await s.for_function("fn")
    assert [(f.name, f.version, f.value) for f in got.files] == [("DB", 2, b"new")]
    assert not await s.for_function("other")
    assert (await s.revoke("DB", "fn"))["changed"]
    assert not (await s.revoke("DB", "fn"))["changed"]
    assert not await s.for_function("fn")
    await s.delete("DB")
    assert await s.list() == []
    with pytest.raises(SecretNotFound):
        await s.delete("DB")
    with pytest.raises(SecretNotFound):
        await s.grant("DB", "fn")


async def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    s = store(tmp_path)
    with pytest.raises(BadSecretName):
        await s.set("../x", VALUE)
    with pytest.raises(SecretTooLarge):
        await s.set("big", b"x" * (MAX_SECRET_BYTES + 1))
    await s.set("max", b"x" * MAX_SECRET_BYTES)  # exactly 64 KiB is fine
    with pytest.raises(BadFunctionName):
        await s.grant("max", "../fn")
    assert [e["name"] for e in await s.list()] == ["max"]


async def test_values_are_encrypted_at_rest_and_the_key_is_private(tmp_path: Path) -> None:
    s = store(tmp_path)
    await s.set("DB", VALUE)
    stored = every_byte_under(tmp_path / "state")
    assert VALUE not in stored and base64.b64encode(VALUE) not in stored
    doc = json.loads((tmp_path / "state" / "secrets.json").read_text())
    assert set(doc["secrets"]["DB"]) == {
        "version",
        "created_at",
        "updated_at",
        "grants",
        "nonce",
        "ciphertext",
    }
    key = tmp_path / "keys" / "secrets.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert len(base64.b64decode(key.read_text())) == 32


async def test_without_its_key_file_the_state_reveals_nothing(tmp_path: Path) -> None:
    s = store(tmp_path)
    await s.set("DB", VALUE)
    await s.grant("DB", "fn")
    (tmp_path / "keys" / "secrets.key").unlink()
    fresh = store(tmp_path)  # a worker on a copy without the key file
    with pytest.raises(SecretKeyUnusable, match="does not exist"):
        await fresh.for_function("fn")
    with pytest.raises(SecretKeyUnusable):
        await fresh.set("OTHER", b"x")  # a new key would orphan the stored secrets
    assert not (tmp_path / "keys" / "secrets.key").exists()
    assert [e["name"] for e in await fresh.list()] == ["DB"]  # names are not secret


async def test_another_key_is_refused(tmp_path: Path) -> None:
    await store(tmp_path).set("DB", VALUE)
    other = store(tmp_path, key="other.key")
    await trio.to_thread.run_sync(os.makedirs, tmp_path, 0o700, True)
    (tmp_path / "other.key").write_text(base64.b64encode(os.urandom(32)).decode())
    os.chmod(tmp_path / "other.key", 0o600)
    await other.grant("DB", "fn")  # grants need no key
    with pytest.raises(SecretKeyUnusable, match="key id"):
        await other.for_function("fn")
    with pytest.raises(SecretKeyUnusable, match="share one key file"):
        await other.set("DB", b"x")


async def test_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    s = store(tmp_path)
    await s.set("DB", VALUE)
    await s.grant("DB", "fn")
    os.chmod(tmp_path / "keys" / "secrets.key", 0o644)
    with pytest.raises(SecretKeyUnusable, match="0644"):
        await store(tmp_path).for_function("fn")


async def test_a_value_moved_to_another_name_does_not_decrypt(tmp_path: Path) -> None:
    s = store(tmp_path)
    await s.set("A", b"value of a")
    await s.set("B", b"value of b")
    await s.grant("B", "fn")

    def swap(data: dict) -> dict:
        for field in ("nonce", "ciphertext"):
            data["secrets"]["B"][field] = data["secrets"]["A"][field]
        return data

    StateDir(tmp_path / "state").update("secrets", swap)
    with pytest.raises(SecretKeyUnusable, match="altered"):
        await store(tmp_path).for_function("fn")


async def test_two_workers_sharing_a_state_dir_see_changes_within_the_period(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    one, two = store(tmp_path, cache_s=2.0), store(tmp_path, cache_s=2.0)
    assert not await two.for_function("fn")
    await one.set("DB", VALUE)
    await one.grant("DB", "fn")
    assert [f.value for f in (await one.for_function("fn")).files] == [VALUE]  # at once
    assert not await two.for_function("fn")  # within its period
    mock_clock.jump(2.1)
    assert [f.value for f in (await two.for_function("fn")).files] == [VALUE]
    await one.set("DB", b"rotated")
    mock_clock.jump(2.1)
    assert [(f.version, f.value) for f in (await two.for_function("fn")).files] == [(2, b"rotated")]


async def test_the_warm_path_answers_from_memory_within_the_period(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    s = store(tmp_path, cache_s=2.0)
    await s.set("DB", VALUE)
    await s.grant("DB", "fn")
    assert s.cached("fn", trio.current_time()) is None  # not worked out yet
    granted = await s.for_function("fn")
    assert s.cached("fn", trio.current_time()) is granted
    assert s.cached("other", trio.current_time()) is None
    mock_clock.jump(2.1)
    assert s.cached("fn", trio.current_time()) is None  # a look is due
    assert await s.for_function("fn") is granted  # unchanged: the same object


async def test_concurrent_first_sets_make_one_key(tmp_path: Path) -> None:
    stores = [store(tmp_path) for _ in range(4)]
    async with trio.open_nursery() as nursery:
        for i, s in enumerate(stores):
            nursery.start_soon(s.set, f"S{i}", f"v{i}".encode())
    for i in range(4):
        await stores[0].grant(f"S{i}", "fn")
    assert len((await store(tmp_path).for_function("fn")).files) == 4


def test_a_secret_file_hides_its_value_in_repr() -> None:
    from olactors._secrets import GrantedSecrets, SecretFile

    shown = repr(GrantedSecrets((SecretFile("DB", 1, VALUE),)))
    assert "DB" in shown and "horse" not in shown


# ------------------------------------------------------------------ the function actor
def reading_secrets(seen: list):
    """A simulated handler answering with the names and versions its sandbox got."""

    async def handler(sandbox, inv) -> InvocationResult:
        seen.append(sandbox)
        body = json.dumps({f.name: f.version for f in sandbox.meta.secrets}).encode()
        return InvocationResult(200, (), body)

    return handler


async def cold_reason(worker, name: str) -> str:
    """The cold reason of a new call of ``name`` (the sandbox it just got)."""
    from olactors.sock import Invocation

    await worker.invoke(name, Invocation(body=b"1"), "probe")
    await trio.sleep(0.5)  # the recorder writes it
    return (await worker.record(name, "probe")).cold_reason


async def test_declared_but_not_granted_is_424_before_any_sandbox(worker_dir, clock) -> None:
    fn(worker_dir, "needs", "secrets: [DB]\n")
    async with sim_worker(worker_dir, handler=reading_secrets([])) as (worker, pool):
        with pytest.raises(SecretNotGranted) as raised:
            await call(worker, "needs")
        assert raised.value.status == 424 and raised.value.details()["secret"] == "DB"
        assert leaves(pool) == []
        await worker.secrets.set("DB", VALUE)
        with pytest.raises(SecretNotGranted):
            await call(worker, "needs")  # stored is not granted
        await worker.secrets.grant("DB", "needs")
        assert json.loads((await call(worker, "needs")).body) == {"DB": 1}


async def test_rotation_and_revocation_replace_instances(worker_dir, clock) -> None:
    fn(worker_dir, "user")
    fn(worker_dir, "other")
    seen: list = []
    async with sim_worker(worker_dir, handler=reading_secrets(seen)) as (worker, pool):
        secrets = worker.secrets
        await secrets.set("DB", VALUE)
        await secrets.grant("DB", "user")
        assert json.loads((await call(worker, "user")).body) == {"DB": 1}
        assert json.loads((await call(worker, "other")).body) == {}  # a sibling gets none
        first = seen[0]
        assert json.loads((await call(worker, "user")).body) == {"DB": 1}
        assert seen[2] is first  # warm: same sandbox
        await secrets.set("DB", b"rotated")
        assert await cold_reason(worker, "user") == ColdReason.SECRETS_CHANGED
        assert json.loads((await call(worker, "user")).body) == {"DB": 2}
        assert seen[3] is not first and seen[4] is seen[3]
        await trio.sleep(1)  # the old instance finishes and is gone
        assert first.released
        assert first.safe.death_cause.detail == {"why": "its secrets changed"}
        await secrets.revoke("DB", "user")
        assert json.loads((await call(worker, "user")).body) == {}


async def test_another_workers_change_reaches_calls_within_the_cache_window(
    worker_dir, clock
) -> None:
    fn(worker_dir, "user")
    seen: list = []
    async with sim_worker(worker_dir, handler=reading_secrets(seen)) as (worker, pool):
        other = SecretStore(worker.secrets.state, worker.secrets.key_path, 1.0)  # another worker
        assert json.loads((await call(worker, "user")).body) == {}
        await other.set("DB", VALUE)
        await other.grant("DB", "user")
        await trio.sleep(1.01)  # registry.cache_s
        assert json.loads((await call(worker, "user")).body) == {"DB": 1}
