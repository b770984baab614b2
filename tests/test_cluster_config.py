"""`olactors cluster haproxy-config / nginx-config / add-worker / remove-worker`:
the generated files start the real HAProxy and nginx as they are, and say
what the deployment needs (the worker side is tests/test_cluster_workers.py)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from olactors.cluster._address import parse_address, server_id, server_ids

from .cluster_tools import HAPROXY, NGINX, free_port, haproxy, nginx, runtime_api

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "olactors.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def haproxy_config(tmp_path: Path, port: int, workers: list[str], *extra: str) -> Path:
    out = tmp_path / f"haproxy-{port}.cfg"
    sock = tmp_path / f"haproxy-{port}.sock"
    args = ["cluster", "haproxy-config", "--bind", f"127.0.0.1:{port}", "--out", str(out)]
    for worker in workers:
        args += ["--worker", worker]
    cli(*args, "--runtime-socket", str(sock), *extra)
    return out


def servers(sock: Path) -> dict[str, int]:
    """name -> id of the backend's servers, from the runtime API."""
    state = runtime_api(sock, "show servers state olactors_workers")
    found = {}
    for line in state.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[1] == "olactors_workers":
            found[fields[3]] = int(fields[2])
    return found


# ------------------------------------------------------------------ HAProxy
def test_haproxy_config_is_valid_for_each_balance_and_tls(tmp_path: Path) -> None:
    workers = ["127.0.0.1:5001", "127.0.0.1:5002", "[::1]:5003", "localhost:5004"]
    hashed = haproxy_config(tmp_path, 18001, workers)
    text = hashed.read_text()
    assert "balance hash path,field(3,/)" in text
    assert "hash-type consistent" in text and "hash-balance-factor 150" in text
    assert "retry-on conn-failure 503" in text
    assert "http-check send meth GET uri /healthz" in text
    robin = haproxy_config(tmp_path, 18002, workers, "--balance", "roundrobin")
    assert "balance roundrobin" in robin.read_text()
    key = tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(tmp_path / "c.pem")],
        check=True,
        capture_output=True,
    )
    key.write_text(key.read_text() + (tmp_path / "c.pem").read_text())
    tls = haproxy_config(tmp_path, 18003, workers, "--tls-cert", str(key))
    assert f"ssl crt {key}" in tls.read_text()
    # TLS terminates at HAProxy: it starts as is and answers over https.
    port = free_port()
    started = haproxy_config(tmp_path, port, [f"127.0.0.1:{free_port()}"], "--tls-cert", str(key))
    with haproxy(started, port, tmp_path / "tls.log"):
        answer = httpx.get(f"https://127.0.0.1:{port}/run/echo", verify=False)
        assert answer.status_code == 503 and answer.json()["error"] == "no_worker_available"
    for config in (hashed, robin, tls):
        checked = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert b"WARNING" not in checked.stdout + checked.stderr


def test_haproxy_starts_as_is_and_answers_json_when_no_worker_is_up(tmp_path: Path) -> None:
    port = free_port()
    config = haproxy_config(tmp_path, port, [f"127.0.0.1:{free_port()}"])
    with haproxy(config, port, tmp_path / "haproxy.log"):
        answer = httpx.get(f"http://127.0.0.1:{port}/run/echo", headers={"X-Request-Id": "abc.1"})
        assert answer.status_code == 503
        assert answer.json()["error"] == "no_worker_available"
        assert answer.json()["request_id"] == "abc.1" == answer.headers["x-request-id"]
        # An invalid client id is replaced by HAProxy's uuid.
        answer = httpx.get(f"http://127.0.0.1:{port}/run/echo", headers={"X-Request-Id": "a b"})
        assert re.fullmatch(r"[0-9a-f-]{36}", answer.json()["request_id"])


class _ConnectionCountingBackend:
    """A plain HTTP/1.1 keep-alive server standing in for a worker's port (not a
    worker: this checks what HAProxy does with its connections), counting the
    connections that carried calls."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.connections = 0
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            counted = False

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                # One handler per connection; health checks (/healthz) not counted.
                if self.path.startswith("/run/") and not self.counted:
                    self.counted = True
                    backend.connections += 1
                body = b'{"status": "ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _ConnectionCountingBackend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_every_call_gets_a_new_connection_to_its_worker(tmp_path: Path) -> None:
    """HAProxy must not keep connections to workers alive: a worker closes an
    idle one after its keep-alive timeout, and a call HAProxy sends on it just
    then is lost unanswered (not a retryable connection failure). So three
    calls on one client connection reach the worker on three connections."""
    port = free_port()
    with _ConnectionCountingBackend() as backend:
        config = haproxy_config(tmp_path, port, [f"127.0.0.1:{backend.port}"])
        with haproxy(config, port, tmp_path / "haproxy.log"):
            with httpx.Client() as client:
                for _ in range(50):  # until the health check sees the worker up
                    if client.get(f"http://127.0.0.1:{port}/run/echo").status_code == 200:
                        break
                    time.sleep(0.2)
                before = backend.connections
                for _ in range(3):
                    assert client.get(f"http://127.0.0.1:{port}/run/echo").status_code == 200
                after = backend.connections
    assert after - before == 3


def test_server_ids_depend_on_addresses_only(tmp_path: Path) -> None:
    """Two HAProxy instances given the workers in another order, and one that adds
    a worker at run time, give every worker the same id: the same ring."""
    a, b, c = (f"127.0.0.1:{free_port()}" for _ in range(3))
    p1, p2 = free_port(), free_port()
    one = haproxy_config(tmp_path, p1, [a, b, c])
    two = haproxy_config(tmp_path, p2, [c, a])
    with haproxy(one, p1, tmp_path / "one.log"), haproxy(two, p2, tmp_path / "two.log"):
        cli("cluster", "add-worker", b, "--runtime-socket", str(tmp_path / f"haproxy-{p2}.sock"))
        first = servers(tmp_path / f"haproxy-{p1}.sock")
        second = servers(tmp_path / f"haproxy-{p2}.sock")
    assert first == second and len(first) == 3
    for worker in (a, b, c):
        address = parse_address(worker)
        assert first[f"w-127.0.0.1-{address.port}"] == server_id(address)


def test_server_id_collisions_are_settled_alike() -> None:
    addresses = [parse_address(f"10.0.{i // 250}.{i % 250}:5000") for i in range(3000)]
    ids = server_ids(addresses)
    assert len(set(ids.values())) == len(addresses)
    assert server_ids(list(reversed(addresses))) == ids


def test_add_and_remove_a_worker_at_run_time(tmp_path: Path) -> None:
    port = free_port()
    first, added = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = haproxy_config(tmp_path, port, [first])
    sock = str(tmp_path / f"haproxy-{port}.sock")
    added_name = f"w-127.0.0.1-{parse_address(added).port}"
    with haproxy(config, port, tmp_path / "haproxy.log"):
        cli("cluster", "add-worker", added, "--runtime-socket", sock)
        assert added_name in servers(Path(sock))
        again = cli("cluster", "add-worker", added, "--runtime-socket", sock, check=False)
        assert again.returncode == 2 and "already" in again.stderr
        cli("cluster", "remove-worker", added, "--runtime-socket", sock)
        assert added_name not in servers(Path(sock))
        gone = cli("cluster", "remove-worker", added, "--runtime-socket", sock, check=False)
        assert gone.returncode == 2 and "No such server" in gone.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--worker", "nonsense"], "not HOST:PORT"),
        (["--worker", "127.0.0.1:70000"], "not in 1..65535"),
        (["--worker", "bad;host:1"], "not a host name"),
        (["--worker", "127.0.0.1:1", "--worker", "127.0.0.1:1"], "listed twice"),
        (["--worker", "127.0.0.1:1", "--balance-factor", "90"], "above 100"),
        (["--worker", "127.0.0.1:1", "--tls-cert", "/nonexistent.pem"], "is not a file"),
        ([], "at least one --worker"),
        (["--worker-dns", "workers.example:5000", "--slots", "0"], "--slots"),
        # Nothing that would end a config line early (a trailing newline slips
        # past a regex's $), nor a non-ASCII digit int() cannot read.
        (["--worker", "localhost\n:5000"], "not a host name"),
        (["--bind", "localhost\n:80", "--worker", "127.0.0.1:1"], "not a host name"),
        (["--worker", "[fe80::1%x\n  bind 0.0.0.0:1]:5000"], "not an interface name"),
        (["--worker", "127.0.0.1:5\u00b2"], "not HOST:PORT"),
        (["--worker", "127.0.0.1:1", "--runtime-socket", "/run/a b.sock"], "cannot hold ' '"),
        (
            ["--worker", "127.0.0.1:1", "--runtime-socket", "/run/x.sock\n    bind 0.0.0.0:1"],
            "cannot hold '\\n'",
        ),
        (["--worker", "127.0.0.1:1", "--runtime-socket", "/run/x#y.sock"], "cannot hold '#'"),
        # Numeric names the resolver reads as other addresses (octal, short form).
        (["--worker", "01.2.3.4:5000"], "not a host name or IPv4"),
        (["--worker", "127.1:5000"], "not a host name or IPv4"),
        # One worker named twice (DNS names are case-insensitive).
        (["--worker", "Worker-1.example:5000", "--worker", "worker-1.EXAMPLE:5000"], "twice"),
    ],
)
def test_haproxy_config_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "h.cfg"
    bind = [] if "--bind" in args else ["--bind", "127.0.0.1:1"]
    done = cli("cluster", "haproxy-config", *bind, "--out", str(out), *args, check=False)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_config_commands_name_an_out_file_they_cannot_write(tmp_path: Path) -> None:
    out = tmp_path / "missing-dir" / "h.cfg"
    done = cli(
        "cluster", "haproxy-config", "--bind", "127.0.0.1:1", "--worker", "127.0.0.1:2",
        "--out", str(out), check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"olactors cluster: --out {out}: No such file or directory")


def test_haproxy_config_refuses_a_tls_cert_path_it_cannot_hold(tmp_path: Path) -> None:
    cert = tmp_path / "my cert.pem"  # exists: only the name is wrong
    cert.write_text("x")
    out = tmp_path / "h.cfg"
    done = cli(
        "cluster", "haproxy-config", "--bind", "127.0.0.1:1", "--worker", "127.0.0.1:2",
        "--tls-cert", str(cert), "--out", str(out), check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "--tls-cert" in done.stderr and "cannot hold ' '" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("verb", ["add-worker", "remove-worker"])
def test_runtime_commands_refuse_a_bad_worker_before_connecting(tmp_path: Path, verb: str) -> None:
    sock = tmp_path / "none.sock"  # never reached: the address is refused first
    for worker in ("127.0.0.1:5\u00b2", "localhost\n:5000"):
        done = cli("cluster", verb, worker, "--runtime-socket", str(sock), check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "runtime API" not in done.stderr


# ------------------------------------------------------------------ nginx
def nginx_config(tmp_path: Path, port: int, root: Path, *extra: str) -> Path:
    out = tmp_path / f"nginx-{port}.conf"
    args = ["cluster", "nginx-config", "--listen", f"127.0.0.1:{port}", "--root", str(root)]
    cli(*args, "--out", str(out), *extra)
    checked = subprocess.run([NGINX, "-t", "-c", str(out)], capture_output=True)
    assert checked.returncode == 0, checked.stderr
    return out


def test_nginx_serves_gets_and_takes_puts_from_the_publisher_only(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with nginx(nginx_config(tmp_path, port, root), port, tmp_path / "nginx.log"):
        assert httpx.put(f"{base}/echo.tar.gz", content=b"v1").status_code == 201
        got = httpx.get(f"{base}/echo.tar.gz")
        assert got.content == b"v1" and got.headers["etag"]
        again = httpx.get(f"{base}/echo.tar.gz", headers={"If-None-Match": got.headers["etag"]})
        assert again.status_code == 304
        assert httpx.put(f"{base}/echo.tar.gz", content=b"v2").status_code == 204
        assert httpx.get(f"{base}/echo.tar.gz").content == b"v2"
        assert httpx.get(f"{base}/.nginx.pid").status_code == 404
        assert httpx.request("PROPFIND", f"{base}/").status_code == 405
        assert httpx.delete(f"{base}/echo.tar.gz").status_code == 204
        assert httpx.get(f"{base}/echo.tar.gz").status_code == 404
    # Another publisher address: loopback may read, not write.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    (root / "kept.tar.gz").write_bytes(b"kept")
    config = nginx_config(tmp_path, port, root, "--allow", "10.9.9.9")
    with nginx(config, port, tmp_path / "nginx2.log"):
        assert httpx.get(f"{base}/kept.tar.gz").content == b"kept"
        assert httpx.put(f"{base}/kept.tar.gz", content=b"x").status_code == 403
        assert httpx.delete(f"{base}/kept.tar.gz").status_code == 403
        assert httpx.request("MKCOL", f"{base}/index.lock/").status_code == 403
    assert (root / "kept.tar.gz").read_bytes() == b"kept"


def ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def test_nginx_basic_auth_for_writes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"publisher:{ssha('s3cret')}\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = nginx_config(tmp_path, port, root, "--auth-file", str(htpasswd))
    with nginx(config, port, tmp_path / "nginx.log"):
        assert httpx.put(f"{base}/f.tar.gz", content=b"x").status_code == 401
        bad = httpx.put(f"{base}/f.tar.gz", content=b"x", auth=("publisher", "wrong"))
        assert bad.status_code == 401
        good = httpx.put(f"{base}/f.tar.gz", content=b"x", auth=("publisher", "s3cret"))
        assert good.status_code == 201
        assert httpx.get(f"{base}/f.tar.gz").content == b"x"
        assert httpx.delete(f"{base}/f.tar.gz").status_code == 401
        assert httpx.delete(f"{base}/f.tar.gz", auth=("publisher", "s3cret")).status_code == 204


@pytest.mark.parametrize(
    "args, message",
    [
        (["--root", "/nonexistent-store"], "is not a directory"),
        (["--allow", "10.0.0.0/33"], "not an address or CIDR"),
        (["--auth-file", "/nonexistent"], "is not a file"),
        (["--no-path-check"], "needs --user"),
        (["--user", "root; daemon on"], "not a user name"),
    ],
)
def test_nginx_config_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "n.conf"
    base = ["cluster", "nginx-config", "--listen", "127.0.0.1:1", "--out", str(out)]
    if "--root" not in args:
        base += ["--root", str(tmp_path)]
    done = cli(*base, *args, check=False)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not out.exists()


def test_nginx_config_refuses_a_root_nginx_would_read_as_a_variable(tmp_path: Path) -> None:
    root = tmp_path / "store$host"
    root.mkdir()
    out = tmp_path / "n.conf"
    done = cli(
        "cluster", "nginx-config", "--listen", "127.0.0.1:1", "--root", str(root),
        "--out", str(out), check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "cannot hold" in done.stderr, done.stderr
    assert not out.exists()


def test_publishing_refuses_credentials_in_the_url(tmp_path: Path) -> None:
    code = tmp_path / "hello"
    code.mkdir()
    (code / "f.py").write_text("def f(event):\n    return 'hi'\n")
    url = f"http://publisher:pw-s3cret@127.0.0.1:{free_port()}"
    for args in (["install", str(code)], ["uninstall", "hello"]):
        done = cli(*args, "--registry", url, check=False)
        assert done.returncode == 2 and "--registry-auth FILE" in done.stderr, done.stderr
        assert "pw-s3cret" not in done.stdout + done.stderr


def test_publishing_with_basic_auth(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"publisher:{ssha('s3cret')}\n")
    good, wrong, broken = tmp_path / "good", tmp_path / "wrong", tmp_path / "broken"
    good.write_text("publisher:s3cret\n")
    wrong.write_text("publisher:nope\n")
    broken.write_text("no colon here\n")
    code = tmp_path / "src" / "hello"
    code.mkdir(parents=True)
    (code / "f.py").write_text("def f(event):\n    return 'hi'\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = nginx_config(tmp_path, port, root, "--auth-file", str(htpasswd))
    with nginx(config, port, tmp_path / "nginx.log"):
        for auth in ([], ["--registry-auth", str(wrong)]):
            refused = cli("install", str(code), "--registry", url, *auth, check=False)
            assert refused.returncode == 2, refused.stderr
            assert "refused PUT" in refused.stderr and "HTTP 401" in refused.stderr
        assert not (root / "hello.tar.gz").exists() and not (root / "index.json").exists()
        bad = cli(
            "install", str(code), "--registry", url, "--registry-auth", str(broken), check=False
        )
        assert bad.returncode == 2 and "user:password" in bad.stderr
        done = cli("install", str(code), "--registry", url, "--registry-auth", str(good))
        assert "published hello" in done.stdout
        index = httpx.get(f"{url}/index.json").json()
        assert set(index["functions"]) == {"hello"}
        assert index["functions"]["hello"]["archive"] == "hello.tar.gz"
        denied = cli("uninstall", "hello", "--registry", url, check=False)
        assert denied.returncode == 2 and "HTTP 401" in denied.stderr
        cli("uninstall", "hello", "--registry", url, "--registry-auth", str(good))
        assert httpx.get(f"{url}/index.json").json() == {"functions": {}}
        assert httpx.get(f"{url}/hello.tar.gz").status_code == 404
    for args in (["--registry", "ftp://x/"], ["--registry", "http://x/?a=1"]):
        done = cli("install", str(code), *args, check=False)
        assert done.returncode == 2 and "--registry" in done.stderr, done.stderr
    done = cli("install", str(code), "--registry-auth", str(good), check=False)
    assert done.returncode == 2 and "goes with --registry" in done.stderr
