"""Private functions through a real worker (root): every kind of token with its
status and error code, before any queueing or code runs; tokens never logged
or recorded; public functions unaffected; ``functions.default_access``; the
owner on every record; and two real workers sharing one state directory."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import REPO, run_cli, write_function
from .test_http_api import Served, assert_json_error, serving, wait_for_file, write_fn

pytestmark = pytest.mark.root

#: A WSGI app that prints and answers the headers it was given.
HEADERS_APP = """
    import json, sys

    def app(environ, start_response):
        seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        print("headers:", json.dumps(seen))
        print("authorization:", environ.get("HTTP_AUTHORIZATION"), file=sys.stderr)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(seen).encode()]
"""
PRIVATE = "access: private\n"


async def admin_json(served: Served, method: str, path: str, body: Any = None) -> Any:
    async with served.admin_client() as admin:
        r = await admin.request(method, path, json=body)
    assert r.is_success, r.text
    return r.json()


async def call(
    served: Served, name: str, token: str | None = None, **headers: str
) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with served.client() as client:
        return await client.get(f"/run/{name}", headers=headers)


async def test_tokens_of_every_kind(worker_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registry = worker_dir / "registry"
    write_fn(registry, "priv", HEADERS_APP, PRIVATE)
    write_fn(registry, "owned", HEADERS_APP, PRIVATE)
    write_fn(registry, "other", HEADERS_APP, PRIVATE)
    write_fn(registry, "pub", HEADERS_APP)
    async with serving(worker_dir) as served:
        issued = {}
        for key, body in {
            "right": {"function": "priv"},
            "other": {"function": "other"},
            "short": {"function": "priv", "expires_in_s": 1},
            "revoked": {"function": "priv"},
            "alice": {"owner": "alice"},
        }.items():
            issued[key] = await admin_json(served, "POST", "/tokens", body)
        texts = [t["token"] for t in issued.values()]
        assert all(t.startswith("olt_") for t in texts)
        await admin_json(served, "DELETE", f"/tokens/{issued['revoked']['id']}")
        await admin_json(served, "PUT", "/owners/owned", {"owner": "alice"})

        # Missing token: 401 with WWW-Authenticate; no code ran, nothing queued.
        for headers in ({}, {"Authorization": "Basic dTpw"}, {"Authorization": "Bearer"}):
            r = await call(served, "priv", **headers)
            assert_json_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        wrong = issued["right"]["token"][:-6] + "xxxxxx"
        await trio.sleep(1.2)  # past the short token's expiry
        for token, why in (
            (wrong, "not valid"),
            ("olt_nonsense", "not valid"),
            (issued["other"]["token"], "does not grant"),
            (issued["short"]["token"], "expired"),
            (issued["revoked"]["token"], "revoked"),
            (issued["alice"]["token"], "owner's token"),  # priv has no owner
        ):
            r = await call(served, "priv", token)
            body = assert_json_error(r, 403, "forbidden")
            assert why in body["message"], body
            assert "www-authenticate" not in r.headers
        assert await admin_json(served, "GET", "/debug/priv") == {"function": "priv", "records": []}
        assert not [sb for sb in await admin_json(served, "GET", "/sandboxes") if sb["function"]]

        # The right tokens: the function's own and its owner's; the header is not passed on.
        r = await call(served, "priv", issued["right"]["token"])
        assert r.status_code == 200, r.text
        assert "HTTP_AUTHORIZATION" not in r.json()
        r = await call(served, "owned", issued["alice"]["token"])
        assert r.status_code == 200, r.text
        r = await call(served, "owned", issued["right"]["token"])
        assert_json_error(r, 403, "forbidden")

        # Public functions: no token needed, and their Authorization header is theirs.
        r = await call(served, "pub")
        assert r.status_code == 200, r.text
        r = await call(served, "pub", "for-the-function")
        assert r.status_code == 200 and r.json()["HTTP_AUTHORIZATION"] == "Bearer for-the-function"

        # Records: only admitted calls, each with its function's owner.
        records = {}
        for name in ("priv", "owned", "pub"):
            listed = (await admin_json(served, "GET", f"/debug/{name}"))["records"]
            records[name] = [
                await admin_json(served, "GET", f"/debug/{name}/{rec['request_id']}")
                for rec in listed
            ]
        assert [r["owner"] for r in records["priv"]] == [None]
        assert [r["owner"] for r in records["owned"]] == ["alice"]
        assert len(records["pub"]) == 2
        assert "authorization: None" in records["priv"][0]["stderr"]

        # No token anywhere: records, /stats, token list, the state files, the logs.
        stats_json = await admin_json(served, "GET", "/stats")
        assert stats_json["access"]["unauthorized"] == 3
        assert stats_json["access"]["forbidden"] == 7
        stats = json.dumps(stats_json)
        listed = json.dumps(await admin_json(served, "GET", "/tokens"))
        state_files = " ".join(p.read_text() for p in (worker_dir / "state").glob("*.json"))
        logged = "\n".join(
            rec.getMessage() + str(rec.args) + (rec.exc_text or "") for rec in caplog.records
        )
        for text in texts:
            secret = text.split("_", 2)[2]
            for where, blob in (
                ("records", json.dumps(records)),
                ("stats", stats),
                ("token list", listed),
                ("state dir", state_files),
                ("log", logged),
            ):
                assert secret not in blob, f"a token is in the {where}"
        assert any(
            "priv" in rec.getMessage() and " 403 " in rec.getMessage() for rec in caplog.records
        )
        states = {t["id"]: t["state"] for t in json.loads(listed)["tokens"]}
        assert states[issued["revoked"]["id"]] == "revoked"
        assert states[issued["short"]["id"]] == "expired"
        assert states[issued["right"]["id"]] == "active"


async def test_default_access_private(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "plain", HEADERS_APP)
    write_fn(worker_dir / "registry", "open", HEADERS_APP, "access: public\n")
    async with serving(worker_dir, "functions.default_access=private") as served:
        assert_json_error(await call(served, "plain"), 401, "unauthorized")
        assert (await call(served, "open")).status_code == 200
        token = (await admin_json(served, "POST", "/tokens", {"function": "plain"}))["token"]
        assert (await call(served, "plain", token)).status_code == 200
        assert_json_error(await call(served, "no-such-fn"), 404, "function_not_found")


async def test_admin_api_refuses_bad_input(worker_dir: Path) -> None:
    async with serving(worker_dir) as served:
        async with served.admin_client() as admin:
            for body in (
                {},
                {"function": "f", "owner": "a"},
                {"function": "../x"},
                {"owner": "no spaces"},
                {"function": "f", "expires_in_s": 0},
                {"function": "f", "expires_in_s": True},
                {"function": "f", "color": "red"},
                [1],
            ):
                r = await admin.post("/tokens", json=body)
                code = "bad_function_name" if body == {"function": "../x"} else "bad_parameter"
                assert_json_error(r, 400, code)
            assert_json_error(await admin.post("/tokens", content=b"{half"), 400, "bad_parameter")
            assert_json_error(
                await admin.delete("/tokens/0123456789abcdef"), 404, "token_not_found"
            )
            assert_json_error(await admin.delete("/tokens/nope"), 404, "token_not_found")
            for body in ({"owner": ""}, {"owner": "a", "color": "red"}, {}):
                assert_json_error(await admin.put("/owners/f", json=body), 400, "bad_parameter")
            assert_json_error(
                await admin.put("/owners/%2e%2e", json={"owner": "a"}), 400, "bad_function_name"
            )
            r = await admin.delete("/owners/f")
            assert r.json() == {"function": "f", "owner": None, "previous": None}


# ------------------------------------------------------------ two workers
def start_worker(base: Path, name: str, shared: Path, processes: list) -> Path:
    path = base / name
    log = open(base / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "olactors.cli", "serve", "--path", str(path)]
        + ["--set", "server.port=0", "--set", "sandbox.cgroup_pool_size=2"]
        + ["--set", f"state.dir={shared / 'state'}"]
        + ["--set", f"registry.location={shared / 'registry'}"]
        + ["--set", "registry.cache_s=1.0"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    processes.append(proc)
    wait_for_file(path / "run" / "endpoints.json", proc)
    return path


def cli_json(*args: str) -> Any:
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def get(path: Path, name: str, token: str | None) -> httpx.Response:
    public = json.loads((path / "run" / "endpoints.json").read_text())["public"]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{public}/run/{name}", headers=headers, timeout=60)


def test_two_workers_share_tokens_and_owners(tmp_path: Path, processes: list) -> None:
    shared = tmp_path / "shared"
    write_function(shared / "registry", "priv", "def f(event):\n    return 'ok'\n")
    (shared / "registry" / "priv" / "ol.yaml").write_text(PRIVATE)
    a = start_worker(tmp_path, "a", shared, processes)
    b = start_worker(tmp_path, "b", shared, processes)
    cache_s = 1.0
    settle = cache_s + 0.5

    created = cli_json("token", "create", "priv", "--path", str(a))
    assert set(created) >= {"id", "token"}
    token = created["token"]
    assert get(b, "priv", token).status_code == 200  # issued on a, works on b
    assert get(b, "priv", None).status_code == 401

    # An owner set through a holds on b within registry.cache_s; the owner's token too.
    assert cli_json("owner", "set", "priv", "alice", "--path", str(a)) == {
        "function": "priv",
        "owner": "alice",
    }
    alice = cli_json("token", "create", "--owner", "alice", "--expires", "30d", "--path", str(b))
    assert alice["owner"] == "alice" and alice["expires_at"]
    time.sleep(settle)
    r = get(b, "priv", alice["token"])
    assert r.status_code == 200, r.text
    assert get(a, "priv", alice["token"]).status_code == 200
    listed = cli_json("owner", "list", "--path", str(b))
    assert listed == {"owners": [{"function": "priv", "owner": "alice"}]}

    # Revoked through a: refused on a at once and on b within registry.cache_s.
    revoked = cli_json("token", "revoke", created["id"], "--path", str(a))
    assert revoked["state"] == "revoked"
    assert get(a, "priv", token).status_code == 403
    time.sleep(settle)
    r = get(b, "priv", token)
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text

    # Owner cleared through b: a refuses the owner's token within registry.cache_s.
    assert cli_json("owner", "unset", "priv", "--path", str(b))["previous"] == "alice"
    time.sleep(settle)
    assert get(a, "priv", alice["token"]).status_code == 403

    # install --owner, seen from the other worker; token list from either.
    source = write_function(tmp_path / "src", "mine", "def f(event):\n    return 1\n")
    r = run_cli("install", str(source), "--owner", "bob", "--path", str(a), "--json")
    assert r.returncode == 0, r.stderr
    installed = json.loads(r.stdout)  # one JSON object, like every issue-14 command
    assert installed["name"] == "mine" and installed["owner"] == "bob", installed
    assert {"function": "mine", "owner": "bob"} in cli_json("owner", "list", "--path", str(b))[
        "owners"
    ]
    states = {t["id"]: t["state"] for t in cli_json("token", "list", "--path", str(b))["tokens"]}
    assert states == {created["id"]: "revoked", alice["id"]: "active"}

    # Plain output: the token alone on stdout; errors as the worker's JSON, status 1.
    r = run_cli("token", "create", "priv", "--path", str(a))
    assert r.returncode == 0 and r.stdout.strip().startswith("olt_"), r.stderr
    plain = r.stdout.strip()
    assert get(a, "priv", plain).status_code == 200
    r = run_cli("run", "priv", "--path", str(a))
    assert r.returncode == 1 and json.loads(r.stderr)["error"] == "unauthorized", r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "olactors.cli", "run", "priv", "--path", str(a)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OLACTORS_TOKEN": plain},
    )
    assert r.returncode == 0 and json.loads(r.stdout) == "ok", r.stderr
    r = run_cli("token", "revoke", "0123456789abcdef", "--path", str(a))
    assert r.returncode == 1 and json.loads(r.stderr)["error"] == "token_not_found"
    r = run_cli("token", "create", "--path", str(a))
    assert r.returncode == 2 and "exactly one" in r.stderr

    # Records on both workers keep the owner the call was admitted with.
    for path in (a, b):
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path / "admin.sock"))) as admin:
            owners = [rec["owner"] for rec in admin.get("http://a/debug/priv").json()["records"]]
        assert "alice" in owners, (path, owners)

    for proc in processes:
        os.kill(proc.pid, signal.SIGTERM)
    for proc in processes:
        assert proc.wait(timeout=60) == 0
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    for text in (token, alice["token"], plain):
        assert text.split("_", 2)[2] not in logs
