"""Test hosts on one machine: network namespaces joined to the host by veth pairs.

For the cluster test and ``olactors bench cluster`` (root only).  A
:class:`HostNetwork` owns a private ``/24`` of ``10.231.0.0/16`` (the first
one no interface on this machine uses):

* each :class:`NetnsHost` is a network namespace made with ``ip netns add``
  and a veth pair: ``<prefix>.<4i+1>`` on the host side, ``<prefix>.<4i+2>``
  inside (a ``/30``), a default route through the host side;
* ``store_address`` (``<prefix>.254/32``) is added to the host's loopback
  interface (this kernel has no dummy interfaces): every namespace reaches
  it through its veth, so one code store (nginx) listening there serves
  every host, and no other address of the machine is involved.

Processes start inside a host with ``nsenter --net=/run/netns/<name>``
(:meth:`NetnsHost.start`), not ``ip netns exec``, which also remounts
``/sys`` and so hides the cgroup v1 hierarchies a worker needs.  Only the
network namespace changes: the filesystem, the cgroups and the PID
namespace stay the host's.  Each namespace has its own ports, so every
worker can listen on the same one.

:meth:`HostNetwork.close` (also the end of :func:`host_network`) kills the
processes it started, by pid, and removes every namespace, veth and the
store address; it is safe to call twice.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import OlactorsError

BASE = ipaddress.ip_network("10.231.0.0/16")
NETNS_DIR = Path("/run/netns")
MAX_HOSTS = 60


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise OlactorsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _used_prefixes() -> set[str]:
    text = _ip("-o", "addr", "show").stdout
    return set(re.findall(r"inet (10\.231\.\d+)\.\d+/", text))


@dataclass
class NetnsHost:
    """One test host: a network namespace with one address, and what runs in it."""

    name: str
    index: int
    address: str  # inside the namespace
    gateway: str  # the host side of the veth
    veth: str  # the host side's interface name
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.name

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's network namespace."""
        return ["nsenter", f"--net={self.netns_path}", "--", *argv]

    def start(
        self, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in this host (output to ``log``); kept to be killed at close."""
        with open(log, "ab") as out:
            process = subprocess.Popen(
                self.command(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, check=False)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process started here and reap them."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(sig)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


class HostNetwork:
    """The hosts of one run (see the module docstring)."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise OlactorsError("network-namespace hosts need root")
        self.token = f"{os.getpid() % 100000:05d}"
        used = _used_prefixes()
        free = [f"10.231.{octet}" for octet in range(1, 255) if f"10.231.{octet}" not in used]
        if not free:
            raise OlactorsError(f"no free /24 left in {BASE}")
        self.prefix = free[0]
        self.store_address = f"{self.prefix}.254"
        self.hosts: list[NetnsHost] = []
        self._next = 0
        self._closed = False
        _ip("addr", "add", f"{self.store_address}/32", "dev", "lo")

    def add_host(self) -> NetnsHost:
        """A new host, up and reachable from this one (and it reaching ``store_address``)."""
        if self._next >= MAX_HOSTS:
            raise OlactorsError(f"at most {MAX_HOSTS} hosts per network")
        index = self._next
        self._next += 1
        name = f"olh-{self.token}-{index}"
        veth, peer = f"olh{self.token}h{index}", f"olh{self.token}n{index}"
        gateway, address = f"{self.prefix}.{4 * index + 1}", f"{self.prefix}.{4 * index + 2}"
        host = NetnsHost(name, index, address, gateway, veth)
        _ip("netns", "add", name)
        self.hosts.append(host)  # from here on, close() removes it
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", name)
        _ip("addr", "add", f"{gateway}/30", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("-n", name, "addr", "add", f"{address}/30", "dev", peer)
        _ip("-n", name, "link", "set", peer, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "default", "via", gateway)
        return host

    def remove_host(self, host: NetnsHost) -> None:
        """Kill what runs in ``host`` and delete its namespace (its veth pair goes with it)."""
        host.kill()
        _ip("netns", "del", host.name, check=False)
        _ip("link", "del", host.veth, check=False)  # gone with the namespace, normally
        if host in self.hosts:
            self.hosts.remove(host)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in list(self.hosts):
            self.remove_host(host)
        _ip("addr", "del", f"{self.store_address}/32", "dev", "lo", check=False)


@contextmanager
def host_network() -> Iterator[HostNetwork]:
    """A :class:`HostNetwork`, closed (every host and process removed) at the end."""
    network = HostNetwork()
    try:
        yield network
    finally:
        network.close()


def leftovers(token: str, prefix: str) -> list[str]:
    """Namespaces, links and addresses of the run ``token`` still present (for tests)."""
    names = [p.name for p in NETNS_DIR.glob(f"olh-{token}-*")] if NETNS_DIR.is_dir() else []
    links = _ip("-o", "link", "show").stdout
    names += re.findall(rf"\d+: (olh{token}\w*)[@:]", links)
    if prefix in _used_prefixes():
        names.append(f"{prefix}.0/24")
    return names


def python_command(*args: str) -> list[str]:
    """``python -m olactors.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "olactors.cli", *args]


def tail(path: Path, size: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


__all__ = [
    "HostNetwork",
    "NetnsHost",
    "host_network",
    "leftovers",
    "python_command",
    "tail",
]
