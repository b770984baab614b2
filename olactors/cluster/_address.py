"""``HOST:PORT`` arguments and the stable HAProxy server identity of a worker."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from .._errors import OlactorsError

#: Server ids lie in [1, ID_SPACE): HAProxy places a server on its consistent-
#: hashing ring from ``id * 4096 + n`` in 32 bits, so ids below 2**20 never wrap
#: onto each other's points.
ID_SPACE = 1 << 20
# Matched whole (fullmatch): ``$`` alone would accept a trailing newline, which
# would end a config line early.
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # an IPv6 zone: an interface name


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, what: str = "address") -> Address:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) with a port in 1..65535 and a host
    that is an IP address or a DNS name (nothing a config file could misread)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port_text):
        raise OlactorsError(f"{what} {text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            scope = ipaddress.IPv6Address(host).scope_id
        except ValueError:
            raise OlactorsError(f"{what} {text!r}: {host!r} is not an IPv6 address") from None
        if scope is not None and not _SCOPE.fullmatch(scope):
            raise OlactorsError(f"{what} {text!r}: {scope!r} is not an interface name")
    elif not _HOSTNAME.fullmatch(host) or (_is_numeric(host) and not _is_ipv4(host)):
        # A numeric name that is not a dotted quad ("01.2.3.4", "1.2.3") is
        # one the resolver reads as another address (octal, short forms).
        raise OlactorsError(f"{what} {text!r}: {host!r} is not a host name or IPv4 address")
    else:
        host = host.lower()  # DNS names are case-insensitive: one worker, one id
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise OlactorsError(f"{what} {text!r}: port {port} is not in 1..65535")
    return Address(host, port)


def _is_numeric(host: str) -> bool:
    return all(label.isdigit() for label in host.split("."))


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def server_id(address: Address) -> int:
    """A worker's HAProxy server id, from its address alone: every HAProxy
    instance given the same workers (in any order, or added at run time)
    places them at the same points of the ring, so all map functions alike."""
    digest = hashlib.sha256(str(address).encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % (ID_SPACE - 1)


def server_name(address: Address) -> str:
    """A worker's HAProxy server name (``w-<host>-<port>``; ``:`` and ``%`` of IPv6
    as ``_``)."""
    return f"w-{address.host.replace(':', '_').replace('%', '_')}-{address.port}"


def server_ids(addresses: list[Address]) -> dict[Address, int]:
    """Ids for a set of workers: :func:`server_id`, and on the (rare) collision
    the next free id, deciding in address order so every instance agrees."""
    ids: dict[Address, int] = {}
    used: set[int] = set()
    for address in sorted(set(addresses), key=str):
        candidate = server_id(address)
        while candidate in used:
            candidate = candidate % (ID_SPACE - 1) + 1
        used.add(candidate)
        ids[address] = candidate
    return ids
