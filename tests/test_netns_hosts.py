"""Network-namespace test hosts (olactors.bench.netns): reachable both ways, cgroups
visible inside, and nothing left afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from olactors.bench.netns import host_network, leftovers

pytestmark = pytest.mark.root

SERVE = (
    "import http.server, sys; http.server.test("
    "HandlerClass=http.server.SimpleHTTPRequestHandler, bind=sys.argv[1], port=int(sys.argv[2]))"
)


def _get(url: str, deadline_s: float = 60.0) -> httpx.Response:
    end = time.monotonic() + deadline_s
    while True:
        try:
            return httpx.get(url, timeout=2.0)
        except httpx.HTTPError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def test_hosts_reach_each_other_and_the_store_and_leave_nothing(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hi")
    store = None
    with host_network() as net:
        token, prefix = net.token, net.prefix
        a, b = net.add_host(), net.add_host()
        assert a.address != b.address and a.name != b.name
        servers = [
            h.start(
                [sys.executable, "-c", SERVE, h.address, "8000"], log=tmp_path / f"{h.name}.log"
            )
            for h in (a, b)
        ]
        # Both listen on port 8000: each namespace has its own ports.
        for h in (a, b):
            assert _get(f"http://{h.address}:8000/").status_code == 200
        # The store address on the host side is reachable from inside every host.
        store = subprocess.Popen(
            [sys.executable, "-c", SERVE, net.store_address, "8001"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert _get(f"http://{net.store_address}:8001/hello.txt").text == "hi"
        fetch = f"import urllib.request; print(urllib.request.urlopen('http://{net.store_address}:8001/hello.txt').read().decode())"
        for h in (a, b):
            done = h.run([sys.executable, "-c", fetch])
            assert done.stdout.strip() == "hi", done.stderr
        # nsenter changes only the network: the cgroup v1 hierarchies stay visible.
        inside = a.run(["ls", "/sys/fs/cgroup"]).stdout.split()
        outside = sorted(p.name for p in Path("/sys/fs/cgroup").iterdir())
        assert sorted(inside) == outside
        # A host's own loopback is its own: nothing of the machine's is there.
        assert "127.0.0.1" in a.run(["ip", "-o", "addr"]).stdout
        assert "eth0" not in a.run(["ip", "-o", "link"]).stdout
        net.remove_host(b)
        assert servers[1].poll() is not None
        assert leftovers(token, prefix) != []  # a is still there
    store.kill()
    store.wait()
    assert all(s.poll() is not None for s in servers)
    assert leftovers(token, prefix) == []
