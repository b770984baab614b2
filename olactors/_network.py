"""Sandbox networks: the modes, the egress policy and its nftables rules (pure).

Two modes (``sandbox.network`` in worker.yaml, ``network`` in ol.yaml):

- ``none``: a network namespace of the function's own with only its
  loopback up: nothing outside it, and nothing of another function's (an
  abstract UNIX socket or a 127.0.0.1 listener lives in one namespace).
- ``egress``: the same, plus a veth pair to the host with one address
  (``/32``) from ``sandbox.egress_subnet``, a default route through the
  host, and NAT.  The worker's nftables table (:meth:`EgressPolicy.ruleset`)
  drops what comes from those veths to the host's own addresses (except
  ``sandbox.egress_allow_host`` ports), to link-local addresses (the cloud
  metadata service at 169.254.169.254), to ``sandbox.egress_subnet`` (other
  sandboxes) and to ``sandbox.egress_deny``; everything IPv6 is dropped.

``host`` (the host's own namespace) no longer exists: it is a clear error
naming ``egress``.  Nothing here does I/O: the sock layer runs ``ip`` and
``nft`` with what this module computes.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._config import Config


class Network(enum.StrEnum):
    """A sandbox's network mode (a ``str``: compares equal to its config spelling)."""

    NONE = "none"
    EGRESS = "egress"


#: Modes that once existed, and what replaces them.
_REMOVED = {
    "host": (
        "'host' is no longer supported (it gave a function the host's whole loopback, "
        "the worker's port included): use egress (outbound traffic through NAT; the "
        "host's own addresses stay unreachable)"
    ),
}

#: Link-local IPv4 (169.254.0.0/16): the metadata service of every cloud
#: (169.254.169.254) and the host's link-local neighbours; always dropped.
LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
#: ``/32`` addresses the smallest egress subnet must leave for sandboxes.
_MIN_SANDBOX_ADDRESSES = 2


def network_problem(value: object) -> str | None:
    """Why ``value`` is not a network mode (None when it is one)."""
    if isinstance(value, str) and value in _REMOVED:
        return _REMOVED[value]
    if value not in tuple(Network):
        return f"must be one of {', '.join(Network)}, got {value!r}"
    return None


def subnet_problem(value: object) -> str | None:
    """Why ``value`` is not a usable ``sandbox.egress_subnet`` (None when it is)."""
    try:
        net = ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as exc:
        return f"must be an IPv4 network such as 10.213.0.0/16: {exc}"
    if net.num_addresses < _MIN_SANDBOX_ADDRESSES + 2:
        return f"{net} is too small (at most /30: the gateway and a sandbox)"
    if net.overlaps(LOOPBACK) or net.overlaps(LINK_LOCAL) or net.is_multicast:
        return f"{net} overlaps loopback, link-local or multicast addresses"
    return None


def cidr_problem(value: object) -> str | None:
    """Why ``value`` is not a CIDR for ``sandbox.egress_deny`` (None when it is).

    IPv6 ranges are accepted (an operator's list of private ranges may hold
    both families) and need no rule: egress drops all IPv6.
    """
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError as exc:
        return f"{value!r} is not an IP address or CIDR: {exc}"
    return None


def port_problem(value: object) -> str | None:
    """Why ``value`` is not a port for ``sandbox.egress_allow_host`` (None when it is)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return f"{value!r} is not a port number (1-65535)"
    return None


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Where egress sandboxes may not go, and where their addresses come from.

    ``subnet``'s first address is the gateway: every host-side veth holds it
    (as a ``/32``), so a service on the host the policy allows is reached at
    the same address from every sandbox.  Sandboxes take the other addresses,
    one ``/32`` per network namespace.
    """

    subnet: ipaddress.IPv4Network
    deny: tuple[ipaddress.IPv4Network, ...] = ()
    allow_host_ports: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> EgressPolicy:
        section = config.sandbox
        return cls(
            subnet=ipaddress.IPv4Network(section.egress_subnet),
            deny=tuple(
                net
                for net in (ipaddress.ip_network(c, strict=False) for c in section.egress_deny)
                if isinstance(net, ipaddress.IPv4Network)  # all IPv6 is dropped anyway
            ),
            allow_host_ports=tuple(sorted(set(section.egress_allow_host))),
        )

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    def pick_address(self, used: Iterable[ipaddress.IPv4Address]) -> ipaddress.IPv4Address | None:
        """The first sandbox address of the subnet not in ``used`` (None: all taken)."""
        taken = set(used)
        first = int(self.gateway) + 1
        last = int(self.subnet.broadcast_address) - 1
        for value in range(first, last + 1):
            address = ipaddress.IPv4Address(value)
            if address not in taken:
                return address
        return None

    def ruleset(self, table: str, iface_prefix: str) -> str:
        """The ``nft -f`` script that (re)creates the worker's table ``inet <table>``.

        ``iface_prefix`` names the worker's host-side veths (``<prefix>*``).
        Traffic *from* the sandboxes is judged in prerouting at mangle
        priority: after conntrack (so the ICMP error of a reject is related
        traffic the output chain lets back to the sandbox, and a function's
        connect fails at once instead of hanging) and before any destination
        NAT of the host's own firewall could turn an address of the host into
        someone else's.  Nothing may open
        a connection *to* a sandbox (forward and output), and what leaves the
        host is masqueraded.
        """
        ours = f'"{iface_prefix}*"'
        deny = ", ".join(str(n) for n in (LINK_LOCAL, self.subnet, *self.deny))
        lines = [
            f"table inet {table} {{}}",
            f"delete table inet {table}",
            f"table inet {table} {{",
            "  set deny {",
            "    type ipv4_addr; flags interval; auto-merge",
            f"    elements = {{ {deny} }}",
            "  }",
            "  chain from_sandboxes {",
            "    type filter hook prerouting priority mangle; policy accept;",
            f"    iifname != {ours} accept",
            "    meta nfproto ipv6 drop",
        ]
        if self.allow_host_ports:
            ports = ", ".join(str(p) for p in self.allow_host_ports)
            lines += [
                f"    fib daddr type local tcp dport {{ {ports} }} accept",
                f"    fib daddr type local udp dport {{ {ports} }} accept",
            ]
        lines += [
            "    fib daddr type local reject with icmpx admin-prohibited",
            "    fib daddr type != unicast drop",
            f"    ip daddr {LOOPBACK} drop",
            "    ip daddr @deny reject with icmpx admin-prohibited",
            "  }",
            "  chain to_sandboxes {",
            "    type filter hook forward priority filter; policy accept;",
            f"    oifname {ours} ct state established,related accept",
            f"    oifname {ours} drop",
            "  }",
            "  chain from_host {",
            "    type filter hook output priority filter; policy accept;",
            f"    oifname {ours} ct state established,related accept",
            f"    oifname {ours} drop",
            "  }",
            "  chain nat_out {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    ip saddr {self.subnet} oifname != {ours} masquerade",
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"


def table_name(worker_id: str) -> str:
    """The worker's own nftables table (family ``inet``)."""
    return f"olactors_{worker_id}"


def iface_prefix(worker_id: str) -> str:
    """Prefix of the worker's host-side veth names (``<prefix><n>``, at most 15 bytes)."""
    return f"ol{worker_id[:7]}"


def iface_alias(worker_id: str) -> str:
    """The alias every host-side veth of the worker carries (what recovery looks for)."""
    return f"olactors-{worker_id}"


#: Longest interface name Linux takes (IFNAMSIZ - 1).
IFNAME_MAX = 15


def iface_name(worker_id: str, number: int) -> str:
    name = f"{iface_prefix(worker_id)}{number}"
    if len(name) > IFNAME_MAX:
        raise ValueError(f"interface number {number} is too large")
    return name


def _each(check: Callable[[object], str | None]) -> Callable[[object], str | None]:
    def each(values: object) -> str | None:
        for value in values if isinstance(values, list) else [values]:
            problem = check(value)
            if problem is not None:
                return problem
        return None

    return each


#: Checks of the ``sandbox.*`` network keys beyond their type (see ``_config``).
CONFIG_CHECKS: dict[str, Callable[[object], str | None]] = {
    "sandbox.network": network_problem,
    "sandbox.egress_subnet": subnet_problem,
    "sandbox.egress_deny": _each(cidr_problem),
    "sandbox.egress_allow_host": _each(port_problem),
}
