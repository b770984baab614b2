"""The balancing policies (olactors._balancing): pure properties, and agreement with a real HAProxy.

The HAProxy tests run Debian's haproxy 2.6 on 127.0.0.1 in front of small
trio HTTP servers that record which server each request reached; the pure
ring must predict every choice, with and without a load bound.
"""

from __future__ import annotations

import random
import shutil
import socket
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import trio

from olactors._balancing import (
    BE_WEIGHT_SCALE,
    HashRing,
    RoundRobin,
    Server,
    full_hash,
    key_hash,
    sdbm,
)
from olactors.bench.balancer import running_haproxy

# ----------------------------------------------------------------- pure


def test_hashes_match_haproxy_known_values() -> None:
    # Values printed by haproxy 2.6 itself: %[str(fn1),sdbm(0)] and sdbm(1).
    assert sdbm(b"a") == 97
    assert sdbm(b"fn1") == 849889449
    assert key_hash("fn1", avalanche=False) == 849889449
    assert key_hash("a") == 1830748055
    assert key_hash("fn1") == 1434191987
    assert key_hash("hello") == 2061535398
    assert full_hash(97) == 1830748055
    # A byte >= 0x80 counts as a negative char, as in HAProxy's C.
    assert sdbm(b"\xff") == 0xFFFFFFFF


def test_ring_has_sixteen_points_per_weight() -> None:
    ring = HashRing([Server(1), Server(2, weight=3), Server(3, weight=0)])
    assert len(ring) == BE_WEIGHT_SCALE * 4
    assert ring.total_weight == BE_WEIGHT_SCALE * 4
    with pytest.raises(ValueError):
        HashRing([Server(1), Server(1)])


def test_unbounded_choice_is_the_owner_and_stable() -> None:
    ring = HashRing([Server(i) for i in range(1, 6)])
    for i in range(200):
        h = key_hash(f"f{i}")
        assert ring.choose(h) == ring.owner(h)
        # Load does not matter without a balance factor.
        assert ring.choose(h, {p: 100 for p in range(1, 6)}) == ring.owner(h)


def test_adding_a_server_moves_keys_only_to_it() -> None:
    keys = [key_hash(f"fn{i}") for i in range(3000)]
    before = HashRing([Server(i) for i in (1, 2, 3)])
    after = HashRing([Server(i) for i in (1, 2, 3, 4)])
    moved = [h for h in keys if before.owner(h) != after.owner(h)]
    assert all(after.owner(h) == 4 for h in moved)
    # About a quarter of the keys move (consistent hashing's promise), not most.
    assert 0.10 < len(moved) / len(keys) < 0.45
    # Removing a server moves only its own keys.
    fewer = HashRing([Server(i) for i in (1, 3)])
    for h in keys:
        if before.owner(h) != 2:
            assert fewer.owner(h) == before.owner(h)


def test_bounded_loads_skip_servers_at_their_bound() -> None:
    ring = HashRing([Server(i) for i in (1, 2, 3, 4)])
    rng = random.Random(7)
    for _ in range(500):
        h = rng.getrandbits(32)
        served = {p: rng.randrange(0, 6) for p in (1, 2, 3, 4)}
        factor = rng.choice([100, 125, 150, 200])
        chosen = ring.choose(h, served, factor)
        in_flight = sum(served.values())
        # The chosen server is below its bound (some server always is).
        assert served[chosen] < ring.slots(chosen, in_flight, factor)
        if served[ring.owner(h)] < ring.slots(ring.owner(h), in_flight, factor):
            assert chosen == ring.owner(h)


def test_bounded_loads_keep_every_server_under_the_factor() -> None:
    """Requests for one hot key, none finishing: no server exceeds
    ceil(factor * average), the paper's guarantee (rounded up per server)."""
    ring = HashRing([Server(i) for i in range(1, 11)])
    served: Counter[int] = Counter()
    h = key_hash("hot")
    for _ in range(200):
        served[ring.choose(h, served, 125)] += 1
    bound = -(-(200 * 125) // 100) // 10 + 1  # ceil(factor * in flight / servers), rounded up
    assert max(served.values()) <= bound
    assert len(served) >= 200 // bound  # the hot key spilled over as many as it needed


def test_avoid_skips_a_server() -> None:
    ring = HashRing([Server(i) for i in (1, 2, 3)])
    for i in range(100):
        h = key_hash(f"k{i}")
        owner = ring.owner(h)
        assert ring.choose(h, avoid=owner) != owner
    assert HashRing([Server(1)]).choose(5, avoid=1) == 1  # nowhere else to go


def test_round_robin_cycles_in_order() -> None:
    rr = RoundRobin([3, 1, 2])
    assert [rr.choose() for _ in range(7)] == [3, 1, 2, 3, 1, 2, 3]
    assert rr.choose(avoid=1) == 2  # 1 was next: skipped


# ------------------------------------------------- against a real HAProxy
needs_haproxy = pytest.mark.skipif(
    shutil.which("haproxy", path="/usr/sbin:/usr/bin") is None, reason="haproxy is not installed"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backends:
    """Trio HTTP servers recording (server, path) per request; held until released."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[int, str]] = []
        self.release = trio.Event()
        self.hold = False
        self.arrived = trio.Condition()

    async def serve(self, puid: int, nursery: trio.Nursery) -> int:
        async def handle(stream: trio.SocketStream) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1].decode()
            async with self.arrived:
                self.arrivals.append((puid, path))
                self.arrived.notify_all()
            if self.hold:
                await self.release.wait()
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            )

        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        return int(listeners[0].socket.getsockname()[1])

    async def wait_for(self, count: int) -> None:
        async with self.arrived:
            while len(self.arrivals) < count:
                await self.arrived.wait()


def _config(port: int, servers: list[tuple[Server, int]], hash_line: str, extra: str) -> str:
    lines = [f"  server w{s.puid} 127.0.0.1:{p} id {s.puid} weight {s.weight}" for s, p in servers]
    return "\n".join(
        [
            "defaults",
            "  mode http",
            "  timeout connect 2s",
            "  timeout client 30s",
            "  timeout server 30s",
            "frontend lb",
            f"  bind 127.0.0.1:{port}",
            "  default_backend workers",
            "backend workers",
            "  balance hash path,field(3,/)",
            f"  {hash_line}",
            extra,
            *lines,
            "",
        ]
    )


async def _get(port: int, path: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n".encode()
        )
        while await stream.receive_some(4096):
            pass


@needs_haproxy
@pytest.mark.parametrize(
    ("hash_line", "avalanche"),
    [("hash-type consistent", True), ("hash-type consistent sdbm", False)],
)
async def test_haproxy_routes_every_key_where_the_ring_says(
    tmp_path: Path, hash_line: str, avalanche: bool
) -> None:
    servers = [Server(3), Server(7), Server(11, weight=2), Server(12)]
    backends = Backends()
    port = _free_port()
    keys = [f"fn{i}" for i in range(150)] + ["a", "b", "c", "hello-world", "x.y_z-1"]
    async with trio.open_nursery() as nursery:
        ports = [await backends.serve(s.puid, nursery) for s in servers]
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(_config(port, list(zip(servers, ports, strict=True)), hash_line, ""))
        async with running_haproxy(cfg, listening=("127.0.0.1", port), log=tmp_path / "log"):
            for key in keys:
                await _get(port, f"/run/{key}/some/path?q=1")
        nursery.cancel_scope.cancel()
    ring = HashRing(servers)
    got = {path.split("/")[2]: puid for puid, path in backends.arrivals}
    predicted = {k: ring.owner(key_hash(k, avalanche=avalanche)) for k in keys}
    assert got == predicted
    if avalanche:  # raw sdbm of similar names clusters on few points: why avalanche is the default
        assert len(set(got.values())) == len(servers)


@needs_haproxy
async def test_haproxy_bounded_loads_spill_where_the_ring_says(tmp_path: Path) -> None:
    """Requests held in flight: each next one goes where ``choose`` predicts
    from the counts of requests in flight (hash-balance-factor 125)."""
    servers = [Server(1), Server(2), Server(3)]
    backends = Backends()
    backends.hold = True
    port = _free_port()
    sequence = ["hot"] * 6 + ["cold", "hot", "other", "cold"]
    async with trio.open_nursery() as nursery:
        ports = [await backends.serve(s.puid, nursery) for s in servers]
        cfg = tmp_path / "haproxy.cfg"
        pairs = list(zip(servers, ports, strict=True))
        cfg.write_text(_config(port, pairs, "hash-type consistent", "  hash-balance-factor 125"))
        async with running_haproxy(cfg, listening=("127.0.0.1", port), log=tmp_path / "log"):
            async with trio.open_nursery() as clients:
                for number, key in enumerate(sequence, 1):
                    clients.start_soon(_get, port, f"/run/{key}")
                    with trio.fail_after(10):
                        await backends.wait_for(number)
                backends.release.set()
        nursery.cancel_scope.cancel()
    ring = HashRing(servers)
    served: Counter[int] = Counter()
    predicted = []
    for key in sequence:
        puid = ring.choose(key_hash(key), served, 125)
        served[puid] += 1
        predicted.append(puid)
    assert [puid for puid, _ in backends.arrivals] == predicted
    assert len(set(predicted[:6])) > 1  # the hot key did spill
