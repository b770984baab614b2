"""Two real workers behind the real HAProxy, with the real nginx as their code
store, all on 127.0.0.1 (the network-namespace version with three workers is
tests/test_cluster_e2e.py): hashing sticks, a function's own 503 runs once
and reaches the client as 503, a refusal is retried on the other worker, a
draining worker gets no new calls, functions are published and removed
through the store, and a worker keeps serving while the store is down."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .cluster_tools import NGINX, REPO, ServeProcess, free_port, haproxy, nginx, runtime_api
from .conftest import write_function

pytestmark = pytest.mark.root

CACHE_S = 0.5
IDLE_S = 2.0
SLOW_S = 3.0
NAMES = [f"f{i}" for i in range(10)]
ECHO = "def f(event):\n    return event\n"
SLOW = f"import time\ndef f(event):\n    time.sleep({SLOW_S})\n    return event\n"
OWN_503 = """
def app(environ, start_response):
    start_response("503 Service Unavailable",
                   [("Content-Type", "application/json"), ("Retry-After", "7")])
    return [b'{"mine": true}']
"""
WORKER_SETTINGS = (
    f"registry.cache_s={CACHE_S}",
    "queue.max_depth=1",
    "functions.max_instances=1",
    f"functions.idle_timeout_s={IDLE_S}",
    "functions.pause_after_s=5",
    "memory.pool_mb=1024",
    "sandbox.cgroup_pool_size=4",
)


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "olactors.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@dataclass
class Cluster:
    tmp: Path
    store: Path  # nginx's root
    store_url: str
    store_port: int
    balancer: str
    runtime_socket: Path
    workers: list[ServeProcess]
    nginx_conf: Path

    def publish(self, name: str, source: str) -> None:
        code = write_function(self.tmp / "src", name, source)
        cli("install", str(code), "--registry", self.store_url)

    def call(self, name: str, request_id: str, **kwargs: object) -> httpx.Response:
        headers = {"X-Request-Id": request_id}
        return httpx.post(
            f"{self.balancer}/run/{name}", json=request_id, headers=headers, timeout=60, **kwargs
        )

    def ran_on(self, name: str, request_id: str, settle_s: float = 0.5) -> list[int]:
        """Which workers recorded this call (waits for the recorders' batches)."""
        deadline = time.monotonic() + 10
        found: list[int] = []
        while time.monotonic() < deadline:
            found = [
                i
                for i, worker in enumerate(self.workers)
                if worker.admin("GET", f"/debug/{name}/{request_id}").status_code == 200
            ]
            if found:
                break
            time.sleep(0.1)
        time.sleep(settle_s)  # a second recorder would have written by now
        return [
            i
            for i, worker in enumerate(self.workers)
            if worker.admin("GET", f"/debug/{name}/{request_id}").status_code == 200
        ]

    def home(self, name: str) -> int:
        request_id = f"home-{name}-{time.monotonic_ns()}"
        answer = self.call(name, request_id)
        assert answer.status_code == 200, answer.text
        (index,) = self.ran_on(name, request_id, settle_s=0)
        return index

    def server_states(self) -> dict[str, int]:
        """HAProxy's operational state of each worker (2 up, 0 down)."""
        state = runtime_api(self.runtime_socket, "show servers state olactors_workers")
        out = {}
        for line in state.splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "olactors_workers":
                out[fields[4] + ":" + fields[18]] = int(fields[5])
        return out

    def wait_state(self, worker: ServeProcess, up: bool) -> None:
        deadline = time.monotonic() + 20
        while (self.server_states().get(worker.address) == 2) != up:
            assert time.monotonic() < deadline, f"HAProxy never saw {worker.address} up={up}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    store = tmp / "store"
    store.mkdir()
    store_port, balancer_port = free_port(), free_port()
    conf = tmp / "nginx.conf"
    cli(
        "cluster",
        "nginx-config",
        "--listen",
        f"127.0.0.1:{store_port}",
        "--root",
        str(store),
        "--out",
        str(conf),
    )
    store_url = f"http://127.0.0.1:{store_port}"
    workers: list[ServeProcess] = []
    with nginx(conf, store_port, tmp / "nginx.log"):
        try:
            for i in range(2):
                workers.append(
                    ServeProcess(
                        tmp / f"worker{i}",
                        free_port(),
                        tmp / f"worker{i}.log",
                        f"registry.location={store_url}",
                        *WORKER_SETTINGS,
                    )
                )
            sock = tmp / "haproxy.sock"
            cfg = tmp / "haproxy.cfg"
            args = ["cluster", "haproxy-config", "--bind", f"127.0.0.1:{balancer_port}"]
            for worker in workers:
                args += ["--worker", worker.address]
            # No bound on loads here, so only refusals move a call (bounded loads: e2e).
            args += ["--balance-factor", "10000", "--check-interval", "0.5"]
            cli(*args, "--out", str(cfg), "--runtime-socket", str(sock))
            with haproxy(cfg, balancer_port, tmp / "haproxy.log"):
                cluster = Cluster(
                    tmp,
                    store,
                    store_url,
                    store_port,
                    f"http://127.0.0.1:{balancer_port}",
                    sock,
                    workers,
                    conf,
                )
                for worker in workers:
                    worker.wait_serving()
                for name in NAMES:
                    cluster.publish(name, ECHO)
                cluster.publish("slow", SLOW)
                cluster.publish("own503", OWN_503)
                for worker in workers:
                    cluster.wait_state(worker, up=True)
                yield cluster
        finally:
            for worker in workers:
                worker.stop()


def test_each_function_sticks_to_one_worker_and_keeps_the_client_id(cluster: Cluster) -> None:
    for name in NAMES:
        homes = set()
        for i in range(3):
            request_id = f"stick-{name}-{i}"
            answer = cluster.call(name, request_id)
            assert answer.status_code == 200, answer.text
            assert answer.json() == request_id
            assert answer.headers["x-request-id"] == request_id
            homes.update(cluster.ran_on(name, request_id, settle_s=0))
        assert len(homes) == 1, f"{name} ran on {homes}"
    # A client id that is not valid is replaced by HAProxy's, which the worker keeps.
    answer = cluster.call("f0", "not valid!")
    made = answer.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", made)
    assert len(cluster.ran_on("f0", made, settle_s=0)) == 1


def test_a_second_haproxy_maps_every_function_alike(cluster: Cluster) -> None:
    """Server ids come from the workers' addresses: another HAProxy given the
    workers in the other order sends every function to the same worker."""
    port = free_port()
    config = cluster.tmp / "haproxy-second.cfg"
    args = ["cluster", "haproxy-config", "--bind", f"127.0.0.1:{port}"]
    for worker in reversed(cluster.workers):
        args += ["--worker", worker.address]
    sock = cluster.tmp / "haproxy-second.sock"
    cli(*args, "--balance-factor", "10000", "--out", str(config), "--runtime-socket", str(sock))
    with haproxy(config, port, cluster.tmp / "haproxy-second.log"):
        for name in NAMES:
            first = cluster.home(name)
            request_id = f"second-{name}"
            answer = httpx.post(
                f"http://127.0.0.1:{port}/run/{name}",
                json=1,
                headers={"X-Request-Id": request_id},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            assert cluster.ran_on(name, request_id, settle_s=0) == [first], name


def test_a_functions_own_503_runs_once_and_reaches_the_client(cluster: Cluster) -> None:
    answer = cluster.call("own503", "own-1")
    assert answer.status_code == 503
    assert answer.json() == {"mine": True}
    assert answer.headers["retry-after"] == "7"
    assert "x-olactors-status" not in answer.headers
    assert answer.headers["x-request-id"] == "own-1"
    assert len(cluster.ran_on("own503", "own-1")) == 1
    home = cluster.workers[cluster.ran_on("own503", "own-1", settle_s=0)[0]]
    # Straight to the worker: unmarked, the 503 as it is; marked, held as 500.
    plain = httpx.post(f"{home.public}/run/own503", json=1, timeout=30)
    assert plain.status_code == 503 and "x-olactors-status" not in plain.headers
    marked = httpx.post(
        f"{home.public}/run/own503", json=1, headers={"X-Olactors-Balancer": "1"}, timeout=30
    )
    assert marked.status_code == 500 and marked.headers["x-olactors-status"] == "503"
    assert marked.json() == {"mine": True}


def concurrently(n: int, call) -> list[httpx.Response]:  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


def split_post(base: str, path: str, request_id: str, body: bytes) -> tuple[int, bytes]:
    """POST with the head and the body in two writes 0.3 s apart (a slow client)."""
    host, port = base.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Request-Id: {request_id}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode())
        time.sleep(0.3)
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def test_a_refused_call_is_retried_on_the_other_worker(cluster: Cluster) -> None:
    home = cluster.home("slow")
    other = 1 - home
    worker = cluster.workers[home]
    before = worker.stats()["functions"]["slow"]["rejected_429"]
    with ThreadPoolExecutor(8) as pool:
        # Fill the home worker straight away (no balancer) until it refuses one:
        # its queue then stays full while the accepted calls run (SLOW_S each).
        direct = []
        for i in range(8):
            direct.append(pool.submit(httpx.post, f"{worker.public}/run/slow", json=i, timeout=60))
            with contextlib.suppress(TimeoutError):
                if direct[-1].result(timeout=0.3).status_code == 429:
                    break
        assert direct[-1].result().status_code == 429
        # Two balanced calls while it is full: a plain one, and one from a client
        # whose body arrives after its head (HAProxy waits for it, with
        # http-buffer-request: it can replay only a request it had whole).
        plain = pool.submit(cluster.call, "slow", "retry-1")
        split = pool.submit(split_post, cluster.balancer, "/run/slow", "retry-2", b'"split"')
        answer = plain.result()
        assert answer.status_code == 200 and answer.json() == "retry-1"
        assert answer.headers["x-request-id"] == "retry-1"
        assert split.result() == (200, b'"split"')
        assert [f.result().status_code for f in direct[:-1]] == [200] * (len(direct) - 1)
    assert cluster.ran_on("slow", "retry-1") == [other]  # once, on the other worker
    assert cluster.ran_on("slow", "retry-2") == [other]
    assert worker.stats()["functions"]["slow"]["rejected_429"] >= before + 3


def test_a_workers_refusal_is_429_unmarked_and_503_overloaded_marked(cluster: Cluster) -> None:
    worker = cluster.workers[0]

    def direct(marked: bool):  # type: ignore[no-untyped-def]
        headers = {"X-Olactors-Balancer": "1"} if marked else {}
        return lambda i: httpx.post(
            f"{worker.public}/run/slow", json=i, headers=headers, timeout=60
        )

    plain = concurrently(6, direct(False))
    assert {a.status_code for a in plain} == {200, 429}
    refused = [a for a in plain if a.status_code == 429]
    assert all(a.json()["error"] == "queue_full" for a in refused)
    marked = concurrently(6, direct(True))
    assert {a.status_code for a in marked} == {200, 503}
    for answer in (a for a in marked if a.status_code == 503):
        body = answer.json()
        assert body["error"] == "overloaded" and body["reason"] == "queue_full"
        assert answer.headers["x-olactors-refused"] == "queue_full"
        assert answer.headers["retry-after"]
        assert body["request_id"] == answer.headers["x-request-id"]


def test_a_draining_worker_gets_no_new_calls(cluster: Cluster) -> None:
    name = "f1"
    home = cluster.home(name)
    drained = cluster.workers[home]
    cli("drain", "--path", str(drained.path))
    try:
        assert httpx.get(f"{drained.public}/healthz").status_code == 503
        assert httpx.get(f"{drained.public}/healthz").json() == {"status": "draining"}
        cluster.wait_state(drained, up=False)
        for i in range(3):
            answer = cluster.call(name, f"drain-{i}")
            assert answer.status_code == 200
            assert cluster.ran_on(name, f"drain-{i}", settle_s=0) == [1 - home]
        # It still serves whoever calls it directly (calls in flight, late retries).
        assert httpx.post(f"{drained.public}/run/{name}", json=1).status_code == 200
    finally:
        cli("drain", "--path", str(drained.path), "--off")
    assert httpx.get(f"{drained.public}/healthz").json() == {"status": "ok"}
    cluster.wait_state(drained, up=True)
    assert cluster.home(name) == home  # consistent hashing: it comes back home


def index_of(cluster: Cluster) -> dict:
    return json.loads((cluster.store / "index.json").read_text())["functions"]


def wait_for(predicate, what: str, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_install_and_uninstall_through_the_code_store(cluster: Cluster) -> None:
    listed = index_of(cluster)
    assert set(NAMES) | {"slow", "own503"} <= set(listed)
    archive = (cluster.store / "f0.tar.gz").read_bytes()
    assert listed["f0"]["sha256"] == hashlib.sha256(archive).hexdigest()
    assert listed["f0"]["bytes"] == len(archive)
    cluster.publish("late", "def f(event):\n    return 'v1'\n")
    assert "late" in index_of(cluster)
    for worker in cluster.workers:
        assert httpx.post(f"{worker.public}/run/late", json=1).json() == "v1"
    cluster.publish("late", "def f(event):\n    return 'v2'\n")
    published = time.monotonic()
    for worker in cluster.workers:
        wait_for(
            lambda w=worker: httpx.post(f"{w.public}/run/late", json=1).json() == "v2",
            "v2 not served",
            CACHE_S + 1,
        )
    assert time.monotonic() - published <= CACHE_S + 1
    cli("uninstall", "late", "--registry", cluster.store_url)
    assert "late" not in index_of(cluster)
    assert not (cluster.store / "late.tar.gz").exists()
    for worker in cluster.workers:
        wait_for(
            lambda w=worker: httpx.post(f"{w.public}/run/late", json=1).status_code == 404,
            "late still served",
            CACHE_S + 1,
        )
    again = cli("uninstall", "late", "--registry", cluster.store_url, check=False)
    assert again.returncode == 2 and "not in the code store" in again.stderr
    # The workers read the store: their own registry is read-only.
    local = cli("uninstall", "f0", "--path", str(cluster.workers[0].path), check=False)
    assert local.returncode == 1 and "registry_read_only" in local.stderr


def test_a_worker_serves_the_last_good_version_while_the_store_is_down(cluster: Cluster) -> None:
    worker = cluster.workers[0]
    assert httpx.post(f"{worker.public}/run/f2", json="up").json() == "up"
    registry = worker.stats()["registry"]
    assert registry["stale_s"] == 0 and registry["last_ok_at"] and registry["last_error"] is None
    # nginx stops; the cluster fixture's context stops it again at the end (a no-op).
    pid = int((cluster.store / ".nginx.pid").read_text())
    os.kill(pid, 15)
    wait_for(lambda: not (cluster.store / ".nginx.pid").exists(), "nginx did not stop", 10)
    time.sleep(CACHE_S + 0.2)
    assert httpx.post(f"{worker.public}/run/f2", json="down").json() == "down"
    registry = worker.stats()["registry"]
    assert registry["stale_s"] > 0 and registry["failures"] >= 1
    assert "unreachable" in registry["last_error"]
    assert "code store: unreachable" in cli("status", "--path", str(worker.path)).stdout
    # The function idles out during the outage: its last good version is kept.
    time.sleep(IDLE_S + 1.5)
    assert "f2" not in {f["name"] for f in worker.admin("GET", "/functions").json()}
    assert httpx.post(f"{worker.public}/run/f2", json="still").json() == "still"
    assert worker.stats()["registry"]["stale_s"] >= IDLE_S
    # The store comes back: the next check clears the staleness.
    restarted = subprocess.Popen(
        [NGINX, "-c", str(cluster.nginx_conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (cluster.store / ".nginx.pid").exists(), "nginx did not restart", 10)
        time.sleep(CACHE_S + 0.2)
        assert httpx.post(f"{worker.public}/run/f2", json="back").json() == "back"
        registry = worker.stats()["registry"]
        assert registry["stale_s"] == 0 and registry["last_error"] is None
    finally:
        restarted.terminate()
        restarted.wait(10)


def test_one_worker_memory_refusal_uninstall_and_sigterm_drain(tmp_path: Path) -> None:
    """A call no memory can be reserved for is 503 memory_exhausted, or 503
    overloaded when a balancer marked it; `olactors uninstall` without
    --registry removes a function from the local worker; with server.drain_s
    the first SIGTERM makes /healthz 503 while calls are still served, then
    the worker shuts down."""
    path = tmp_path / "worker"
    write_function(path / "registry", "hello", "def f(event):\n    return 'hi'\n")
    write_function(path / "registry", "bye", "def f(event):\n    return 'bye'\n")
    big = write_function(path / "registry", "big", "def f(event):\n    return 'big'\n")
    (big / "ol.yaml").write_text("limits: {mem_mb: 2048}\n")  # more than the whole pool
    worker = ServeProcess(
        path,
        free_port(),
        tmp_path / "serve.log",
        "server.drain_s=3",
        "server.shutdown_timeout_s=5",
        "registry.cache_s=0.2",
        "sandbox.cgroup_pool_size=4",
        "memory.pool_mb=1024",
    )
    try:
        worker.wait_serving()
        plain = httpx.post(f"{worker.public}/run/big", json=1)
        assert plain.status_code == 503 and plain.json()["error"] == "memory_exhausted"
        marked = httpx.post(
            f"{worker.public}/run/big", json=1, headers={"X-Olactors-Balancer": "1"}
        )
        assert marked.status_code == 503, marked.text
        assert marked.json()["error"] == "overloaded"
        assert marked.json()["reason"] == "memory_exhausted"
        assert marked.headers["x-olactors-refused"] == "memory_exhausted"
        assert httpx.post(f"{worker.public}/run/bye", json=1).json() == "bye"
        assert "removed bye" in cli("uninstall", "bye", "--path", str(path)).stdout
        wait_for(
            lambda: httpx.post(f"{worker.public}/run/bye", json=1).status_code == 404,
            "bye still served",
            2,
        )
        gone = cli("uninstall", "bye", "--path", str(path), check=False)
        assert gone.returncode == 1 and "function_not_found" in gone.stderr
        assert worker.stats()["registry"]["last_ok_at"]
        worker.proc.send_signal(15)
        wait_for(
            lambda: httpx.get(f"{worker.public}/healthz").status_code == 503,
            "not draining",
            5,
        )
        assert httpx.get(f"{worker.public}/healthz").json() == {"status": "draining"}
        status = httpx.get(f"{worker.public}/status")
        assert status.status_code == 503 and status.json()["status"] == "draining"
        assert httpx.post(f"{worker.public}/run/hello", json=1).json() == "hi"
        assert worker.proc.wait(timeout=3 + 5 + 30) == 0
        assert "draining for 3.0 s" in worker.tail()
        log = worker.log.read_text()
        assert "POST hello 200" in log  # the access log, at INFO
        assert "GET /healthz" not in log  # health checks (every second) only at DEBUG
    finally:
        worker.stop()
