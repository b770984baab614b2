"""Private functions and invoke tokens without root: the decision for every
kind of token, token format and hashing, durations, ol.yaml ``access`` and
``functions.default_access``, the tokens/owners state documents."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import trio

from olactors._access import (
    ANONYMOUS,
    Access,
    Forbidden,
    HttpCaller,
    TokenEntry,
    TokenNotFound,
    TrustedCaller,
    Unauthorized,
    bearer_token,
    check_access,
    issue_token,
    parse_duration,
)
from olactors._config import build_config
from olactors._errors import BadFunction, ConfigError
from olactors._function_config import effective_access, parse_function_config
from olactors.access import AccessState
from olactors.sock import Invocation, InvocationResult
from olactors.sock.simulated import SimulatedBehaviour, open_simulated_pool
from olactors.state import StateDir, StateUnavailable
from olactors.worker import open_worker

from .conftest import run_cli, write_function

NOW = 1_800_000_000.0


def bearer(text: str) -> HttpCaller:
    return HttpCaller(f"Bearer {text}")


def tokens_of(*issued) -> dict[str, TokenEntry]:  # type: ignore[no-untyped-def]
    return {i.entry.id: i.entry for i in issued}


def test_decisions_for_every_kind_of_token() -> None:
    mine = issue_token(function="f", owner=None, now=NOW, expires_in_s=None)
    other = issue_token(function="g", owner=None, now=NOW, expires_in_s=None)
    short = issue_token(function="f", owner=None, now=NOW, expires_in_s=60)
    alice = issue_token(function=None, owner="alice", now=NOW, expires_in_s=None)
    tokens = tokens_of(mine, other, short, alice)
    revoked = issue_token(function="f", owner=None, now=NOW, expires_in_s=None)
    tokens[revoked.entry.id] = TokenEntry(**{**_fields(revoked.entry), "revoked_at": NOW + 1})

    def check(caller, owner=None, now=NOW + 10) -> None:  # type: ignore[no-untyped-def]
        check_access(Access.PRIVATE, caller, "f", owner, tokens, now)

    check(bearer(mine.text))
    check(bearer(short.text))
    check(bearer(alice.text), owner="alice")
    check(TrustedCaller("cron"))  # the worker's own triggers need no token
    check_access(Access.PUBLIC, ANONYMOUS, "f", None, {}, NOW)
    for caller in (ANONYMOUS, HttpCaller("Basic dTpw"), HttpCaller("Bearer "), HttpCaller("")):
        with pytest.raises(Unauthorized):
            check(caller)
    wrong = mine.text[:-4] + ("AAAA" if not mine.text.endswith("AAAA") else "BBBB")
    for caller, owner, now, why in (
        (bearer(wrong), None, NOW, "not valid"),
        (bearer("olt_0000000000000000_" + "A" * 43), None, NOW, "not valid"),
        (bearer("not-a-token"), None, NOW, "not valid"),
        (bearer(other.text), None, NOW, "does not grant function 'f'"),
        (bearer(short.text), None, NOW + 60, "expired"),
        (bearer(revoked.text), None, NOW, "revoked"),
        (bearer(alice.text), None, NOW, "owner's token"),
        (bearer(alice.text), "bob", NOW, "owner's token"),
    ):
        with pytest.raises(Forbidden, match=why) as info:
            check(caller, owner, now)
        assert info.value.status == 403 and info.value.code == "forbidden"
        assert mine.text not in info.value.message and caller.authorization not in str(info.value)


def _fields(entry: TokenEntry) -> dict:  # type: ignore[type-arg]
    return {f: getattr(entry, f) for f in entry.__slots__}  # type: ignore[attr-defined]


def test_tokens_are_random_and_stored_as_a_hash() -> None:
    a = issue_token(function="f", owner=None, now=NOW, expires_in_s=None)
    b = issue_token(function="f", owner=None, now=NOW, expires_in_s=None)
    assert a.text != b.text and a.entry.id != b.entry.id
    assert a.text.startswith(f"olt_{a.entry.id}_") and len(a.text) == 4 + 16 + 1 + 43
    stored = json.dumps(a.entry.stored())
    assert a.text not in stored and a.text.split("_", 2)[2] not in stored
    assert TokenEntry.from_stored(a.entry.id, a.entry.stored()) == a.entry
    assert a.text not in repr(a) and "olt_" not in repr(HttpCaller(f"Bearer {a.text}"))
    with pytest.raises(ValueError):
        issue_token(function="f", owner="alice", now=NOW, expires_in_s=None)


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("BEARER abc") == "abc"
    assert bearer_token(None) is None
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400),
        ("12h", 43200),
        ("15m", 900),
        ("90s", 90),
        ("2w", 14 * 86400),
        ("3600", 3600),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0d", "-1d", "1y", "d", "1 d x", "101000000000"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "args",
    [
        ["token", "revoke", ".."],
        ["token", "revoke", "."],
        ["token", "revoke", "0123456789abcdef?x=1"],
        ["token", "revoke", "0123456789ABCDEF"],
        ["token", "revoke", ""],
        ["install", "{src}", "--owner", "x y"],
        ["install", "{src}", "--owner", ""],
    ],
)
def test_cli_refuses_bad_ids_and_owners_before_asking_a_worker(
    tmp_path: Path, args: list[str]
) -> None:
    """A token id that is not one, or a bad owner name given to install, is a
    usage error (exit 2, one line naming the rule), decided before anything
    talks to a worker: not whatever the admin router makes of '..' or '?'
    (nothing runs at this path, so reaching for a worker would fail otherwise)."""
    source = write_function(tmp_path / "src", "fn", "def f(event):\n    return 1\n")
    argv = [a.replace("{src}", str(source)) for a in args]
    r = run_cli(*argv, "--path", str(tmp_path / "no-worker"))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "no worker" not in r.stderr, r.stderr
    expected = "16 hex digits" if args[0] == "token" else "bad owner name"
    assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ol_yaml_access_and_the_worker_default() -> None:
    public = build_config()
    private = build_config(None, ["functions.default_access=private"])
    assert public.functions.default_access == "public"
    plain = parse_function_config("")
    assert plain.access is None
    assert effective_access(plain, public) is Access.PUBLIC
    assert effective_access(plain, private) is Access.PRIVATE
    assert parse_function_config("access: private").access is Access.PRIVATE
    assert effective_access(parse_function_config("access: public"), private) is Access.PUBLIC
    with pytest.raises(BadFunction, match="access must be one of public, private"):
        parse_function_config("access: secret")
    with pytest.raises(ConfigError, match="default_access must be one of"):
        build_config(None, ["functions.default_access=nobody"])


async def test_state_documents_hold_hashes_and_owners(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    state = AccessState(sd, 2.0, clock=lambda: NOW)
    issued = await state.create_token(function="f", owner=None, expires_in_s=86400)
    owner_token = await state.create_token(function=None, owner="alice", expires_in_s=None)
    on_disk = (tmp_path / "tokens.json").read_text()
    assert issued.text not in on_disk and owner_token.text not in on_disk
    listed = await state.list_tokens()
    assert {t.id for t in listed} == {issued.entry.id, owner_token.entry.id}
    mine = next(t for t in listed if t.id == issued.entry.id)
    assert mine.public(NOW)["expires_at"] == "2027-01-16T08:00:00.000Z"
    assert "hash" not in mine.public(NOW)
    revoked = await state.revoke_token(issued.entry.id)
    assert revoked.revoked_at == NOW and revoked.state(NOW) == "revoked"
    assert (await state.revoke_token(issued.entry.id)).revoked_at == NOW  # again: unchanged
    with pytest.raises(TokenNotFound):
        await state.revoke_token("0123456789abcdef")
    await state.set_owner("f", "alice")
    await state.set_owner("g", "bob")
    assert await state.list_owners() == {"f": "alice", "g": "bob"}
    assert await state.unset_owner("g") == "bob"
    assert await state.unset_owner("g") is None
    # Another worker sharing the directory sees the same.
    other = AccessState(StateDir(tmp_path), 2.0, clock=lambda: NOW)
    assert await other.owners.current() == {"f": "alice"}
    assert (await other.tokens.current())[issued.entry.id].revoked_at == NOW
    # Hand-edited garbage is skipped, not guessed at.
    sd.update("owners", lambda d: {"owners": {"f": "alice", "../x": "eve", "g": 7}})
    assert await AccessState(sd, 2.0).list_owners() == {"f": "alice"}
    # A document that is not JSON any more: 503 state_unavailable, never a 500.
    (tmp_path / "tokens.json").write_text("{half")
    for attempt in (
        state.list_tokens(),
        state.revoke_token(issued.entry.id),
        state.create_token(function="f", owner=None, expires_in_s=None),
    ):
        with pytest.raises(StateUnavailable, match="not valid JSON"):
            await attempt


async def echo(sandbox, inv: Invocation) -> InvocationResult:  # type: ignore[no-untyped-def]
    return InvocationResult(200, (), json.dumps(dict(inv.headers)).encode())


async def test_the_worker_admits_before_queueing_and_trusts_its_own_triggers(
    tmp_path: Path,
) -> None:
    """Through Worker.invoke (the invocation API) on the simulated pool: an
    anonymous call of a private function never reaches an instance, a trusted
    trigger needs no token, and the record keeps the owner."""
    write_function(tmp_path / "registry", "priv", "def f(event):\n    return event\n")
    (tmp_path / "registry" / "priv" / "ol.yaml").write_text("access: private\n")
    config = build_config(None, ["memory.pool_mb=4096"])
    behaviour = SimulatedBehaviour(rng=random.Random(1))
    behaviour.handler = echo
    async with open_simulated_pool(behaviour) as pool:
        async with open_worker(config, tmp_path, pool=pool) as worker:
            assert worker.access is not None
            await worker.access.set_owner("priv", "alice")
            with pytest.raises(Unauthorized):
                await worker.invoke("priv", Invocation(), "r1")
            assert await worker.manager.functions() == []  # nothing was queued
            assert not pool.sandboxes()
            issued = await worker.access.create_token(
                function="priv", owner=None, expires_in_s=None
            )
            with pytest.raises(Forbidden):
                await worker.invoke("priv", Invocation(), "r2", HttpCaller("Bearer olt_x"))
            inv = Invocation(headers=(("authorization", f"Bearer {issued.text}"),))
            result = await worker.invoke("priv", inv, "r3", HttpCaller(f"Bearer {issued.text}"))
            assert result.status == 200 and "authorization" not in json.loads(result.body)
            result = await worker.invoke("priv", Invocation(), "r4", TrustedCaller("cron"))
            assert result.status == 200
            with trio.fail_after(10):
                while worker.recorder is not None and worker.recorder.counts.written < 2:
                    await trio.sleep(0.01)
            assert (await worker.record("priv", "r4")).owner == "alice"
            assert [r["request_id"] for r in await worker.records("priv", 10)] == ["r4", "r3"]
            access = (await worker.stats())["access"]
            assert access["unauthorized"] == 1 and access["forbidden"] == 1


async def test_a_call_admitted_as_public_never_runs_code_that_became_private(
    tmp_path: Path,
) -> None:
    """The gate judges a call by the ol.yaml of the code the puller holds then;
    a call that waits in the queue past ``registry.cache_s`` is dispatched with
    the code of that moment.  When the function became private meanwhile, the
    call is judged again (here: anonymous, so 401) instead of running the
    private code: C, anonymous, gets 401; T, with a token for the function,
    runs, without the Authorization header that admitted it.  One instance;
    call A holds it, B waits for it inside the function actor, C and T wait in
    its queue while ol.yaml turns private."""
    fn = write_function(tmp_path / "registry", "flip", "def f(event):\n    return 1\n")
    config = build_config(
        None, ["memory.pool_mb=4096", "functions.max_instances=1", "registry.cache_s=0.2"]
    )
    entered, release = trio.Event(), trio.Event()
    ran: list[bytes] = []

    async def handler(sandbox, inv: Invocation) -> InvocationResult:  # type: ignore[no-untyped-def]
        if inv.body == b"hold":
            entered.set()
            await release.wait()
        ran.append(inv.body)
        assert "authorization" not in dict(inv.headers) or inv.body == b"B", inv
        return InvocationResult(200, (), b"1")

    behaviour = SimulatedBehaviour(rng=random.Random(1))
    behaviour.handler = handler
    outcome: dict[str, object] = {}

    async def call(worker, key: str, token: str | None = None) -> None:  # type: ignore[no-untyped-def]
        auth = () if token is None else (("authorization", f"Bearer {token}"),)
        inv = Invocation(body=key.encode(), headers=auth)
        caller = HttpCaller(None if token is None else f"Bearer {token}")
        try:
            outcome[key] = (await worker.invoke("flip", inv, key, caller)).status
        except Unauthorized as exc:
            outcome[key] = exc

    async with open_simulated_pool(behaviour) as pool:
        async with open_worker(config, tmp_path, pool=pool) as worker:
            assert (await worker.invoke("flip", Invocation(body=b"warm"), "w")).status == 200
            assert worker.access is not None
            issued = await worker.access.create_token(
                function="flip", owner=None, expires_in_s=None
            )
            submitted: list[str] = []
            invoke = worker.manager.invoke

            async def spy(name, inv, request_id, *args):  # type: ignore[no-untyped-def]
                submitted.append(request_id)  # admitted, handed to the function actor
                return await invoke(name, inv, request_id, *args)

            worker.manager.invoke = spy  # type: ignore[method-assign]

            async def queued(key: str, depth: int) -> None:
                while (
                    key not in submitted
                    or (await worker.manager.functions())[0].queue_depth != depth
                ):
                    await trio.sleep(0.01)

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call, worker, "hold")
                    await entered.wait()
                    nursery.start_soon(call, worker, "B")
                    await queued("B", 0)  # taken by the function actor, waiting for the instance
                    nursery.start_soon(call, worker, "C")
                    await queued("C", 1)
                    nursery.start_soon(call, worker, "T", issued.text)
                    await queued("T", 2)
                    (fn / "ol.yaml").write_text("access: private\n")
                    await trio.sleep(0.5)  # the code's registry.cache_s window ends
                    release.set()
            assert outcome["hold"] == 200 and outcome["B"] == 200  # dispatched before
            assert isinstance(outcome["C"], Unauthorized), outcome
            assert outcome["T"] == 200 and b"C" not in ran and b"T" in ran
            with pytest.raises(Unauthorized):
                await worker.invoke("flip", Invocation(body=b"D"), "D")
