"""End-to-end HTTP API: a real worker served by :func:`olactors.serve.serve` on
port 0, driven through real HTTP (httpx) and the admin UNIX socket, plus the
``olactors serve/install/run/status`` CLI against a worker in a subprocess."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import REPO, cgroup_dirs_named, run_cli, write_function

pytestmark = pytest.mark.root

ECHO = """
    def f(event):
        return event
"""
FAST_CONFIG = ("sandbox.cgroup_pool_size=4", "functions.pause_after_s=5")


# ------------------------------------------------------------------ helpers
@dataclass
class Served:
    public: str
    admin: str
    worker_dir: Path
    stop: trio.Event

    @property
    def registry(self) -> Path:
        return self.worker_dir / "registry"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.public, timeout=60.0, **kwargs)

    def admin_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.admin),
            base_url="http://admin",
            timeout=60.0,
        )


@asynccontextmanager
async def serving(worker_dir: Path, *overrides: str) -> AsyncIterator[Served]:
    """A worker on ``worker_dir`` served on port 0 until the block ends (graceful stop)."""
    from olactors.serve import serve
    from olactors.worker_dir import init_worker_dir

    config = init_worker_dir(worker_dir, ["server.port=0", *FAST_CONFIG, *overrides])
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        endpoints = await nursery.start(partial(serve, config, worker_dir, shutdown=stop))
        try:
            yield Served(endpoints["public"], endpoints["admin"], worker_dir, stop)
        finally:
            stop.set()


def write_fn(served_or_dir: Served | Path, name: str, source: str, ol_yaml: str = "") -> Path:
    registry = served_or_dir.registry if isinstance(served_or_dir, Served) else served_or_dir
    code = write_function(registry, name, source)
    if ol_yaml:
        (code / "ol.yaml").write_text(ol_yaml)
    return code


def tar_gz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers (names lower-cased) of a raw HTTP/1.1 response head."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


async def raw_get(base_url: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``target`` sent byte for byte (httpx would normalise ``..`` away)."""
    url = httpx.URL(base_url)
    stream = await trio.open_tcp_stream(url.host, url.port)
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            status, headers = parse_head(head)
            while len(body) < int(headers["content-length"]):
                body += await stream.receive_some(65536)
    return status, headers, body


def assert_json_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "x-olactors-error" not in response.headers
    return body


def is_request_id(value: str | None) -> bool:
    return value is not None and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


# -------------------------------------------------------------- invocations
async def test_echo_and_request_id(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "echo", ECHO)
    async with serving(worker_dir) as served, served.client() as client:
        event = {"hello": "world", "n": [1, 2, 3]}
        r1 = await client.post("/run/echo", json=event)
        r2 = await client.post("/run/echo", json=event)
        assert r1.status_code == 200, r1.text
        assert r1.json() == event and r2.json() == event
        assert is_request_id(r1.headers.get("x-request-id"))
        assert r1.headers["x-request-id"] != r2.headers["x-request-id"]
        status = await client.get("/status")
        assert status.status_code == 200
        assert status.json()["status"] == "ok"
        assert is_request_id(status.headers.get("x-request-id"))


WSGI_APP = """
    import json

    def app(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("418 I'm a teapot", [("Content-Type", "application/json"),
                                            ("X-Custom", "wsgi")])
        return [json.dumps({
            "method": environ["REQUEST_METHOD"],
            "script_name": environ["SCRIPT_NAME"],
            "path": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"],
            "body": body.decode(),
            "header": environ.get("HTTP_X_CLIENT", ""),
            "internal": [k for k in environ if "OLACTORS" in k],
        }).encode()]
"""

ASGI_APP = """
    import json

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        await send({"type": "http.response.start", "status": 418,
                    "headers": [(b"content-type", b"application/json"),
                                (b"x-custom", b"asgi")]})
        await send({"type": "http.response.body", "body": json.dumps({
            "method": scope["method"],
            "root_path": scope["root_path"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "body": body.decode(),
            "header": headers.get(b"x-client", b"").decode(),
            "internal": [k.decode() for k in headers if k.startswith(b"x-olactors")],
        }).encode()})
"""


def app_path(kind: str, path: str) -> str:
    """The path a WSGI app sees (PATH_INFO) or an ASGI app sees (full ``path``)."""
    return path if kind == "wsgi" else f"/run/asgi{path}"


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
async def test_web_apps(worker_dir: Path, kind: str) -> None:
    write_fn(worker_dir / "registry", kind, WSGI_APP if kind == "wsgi" else ASGI_APP)
    async with serving(worker_dir) as served, served.client() as client:
        r = await client.put(
            f"/run/{kind}/some/deep/path?q=1&x=a%20b",
            content=b"payload",
            headers={"x-client": "yes", "x-olactors-error": "forged", "x-olactors-x": "1"},
        )
        assert r.status_code == 418, r.text
        assert r.headers["x-custom"] == kind
        assert r.headers["content-type"] == "application/json"
        assert is_request_id(r.headers.get("x-request-id"))
        seen = r.json()
        assert seen["method"] == "PUT"
        assert seen["query"] == "q=1&x=a%20b"
        assert seen["body"] == "payload"
        assert seen["header"] == "yes"
        assert seen["internal"] == []
        assert seen["path"] == app_path(kind, "/some/deep/path")
        if kind == "wsgi":
            assert seen["script_name"] == "/run/wsgi"
        else:
            assert seen["root_path"] == "/run/asgi"
        r = await client.get(f"/run/{kind}")
        assert r.status_code == 418
        assert r.json()["method"] == "GET"
        assert r.json()["path"] == app_path(kind, "/")


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
async def test_web_app_path_encoding(worker_dir: Path, kind: str) -> None:
    """The path below /run/<name> is percent-decoded exactly once, whatever it holds."""
    write_fn(worker_dir / "registry", kind, WSGI_APP if kind == "wsgi" else ASGI_APP)
    async with serving(worker_dir) as served, served.client() as client:
        for raw, decoded in (
            ("/deep%20path", "/deep path"),
            ("/100%2525", "/100%25"),
            ("/a%3Fb%23c", "/a?b#c"),
            ("/%C3%A9t%C3%A9", "/\u00e9t\u00e9"),
            ("/x%0D%0Ay", "/x\r\ny"),
        ):
            if kind == "wsgi":  # PEP 3333: PATH_INFO holds the bytes as latin-1 characters
                decoded = decoded.encode().decode("latin-1")
            r = await client.get(f"/run/{kind}{raw}?q=1")
            assert r.status_code == 418, (raw, r.text)
            assert r.json()["query"] == "q=1", raw
            assert r.json()["path"] == app_path(kind, decoded), raw


async def test_method_filter_and_environment(worker_dir: Path) -> None:
    write_fn(
        worker_dir / "registry",
        "getter",
        """
        import os

        def f(event):
            return {"greeting": os.environ.get("GREETING"), "n": os.environ.get("N")}
        """,
        "triggers:\n  http:\n    - method: GET\nenvironment:\n  GREETING: hi there\n  N: 3\n",
    )
    async with serving(worker_dir) as served, served.client() as client:
        r = await client.get("/run/getter")
        assert r.status_code == 200, r.text
        assert r.json() == {"greeting": "hi there", "n": "3"}
        r = await client.post("/run/getter", json={})
        assert_json_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "GET"


async def test_handler_exception(worker_dir: Path) -> None:
    write_fn(
        worker_dir / "registry",
        "boom",
        """
        def f(event):
            raise ValueError("broken on purpose")
        """,
    )
    async with serving(worker_dir) as served, served.client() as client:
        r = await client.post("/run/boom", json={"x": 1})
        body = assert_json_error(r, 500, "handler_exception")
        assert body["type"] == "ValueError"
        assert "broken on purpose" in body["message"]
        assert "Traceback" in body["traceback"] and "ValueError" in body["traceback"]
        r = await client.post("/run/boom", content=b"{not json")
        assert_json_error(r, 400, "bad_json")


async def test_bad_names_paths_and_sizes(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "echo", ECHO)
    write_fn(worker_dir / "registry", "a", ECHO)
    async with serving(worker_dir, "limits.max_body_bytes=1024") as served:
        async with served.client() as client:
            for target in ("/run/.hidden", "/run/a%2Fb", "/run/%2e%2e", "/run/a b", "/run/"):
                assert_json_error(await client.post(target, json=1), 400, "bad_function_name")
            for target in ("/", "/runx", "/run", "/stats", "/registry", "/sandboxes", "/functions"):
                assert_json_error(await client.get(target), 404, "not_found")
            assert_json_error(await client.post("/run/nosuch", json=1), 404, "function_not_found")
            assert_json_error(await client.post("/status"), 405, "method_not_allowed")
            # 413: declared length, then a chunked body that only grows too large
            r = await client.post("/run/echo", content=b"1" * 1025)
            assert_json_error(r, 413, "body_too_large")

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(8):
                    yield b"1" * 200

            r = await client.post("/run/echo", content=chunks())
            assert_json_error(r, 413, "body_too_large")
            r = await client.post("/run/echo", content=b'"' + b"a" * 1022 + b'"')
            assert r.status_code == 200 and r.json() == "a" * 1022
        for target in ("/run/..", "/run/../status", "/run/./echo"):
            status, headers, body = await raw_get(served.public, target)
            assert status == 400, (target, body)
            assert json.loads(body)["error"] == "bad_function_name"
            assert is_request_id(headers.get("x-request-id"))
        status, headers, body = await raw_get(served.public, "/run/../../etc/passwd")
        assert status == 400 and is_request_id(headers.get("x-request-id"))


# -------------------------------------------------------------------- admin
async def test_admin_socket_is_private(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "echo", ECHO)
    async with serving(worker_dir) as served:
        mode = os.stat(served.admin).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert served.admin == str(worker_dir.resolve() / "admin.sock")
        endpoints = json.loads((worker_dir / "run" / "endpoints.json").read_text())
        assert endpoints == {"public": served.public, "admin": served.admin, "pid": os.getpid()}
        async with served.admin_client() as admin:
            for path in ("/status", "/stats", "/functions", "/sandboxes", "/registry"):
                r = await admin.get(path)
                assert r.status_code == 200, (path, r.text)
                assert is_request_id(r.headers.get("x-request-id"))
            assert_json_error(await admin.get("/nope"), 404, "not_found")
            assert_json_error(
                await admin.put("/registry/x", content=b""), 405, "method_not_allowed"
            )
    assert not (worker_dir / "admin.sock").exists()
    assert not (worker_dir / "run" / "endpoints.json").exists()


async def test_admin_upload_update_delete(worker_dir: Path) -> None:
    async with serving(worker_dir, "registry.cache_s=0") as served:
        async with served.admin_client() as admin, served.client() as client:
            v1 = tar_gz({"f.py": "def f(event):\n    return {'version': 1, 'event': event}\n"})
            r = await admin.post("/registry/up", content=v1)
            assert r.status_code == 201, r.text
            assert r.json() == {"name": "up", "installed": True}
            r = await client.post("/run/up", json="x")
            assert r.status_code == 200, r.text
            assert r.json() == {"version": 1, "event": "x"}
            listed = (await admin.get("/registry")).json()
            assert "up" in json.dumps(listed)

            for bad in (b"not a tarball", tar_gz({"ol.yaml": "nonsense: [\n"})):
                r = await admin.post("/registry/up", content=bad)
                assert_json_error(r, 400, "bad_function")
                r = await client.post("/run/up", json="still")
                assert r.status_code == 200 and r.json()["version"] == 1

            assert_json_error(
                await admin.post("/registry/.x", content=v1), 400, "bad_function_name"
            )
            assert_json_error(
                await admin.post("/registry/a%2Fb", content=v1), 400, "bad_function_name"
            )

            r = await admin.delete("/registry/up")
            assert r.status_code == 200, r.text
            assert_json_error(await client.post("/run/up", json=1), 404, "function_not_found")
            assert_json_error(await admin.delete("/registry/up"), 404, "function_not_found")


async def test_admin_upload_size_limit(worker_dir: Path) -> None:
    async with serving(worker_dir, "registry.max_code_mb=1") as served:
        async with served.admin_client() as admin:
            r = await admin.post("/registry/big", content=os.urandom((1 << 20) + 1))
            assert_json_error(r, 413, "body_too_large")


# ---------------------------------------------------------------------- CLI
def wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cli_against_running_worker(tmp_path: Path, processes: list) -> None:
    from olactors.sock import worker_id

    path = tmp_path / "w"
    log_file = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "olactors.cli", "serve", "--path", str(path)]
        + ["--set", "server.port=0", "--set", "sandbox.cgroup_pool_size=2"],
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    processes.append(proc)
    wait_for_file(path / "run" / "endpoints.json", proc)
    endpoints = json.loads((path / "run" / "endpoints.json").read_text())
    assert endpoints["pid"] == proc.pid

    # The fresh worker dir was initialised with the examples.
    r = run_cli("run", "echo", '{"hi": [1, 2]}', "--path", str(path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"hi": [1, 2]}
    r = run_cli("run", "hello-wsgi", "--method", "GET", "--path", str(path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["hello"] == "world"

    fn = write_function(tmp_path / "src", "mine", "def f(event):\n    return {'mine': event}\n")
    r = run_cli("install", str(fn), "--name", "cli-fn", "--path", str(path))
    assert r.returncode == 0, r.stderr
    assert "cli-fn" in r.stdout
    r = run_cli("run", "cli-fn", "7", "--path", str(path))
    assert r.returncode == 0 and json.loads(r.stdout) == {"mine": 7}, r.stderr

    r = run_cli("run", "no-such-fn", "--path", str(path))
    assert r.returncode == 1
    assert json.loads(r.stderr)["error"] == "function_not_found"
    r = run_cli("run", "cli-fn", "{bad json", "--path", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("install", str(tmp_path / "missing"), "--path", str(path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1

    r = run_cli("serve", "--path", str(path), "--set", "server.port=0")
    assert r.returncode == 2 and "already running" in r.stderr, r.stderr

    r = run_cli("status", "--path", str(path))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "sandboxes" in r.stdout
    r = run_cli("status", "--json", "--path", str(path))
    assert r.returncode == 0 and json.loads(r.stdout)["status"]["status"] == "ok"

    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path / "admin.sock"))) as admin:
        sandboxes = admin.get("http://admin/sandboxes").json()
    pids = [pid for sb in sandboxes for pid in sb["pids"]]
    assert pids

    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
    log_file.close()
    assert not (path / "admin.sock").exists()
    assert not (path / "run" / "endpoints.json").exists()
    assert not [pid for pid in pids if alive(pid)]
    assert not cgroup_dirs_named(f"olactors-{worker_id(path.resolve())}")
    assert "worker stopped" in (tmp_path / "serve.log").read_text()

    for args in (("status",), ("run", "echo"), ("install", str(fn))):
        r = run_cli(*args, "--path", str(path))
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.strip().endswith(
            f"no worker running at {path} (start it with `olactors serve`)"
        )
        assert len(r.stderr.strip().splitlines()) == 1
