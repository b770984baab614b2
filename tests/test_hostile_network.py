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

import pytest

from olactors._config import build_config

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
