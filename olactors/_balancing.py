"""How HAProxy 2.6 picks a worker: consistent hashing with bounded loads, and round robin (pure).

A mirror of HAProxy's own code (``src/lb_chash.c``, ``gen_hash`` in
``src/backend.c``, ``full_hash`` in ``include/haproxy/tools.h``), so the
simulation routes exactly as the deployed balancer does and tests can
predict which worker a real HAProxy sends a function to:

* **The ring.** A server of weight ``w`` has ``w * 16`` points
  (``BE_WEIGHT_SCALE``) at ``full_hash(puid * 4096 + i)``, where ``puid``
  is its numeric id (``id`` in haproxy.cfg; stable ids make several
  balancers agree) and ``full_hash`` is Bob Jenkins' 32-bit integer
  avalanche times 3221225473.  A key's hash is ``sdbm`` of its bytes
  (HAProxy's default hash function), passed through ``full_hash`` with
  the ``avalanche`` modifier, which ``hash-type consistent`` implies when
  no function is named.
* **The lookup.** The point nearest the key's hash wins, looking both ways
  (``eb32_lookup_ge`` and its predecessor; a tie goes to the one before),
  with 32-bit wrap-around arithmetic.
* **Bounded loads** (``hash-balance-factor F``; Mirrokni, Thorup and
  Zadimoghaddam, SODA 2018).  ``served`` is each server's requests in
  flight.  A server is *eligible* while it serves fewer than its share of
  ``ceil((total in flight + 1) * F / 100)`` slots (shared by weight, never
  less than 1); from the nearest point the lookup walks the ring clockwise
  to the first eligible server (or one not to ``avoid``, a redispatch).
  With ``F`` = 0 there is no bound.
* **Round robin** (``balance roundrobin``) with equal weights: each server
  in turn, in configuration order.

Everything here is a plain function of its arguments: no I/O, no time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Ring points per unit of weight (HAProxy's ``BE_WEIGHT_SCALE``).
BE_WEIGHT_SCALE = 16
#: The spacing of two servers' point numbers (``SRV_EWGHT_RANGE`` = 256 * 16).
SRV_EWGHT_RANGE = 256 * BE_WEIGHT_SCALE
_MASK = 0xFFFFFFFF


def sdbm(data: bytes) -> int:
    """HAProxy's default hash function (``hash_sdbm``), 32-bit unsigned.

    HAProxy reads the bytes as ``char``, signed on x86: bytes >= 0x80 count
    negative, as here."""
    h = 0
    for byte in data:
        c = byte - 256 if byte >= 0x80 else byte
        h = (c + (h << 6) + (h << 16) - h) & _MASK
    return h


def full_hash(a: int) -> int:
    """Bob Jenkins' full-avalanche 32-bit integer hash (HAProxy's ``full_hash``)."""
    a &= _MASK
    a = ((a + 0x7ED55D16) + (a << 12)) & _MASK
    a = ((a ^ 0xC761C23C) ^ (a >> 19)) & _MASK
    a = ((a + 0x165667B1) + (a << 5)) & _MASK
    a = ((a + 0xD3A2646C) ^ (a << 9)) & _MASK
    a = ((a + 0xFD7046C5) + (a << 3)) & _MASK
    a = ((a ^ 0xB55A4F09) ^ (a >> 16)) & _MASK
    # HAProxy then spreads the values over the tree by a large prime near 3/4 of 2**32.
    return (a * 3221225473) & _MASK


def key_hash(key: str | bytes, *, avalanche: bool = True) -> int:
    """The hash HAProxy computes for a sample ``key`` (``balance hash <expr>``):
    ``sdbm``, then ``full_hash`` unless the config names a function without
    ``avalanche`` (``hash-type consistent sdbm``)."""
    data = key.encode() if isinstance(key, str) else key
    h = sdbm(data)
    return full_hash(h) if avalanche else h


@dataclass(frozen=True, slots=True)
class Server:
    """A backend server: its numeric id (``puid``) and weight (0: not in the ring)."""

    puid: int
    weight: int = 1


class HashRing:
    """The consistent-hash ring of ``servers`` (in configuration order).

    Servers of weight 0 (drained, or down) have no points but still count
    for nothing else; pass only the servers HAProxy considers usable.
    """

    def __init__(self, servers: Iterable[Server]) -> None:
        self.servers: tuple[Server, ...] = tuple(servers)
        puids = [s.puid for s in self.servers]
        if len(set(puids)) != len(puids):
            raise ValueError(f"server ids must be unique, got {puids}")
        points: list[tuple[int, int, int]] = []  # (key, insertion order, puid)
        for server in self.servers:
            for i in range(server.weight * BE_WEIGHT_SCALE):
                key = full_hash(server.puid * SRV_EWGHT_RANGE + i)
                points.append((key, len(points), server.puid))
        points.sort()
        self._keys = [p[0] for p in points]
        self._owners = [p[2] for p in points]
        self._eweight = {s.puid: s.weight * BE_WEIGHT_SCALE for s in self.servers}
        self.total_weight = sum(self._eweight.values())
        self._cumulative: dict[int, int] = {}
        running = 0
        for server in self.servers:
            if server.weight > 0:
                self._cumulative[server.puid] = running
                running += self._eweight[server.puid]

    def __len__(self) -> int:
        return len(self._keys)

    def nearest(self, hash_value: int) -> int:
        """The index of the ring point nearest ``hash_value`` (HAProxy's choice)."""
        if not self._keys:
            raise LookupError("the ring is empty")
        n = len(self._keys)
        after = bisect.bisect_left(self._keys, hash_value)
        if after == n:
            after = 0
        before = (after - 1) % n
        dp = (hash_value - self._keys[before]) & _MASK
        dn = (self._keys[after] - hash_value) & _MASK
        return before if dp <= dn else after

    def owner(self, hash_value: int) -> int:
        """The server id the key maps to with no load bound."""
        return self._owners[self.nearest(hash_value)]

    def slots(self, puid: int, in_flight: int, balance_factor: int) -> int:
        """How many requests ``puid`` may serve before it is skipped
        (``chash_server_is_eligible``), with ``in_flight`` requests in the backend."""
        total_slots = ((in_flight + 1) * balance_factor + 99) // 100
        per_weight, remainder = divmod(total_slots, self.total_weight)
        eweight = self._eweight[puid]
        cumulative = self._cumulative[puid]
        slots = eweight * per_weight
        slots += ((cumulative + eweight) * remainder) // self.total_weight - (
            cumulative * remainder
        ) // self.total_weight
        return max(slots, 1)

    def choose(
        self,
        hash_value: int,
        served: Mapping[int, int] | None = None,
        balance_factor: int = 0,
        avoid: int | None = None,
    ) -> int:
        """The server id HAProxy picks for a key of ``hash_value``
        (``chash_get_server_hash``): the nearest point's server, or walking
        clockwise past ``avoid`` and, with a ``balance_factor``, past
        servers at their bound.  ``served`` maps server ids to requests in
        flight (missing: 0)."""
        served = served or {}
        in_flight = sum(served.values())
        n = len(self._keys)
        index = self.nearest(hash_value)
        owner = self._owners[index]
        wrapped = 0

        def skip(puid: int) -> bool:
            if puid == avoid:
                return True
            if not balance_factor:
                return False
            return served.get(puid, 0) >= self.slots(puid, in_flight, balance_factor)

        while skip(owner):
            index += 1
            if index == n:
                index = 0
                wrapped += 1
                if wrapped > 1:  # HAProxy's guard against a loop: keep the last one
                    break
            owner = self._owners[index]
        return owner


class RoundRobin:
    """``balance roundrobin`` over servers of equal weight: each in turn."""

    def __init__(self, puids: Sequence[int]) -> None:
        if not puids:
            raise ValueError("round robin needs at least one server")
        self.puids = tuple(puids)
        self._next = 0

    def choose(self, avoid: int | None = None) -> int:
        for _ in range(len(self.puids)):
            puid = self.puids[self._next]
            self._next = (self._next + 1) % len(self.puids)
            if puid != avoid or len(self.puids) == 1:
                return puid
        raise AssertionError("unreachable")
