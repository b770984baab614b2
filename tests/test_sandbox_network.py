"""Sandbox networks (root): a namespace per function, and ``egress`` through NAT.

The outside world is made by the test: an "internet" network namespace
behind a veth, holding an HTTP server on a public-looking address, on an
address of a range the worker denies, and on the cloud metadata address
169.254.169.254.  The host's own services are HTTP servers the test runs on
the host.  Every address used is one the test made (TEST-NET ranges).
"""

from __future__ import annotations

import functools
import http.server
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

from olactors import native
from olactors._causes import released
from olactors._config import build_config
from olactors._errors import BadFunction, ConfigError
from olactors._function_config import parse_function_config
from olactors._network import EgressPolicy, Network, iface_alias, iface_name, table_name
from olactors.sock import Invocation, SandboxMeta, open_sock_pool
from olactors.sock._process import worker_id

from .conftest import write_function
from .test_http_api import serving, write_fn

pytestmark = pytest.mark.root

KINDS = ["fresh", "forked"]
PUBLIC = "198.51.100.10"  # the "internet" server (TEST-NET-2)
HOST_SIDE = "198.51.100.1"  # the host's end of the test's veth
DENIED = "203.0.113.10"  # a range the worker denies (TEST-NET-3)
METADATA = "169.254.169.254"
INTERNET_PORT = 8080
GATEWAY = "10.213.0.1"  # the first address of the default sandbox.egress_subnet

SERVER = r"""
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("internet " + self.connection.getsockname()[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""

# Fetches each URL of the event; reports the body or the error, quickly.
PROBE = r"""
import socket
import urllib.request


def fetch(url):
    if url.startswith("udp://"):  # one datagram, and the answer
        host, port = url[len("udp://"):].rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        try:
            s.connect((host, int(port)))
            s.send(b"ping")
            return {"ok": True, "body": s.recv(100).decode()}
        except OSError as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            s.close()
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return {"ok": True, "body": r.read().decode()}
    except Exception as exc:  # noqa: BLE001
        reason = getattr(exc, "reason", exc)
        return {"ok": False, "error": f"{type(reason).__name__}: {reason}"}


def f(event):
    return {name: fetch(url) for name, url in event.items()}
"""


def sh(*argv: str, fds: tuple[int, ...] = (), stdin: str | None = None) -> str:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, pass_fds=fds, check=False
    )
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def reachable(host: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def http_body(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


@pytest.fixture
def internet(processes) -> Iterator[None]:
    """The test's "internet": a namespace behind a veth, routed from the host,
    with an HTTP server on PUBLIC, DENIED and METADATA (port INTERNET_PORT)."""
    fd = native.new_network_namespace()
    ns = f"/proc/self/fd/{fd}"
    name = f"tnet{os.getpid() % 100000}"
    try:
        sh(
            "ip",
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
            fds=(fd,),
        )
        sh("ip", "addr", "add", f"{HOST_SIDE}/24", "dev", name)
        sh("ip", "link", "set", name, "up")
        sh("ip", "route", "add", "203.0.113.0/24", "via", PUBLIC)
        sh("ip", "route", "add", f"{METADATA}/32", "via", PUBLIC)
        inside = (
            "link set lo up\n"
            f"addr add {PUBLIC}/24 dev eth0\n"
            f"addr add {DENIED}/32 dev eth0\n"
            f"addr add {METADATA}/32 dev eth0\n"
            "link set eth0 up\n"
        )
        sh("nsenter", f"--net={ns}", "ip", "-batch", "-", fds=(fd,), stdin=inside)
        server = subprocess.Popen(
            ["nsenter", f"--net={ns}", sys.executable, "-c", SERVER, str(INTERNET_PORT)],
            pass_fds=(fd,),
        )
        processes.append(server)
        assert reachable(PUBLIC, INTERNET_PORT), "the test's internet server did not start"
        yield
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        os.close(fd)


class _Named(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"host {self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class HostServers:
    any_port: int  # on every host address, not allowed
    allowed_port: int  # on every host address, in egress_allow_host
    loopback_port: int  # on 127.0.0.1 only


def udp_echo(sock: socket.socket, stop: threading.Event) -> None:
    """Answer each datagram with ``udp <port>`` until ``stop`` is set."""
    port = sock.getsockname()[1]
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            _, peer = sock.recvfrom(100)
        except TimeoutError:
            continue
        sock.sendto(f"udp {port}".encode(), peer)


@pytest.fixture
def host_servers() -> Iterator[HostServers]:
    """HTTP servers on the host, and UDP echo servers on the same port numbers
    as the two on every address (a DNS resolver's kind of traffic)."""
    servers = [
        http.server.ThreadingHTTPServer((host, 0), _Named)
        for host in ("0.0.0.0", "0.0.0.0", "127.0.0.1")
    ]
    udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sock, server in zip(udp, servers, strict=False):
        sock.bind(("0.0.0.0", server.server_address[1]))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    stop = threading.Event()
    threads += [threading.Thread(target=udp_echo, args=(s, stop), daemon=True) for s in udp]
    for thread in threads:
        thread.start()
    try:
        yield HostServers(*(s.server_address[1] for s in servers))
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        stop.set()
        for thread in threads:
            thread.join()
        for sock in udp:
            sock.close()


def host_address() -> str | None:
    """A global IPv4 address of the host (its LAN side), if it has one."""
    for link in json.loads(sh("ip", "-json", "-4", "addr", "show", "scope", "global")):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                return str(info["local"])
    return None


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


# ------------------------------------------------------------------ egress
async def test_egress_reaches_the_internet_and_nothing_of_the_host(
    worker_dir, internet, host_servers
):
    allowed = host_servers.allowed_port
    async with serving(
        worker_dir,
        "sandbox.network=egress",
        "server.host=0.0.0.0",  # on every host address: the gateway's too
        f"sandbox.egress_allow_host=[{allowed}]",
        "sandbox.egress_deny=[203.0.113.0/24]",
    ) as served:
        worker_port = port_of(served.public)
        lan = host_address()
        # The test itself (the host) reaches all of them: only the sandbox is kept out.
        assert http_body(PUBLIC, INTERNET_PORT) == f"internet {PUBLIC}"
        assert http_body(DENIED, INTERNET_PORT) == f"internet {DENIED}"
        assert http_body(METADATA, INTERNET_PORT) == f"internet {METADATA}"
        assert reachable("127.0.0.1", host_servers.loopback_port)
        if lan is not None:
            assert reachable(lan, worker_port) and reachable(lan, host_servers.any_port)

        write_fn(served, "probe", PROBE)
        targets = {
            "internet": f"http://{PUBLIC}:{INTERNET_PORT}/",
            "denied": f"http://{DENIED}:{INTERNET_PORT}/",
            "metadata": f"http://{METADATA}:{INTERNET_PORT}/",
            "worker_at_gateway": f"http://{GATEWAY}:{worker_port}/status",
            "worker_at_loopback": f"http://127.0.0.1:{worker_port}/status",
            "host_service_at_gateway": f"http://{GATEWAY}:{host_servers.any_port}/",
            "host_loopback_service": f"http://127.0.0.1:{host_servers.loopback_port}/",
            "allowed_host_port": f"http://{GATEWAY}:{allowed}/",
            "allowed_host_udp_port": f"udp://{GATEWAY}:{allowed}",
            "host_udp_service_at_gateway": f"udp://{GATEWAY}:{host_servers.any_port}",
        }
        if lan is not None:
            targets["worker_at_lan_address"] = f"http://{lan}:{worker_port}/status"
            targets["host_service_at_lan_address"] = f"http://{lan}:{host_servers.any_port}/"
        async with served.client() as client:
            r = await client.post("/run/probe", json=targets)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got.pop("internet") == {"ok": True, "body": f"internet {PUBLIC}"}
        assert got.pop("allowed_host_port") == {"ok": True, "body": f"host {allowed}"}
        assert got.pop("allowed_host_udp_port") == {"ok": True, "body": f"udp {allowed}"}
        blocked = {name: result for name, result in got.items() if result["ok"]}
        assert not blocked, f"egress reached what it must not: {blocked}"
        assert set(got) >= {"denied", "metadata", "worker_at_gateway", "host_loopback_service"}
        async with served.admin_client() as admin:
            listed = (await admin.get("/sandboxes")).json()
        assert [s["network"] for s in listed if s["function"] == "probe"] == ["egress"]


async def test_none_reaches_no_network(worker_dir, internet):
    async with serving(worker_dir) as served:
        write_fn(served, "probe", PROBE)
        async with served.client() as client:
            r = await client.post(
                "/run/probe", json={"internet": f"http://{PUBLIC}:{INTERNET_PORT}/"}
            )
        assert r.status_code == 200, r.text
        result = r.json()["internet"]
        assert not result["ok"] and "unreachable" in result["error"], result


# ------------------------------------------------- one namespace per function
# Function B listens on an abstract UNIX socket and on 127.0.0.1 from import time.
LISTENER = r"""
import socket

abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
abstract.bind(b"\0olactors-test-b")
abstract.listen(8)
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.bind(("127.0.0.1", 7777))
tcp.listen(8)


def f(event):
    return "listening"
"""

# Tries to connect to what B listens on.
CONNECTOR = r"""
import socket


def attempt(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(address)
        return "connected"
    except OSError as exc:
        return f"{type(exc).__name__} errno {exc.errno}"
    finally:
        s.close()


def f(event):
    return {
        "abstract": attempt(socket.AF_UNIX, b"\0olactors-test-b"),
        "tcp": attempt(socket.AF_INET, ("127.0.0.1", 7777)),
    }
"""


async def call(sb, event=None) -> object:
    result = await sb.invoke(Invocation(body=json.dumps(event).encode()))
    assert result.status == 200, result.body
    return json.loads(result.body)


@pytest.mark.parametrize("kind", KINDS)
async def test_functions_do_not_share_a_network_namespace(pool, tmp_path, kind):
    """B's abstract socket and 127.0.0.1 listener are reachable from another
    sandbox of B (one namespace per function, made once) and not from A, also
    when all of them are forked from one zygote."""
    listener = write_function(tmp_path, "b", LISTENER)
    connector = write_function(tmp_path, "a", CONNECTOR)
    zygote = None
    if kind == "forked":
        zygote = await pool.create(None, False, None, None, SandboxMeta())
    made = pool.networks.made
    b = await pool.create(zygote, True, str(listener), None, SandboxMeta(network_scope="b"))
    b_again = await pool.create(zygote, True, str(connector), None, SandboxMeta(network_scope="b"))
    a = await pool.create(zygote, True, str(connector), None, SandboxMeta(network_scope="a"))
    assert await call(b) == "listening"
    assert pool.networks.made == made + 2  # b's and a's: b_again reused b's

    assert await call(b_again) == {"abstract": "connected", "tcp": "connected"}
    assert await call(a) == {
        "abstract": "ConnectionRefusedError errno 111",
        "tcp": "ConnectionRefusedError errno 111",
    }
    for sb in (a, b, b_again):
        await sb.destroy(released("test done"))
    assert ("b", "none") in pool.networks.scopes()  # kept while the function lives
    await pool.forget_network("b")
    await pool.forget_network("a")
    assert not [s for s in pool.networks.scopes() if s[0] in ("a", "b")]
    if zygote is not None:
        await zygote.destroy(released("test done"))


async def test_a_leaf_without_scope_has_a_namespace_of_its_own(pool, tmp_path):
    listener = write_function(tmp_path, "b", LISTENER)
    connector = write_function(tmp_path, "a", CONNECTOR)
    b = await pool.create(None, True, str(listener), None, SandboxMeta())
    a = await pool.create(None, True, str(connector), None, SandboxMeta())
    assert await call(a) == {
        "abstract": "ConnectionRefusedError errno 111",
        "tcp": "ConnectionRefusedError errno 111",
    }
    held = len(pool.networks.scopes())
    await a.destroy(released("test done"))
    await b.destroy(released("test done"))
    assert len(pool.networks.scopes()) == held - 2  # released with their sandboxes


# ----------------------------------------------------------- configuration
def test_host_network_is_a_clear_error_naming_egress(tmp_path):
    with pytest.raises(ConfigError, match="sandbox.network 'host' is no longer supported.*egress"):
        build_config("sandbox:\n  network: host\n")
    with pytest.raises(BadFunction, match="ol.yaml: network 'host' is no longer supported.*egress"):
        parse_function_config("network: host\n")


async def test_host_in_ol_yaml_fails_the_call_naming_egress(worker_dir):
    async with serving(worker_dir) as served:
        write_fn(served, "old", "def f(event):\n    return 1\n", "network: host\n")
        async with served.client() as client:
            r = await client.post("/run/old", json=None)
        assert r.status_code == 500
        assert r.json()["error"] == "bad_function"
        assert "use egress" in r.json()["message"]


def test_host_in_worker_yaml_stops_serve(tmp_path):
    from .conftest import run_cli

    (tmp_path / "worker.yaml").write_text("sandbox:\n  network: host\n")
    done = run_cli("serve", "--path", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert "use egress" in done.stderr


# ---------------------------------------------------------------- recovery
async def test_recovery_removes_a_dead_workers_rules_and_veths(worker_dir):
    wid = worker_id(worker_dir)
    name = iface_name(wid, 1)
    sh("nft", "add", "table", "inet", table_name(wid))
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    sh("ip", "link", "set", "dev", name, "alias", iface_alias(wid))
    try:
        async with open_sock_pool(build_config(None), worker_dir):
            assert table_name(wid) not in sh("nft", "list", "tables")
            assert name not in sh("ip", "-brief", "link")
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table_name(wid)], capture_output=True)
        subprocess.run(["ip", "link", "del", name], capture_output=True)


async def test_egress_subnet_overlapping_a_host_network_is_refused(worker_dir):
    """The veth range must not shadow a network of the host: the pool refuses to start."""
    routes = json.loads(sh("ip", "-json", "-4", "route", "show", "scope", "link"))
    networks = [ipaddress.IPv4Network(r["dst"], strict=False) for r in routes if "/" in r["dst"]]
    taken = next(n for n in networks if n.prefixlen <= 30)  # a host network, not a sandbox /32
    config = build_config(None, [f"sandbox.egress_subnet={taken}"])
    with pytest.raises(ConfigError, match="overlaps the host's route"):
        async with open_sock_pool(config, worker_dir):
            pass


# ------------------------------------------------------------------ lifetime
def worker_veths(worker_dir) -> list[str]:
    alias = iface_alias(worker_id(worker_dir))
    links = json.loads(sh("ip", "-json", "link", "show"))
    return [link["ifname"] for link in links if link.get("ifalias") == alias]


async def test_a_functions_namespace_is_made_once_and_goes_when_it_stops(worker_dir):
    """One veth for all of a function's calls, even with a fresh sandbox per
    call; gone once the function actor idles out; the table goes at shutdown."""
    wid = worker_id(worker_dir)
    async with serving(
        worker_dir, "sandbox.network=egress", "functions.idle_timeout_s=1"
    ) as served:
        write_fn(served, "once", "def f(event):\n    return 1\n", "reuse_sandbox: false\n")
        async with served.client() as client:
            for _ in range(3):
                r = await client.post("/run/once", json=None)
                assert r.status_code == 200, r.text
                assert len(worker_veths(worker_dir)) == 1
        assert table_name(wid) in sh("nft", "list", "tables")
        with trio.fail_after(20):
            while worker_veths(worker_dir):
                await trio.sleep(0.1)
    assert table_name(wid) not in sh("nft", "list", "tables")


def test_bench_sandbox_reports_the_namespace_cost(tmp_path):
    from olactors.bench.sandbox import measure

    figures = trio.run(measure, 2, tmp_path)
    assert figures["netns_none_p50_ms"] > 0 and figures["netns_egress_p50_ms"] > 0
    assert figures["fork_p50_ms"] > 0


def test_the_installer_has_network_only_when_pip_needs_one():
    from olactors.packages import IndexOptions

    assert IndexOptions().needs_network  # the public index
    assert not IndexOptions(offline=True, find_links=("/packages/.links/0",)).needs_network
    assert IndexOptions(offline=True, find_links=("https://example.org/wheels/",)).needs_network


# ------------------------------------------------------------- pure policy
def test_addresses_are_the_subnets_after_the_gateway_and_never_reused():
    policy = EgressPolicy(ipaddress.IPv4Network("10.9.0.0/29"))
    assert str(policy.gateway) == "10.9.0.1"
    used = {ipaddress.IPv4Address("10.9.0.2"), ipaddress.IPv4Address("10.9.0.4")}
    assert str(policy.pick_address(used)) == "10.9.0.3"
    every = {ipaddress.IPv4Address(f"10.9.0.{i}") for i in range(2, 7)}
    assert policy.pick_address(every) is None  # .7 is the broadcast address


def test_the_ruleset_is_valid_nftables_with_the_configured_ranges_and_ports():
    config = build_config(
        None, ["sandbox.egress_deny=[192.168.0.0/16, 10.1.2.3]", "sandbox.egress_allow_host=[53]"]
    )
    rules = EgressPolicy.from_config(config).ruleset("olactors_selftest", "olselftest")
    assert "169.254.0.0/16, 10.213.0.0/16, 192.168.0.0/16, 10.1.2.3/32" in rules
    assert "tcp dport { 53 } accept" in rules and "udp dport { 53 } accept" in rules
    sh("nft", "--check", "--file", "-", stdin=rules)  # nftables itself accepts it


def test_an_ipv6_range_in_egress_deny_is_accepted_and_already_dropped():
    """``sandbox.egress_deny`` is a list of CIDRs: an operator's list of private
    ranges of both families starts the worker; IPv6 ones need no rule of their
    own (egress drops all IPv6), so the deny set stays IPv4."""
    config = build_config(None, ["sandbox.egress_deny=[10.0.0.0/8, fc00::/7, 2001:db8::1]"])
    policy = EgressPolicy.from_config(config)
    assert [str(net) for net in policy.deny] == ["10.0.0.0/8"]
    rules = policy.ruleset("olactors_selftest", "olselftest")
    assert "fc00" not in rules and "meta nfproto ipv6 drop" in rules
    sh("nft", "--check", "--file", "-", stdin=rules)
    with pytest.raises(ConfigError, match="not an IP address or CIDR"):
        build_config(None, ["sandbox.egress_deny=[fc00::/7x]"])


async def test_egress_addresses_are_distinct_across_functions_and_workers(tmp_path):
    """Two workers on one host (each its own table and veths) never hand out
    the same sandbox address: the choice reads the host's routes under a
    host-wide lock."""
    config = build_config(None, ["sandbox.cgroup_pool_size=1"])
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    async with (
        open_sock_pool(config, tmp_path / "w1") as one,
        open_sock_pool(config, tmp_path / "w2") as two,
    ):
        spaces = []
        async with trio.open_nursery() as nursery:

            async def take(pool, scope):
                spaces.append(await pool.networks.acquire(scope, Network.EGRESS))

            for pool in (one, two):
                for scope in ("f", "g"):
                    nursery.start_soon(take, pool, scope)
        addresses = [space.veth.address for space in spaces]
        assert len(set(addresses)) == 4, addresses
        routes = sh("ip", "-4", "route", "show")
        assert all(f"{a} dev " in routes for a in addresses)
    assert not worker_veths(tmp_path / "w1") and not worker_veths(tmp_path / "w2")


# ------------------------------------------------- the installer's host services
def test_loopback_urls_and_proxies_name_the_gateway_in_the_installer():
    from olactors.packages import IndexOptions
    from olactors.packages._install import installer_environment, sandboxed_index

    index, _ = sandboxed_index(
        IndexOptions(
            index_url="http://localhost:3141/simple",
            extra_index_urls=("https://pypi.org/simple",),
            find_links=("http://127.0.0.1:8000/wheels/",),
        ),
        GATEWAY,
    )
    assert index.index_url == f"http://{GATEWAY}:3141/simple"
    assert index.extra_index_urls == ("https://pypi.org/simple",)
    assert index.find_links == (f"http://{GATEWAY}:8000/wheels/",)
    assert f"--trusted-host={GATEWAY}" in index.pip_args()
    env, _ = installer_environment(
        {"HTTPS_PROXY": "http://u:p@127.0.0.1:3128", "http_proxy": "[::1]:3128"}, GATEWAY
    )
    assert env["HTTPS_PROXY"] == f"http://u:p@{GATEWAY}:3128"
    assert env["http_proxy"] == f"{GATEWAY}:3128"


@pytest.mark.parametrize("allowed", [True, False])
async def test_the_installer_reaches_an_index_on_the_host_only_on_an_allowed_port(
    worker_dir, tmp_path, allowed
):
    """A package index on the host's loopback (here: a directory of wheels
    served over HTTP) is reached by the installer at the gateway address, when
    its port is in sandbox.egress_allow_host; the resolver, on the host, uses
    it as configured."""
    from .wheel_factory import build_standard_wheels

    wheels = build_standard_wheels(tmp_path / "wheels")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wheels))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    settings = [
        "packages.offline=true",
        f"packages.find_links=[http://127.0.0.1:{port}/]",
    ]
    if allowed:
        settings.append(f"sandbox.egress_allow_host=[{port}]")
    try:
        async with serving(worker_dir, *settings) as served:
            code = write_fn(
                served, "uses", "import alpha\ndef f(event):\n    return alpha.VERSION\n"
            )
            (code / "requirements.txt").write_text("alpha\n")
            async with served.client() as client:
                r = await client.post("/run/uses", json=None)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    if allowed:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code in (424, 500), r.text
        assert r.json()["error"].startswith("package_install"), r.text
