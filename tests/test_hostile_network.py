"""The hostile-function suite, network attempts: reaching another function's
abstract UNIX socket and 127.0.0.1 listener, and the worker's TCP port and
admin socket, from a ``none`` and from an ``egress`` function.

One worker with ``sandbox.network=egress`` (its public port on every host
address, so the gateway address the egress veths see has the worker behind
it) serves both kinds: ``network: none`` in a function's ol.yaml gives it the
empty kind.  The victim (egress) holds both sockets and reaches them itself,
so each attempt aims at something that is really there.
"""

from __future__ import annotations

import errno
import ipaddress
import subprocess
import time

import pytest

from olactors._config import build_config
from olactors._network import table_name
from olactors.sock import worker_id

from .hostile_kit import Worker, hostile, served_worker

pytestmark = pytest.mark.root

NETWORKS = ["none", "egress"]
GATEWAY = str(next(ipaddress.ip_network(build_config(None, []).sandbox.egress_subnet).hosts()))


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    yield from served_worker(
        tmp_path_factory, "hostile-net", "sandbox.network=egress", "server.host=0.0.0.0"
    )


def attempt(worker: Worker, name: str, network: str, body: str) -> dict:
    worker.write(name, hostile(body), f"network: {network}\n")
    response = worker.call(name, {**worker.targets(), "gateway": GATEWAY})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_the_victims_sockets_are_there(worker):
    response = worker.call("victim", "self-check")
    assert response.status_code == 200, response.text
    assert response.json()["abstract"] == 0 and response.json()["local"] == 0


@pytest.mark.parametrize("network", NETWORKS)
def test_another_functions_abstract_socket(worker, network):
    got = attempt(
        worker,
        f"abstract-{network}",
        network,
        """
        def f(t):
            return {"victim": connect_errno(socket.AF_UNIX, "\\0olactors-hostile-victim")}
        """,
    )
    assert got == {"victim": errno.ECONNREFUSED}  # its own namespace holds no such name
    worker.victim_unharmed()


@pytest.mark.parametrize("network", NETWORKS)
def test_another_functions_loopback_listener(worker, network):
    got = attempt(
        worker,
        f"loopback-{network}",
        network,
        """
        def f(t):
            return {"victim": connect_errno(socket.AF_INET, ("127.0.0.1", 7777))}
        """,
    )
    assert got["victim"] == errno.ECONNREFUSED, got  # its own loopback, nobody listening
    worker.victim_unharmed()


@pytest.mark.parametrize("network", NETWORKS)
def test_the_workers_port_and_admin_socket(worker, network):
    got = attempt(
        worker,
        f"worker-{network}",
        network,
        """
        def f(t):
            return {
                "loopback": connect_errno(socket.AF_INET, ("127.0.0.1", t["port"])),
                "gateway": connect_errno(socket.AF_INET, (t["gateway"], t["port"])),
                "admin": connect_errno(socket.AF_UNIX, t["admin"]),
            }
        """,
    )
    # its own loopback has no worker; the host behind the gateway drops it
    assert got["loopback"] == errno.ECONNREFUSED, got
    if network == "none":
        assert got["gateway"] == errno.ENETUNREACH, got  # no route at all
    else:
        assert got["gateway"] == errno.EHOSTUNREACH, got  # the worker's rules reject it
    assert got["admin"] == errno.ENOENT, got
    worker.victim_unharmed()


GATEWAY_CHECK = """
def f(t):
    return {"gateway": connect_errno(socket.AF_INET, (t["gateway"], t["port"]))}
"""


def test_the_rules_come_back_when_something_removes_them(worker):
    """A host firewall's reload (``nft flush ruleset``) removes every table, the
    worker's too: without it a sandbox would reach the host through its veth.
    The worker sees the removal and loads its rules again at once."""
    table = table_name(worker_id(worker.path.resolve()))
    assert attempt(worker, "rules-before", "egress", GATEWAY_CHECK) == {
        "gateway": errno.EHOSTUNREACH
    }
    nft = ["nft", "list", "table", "inet", table]
    assert subprocess.run(nft, capture_output=True).returncode == 0
    subprocess.run(["nft", "delete", "table", "inet", table], check=True)
    deadline = time.monotonic() + 5
    while subprocess.run(nft, capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "the worker did not load its rules again"
        time.sleep(0.01)
    assert attempt(worker, "rules-after", "egress", GATEWAY_CHECK) == {
        "gateway": errno.EHOSTUNREACH
    }
    with worker.admin() as admin:
        stats = admin.get("/stats").json()
    assert stats["sandbox_anomalies"]["egress_rules_restored"] == 1
    assert "were removed, e.g. by `nft flush ruleset`" in worker.log.read_text()
    worker.victim_unharmed()
