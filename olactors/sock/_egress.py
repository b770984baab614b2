"""Configuring sandbox network namespaces with the host's own tools.

``ip`` (iproute2) makes the egress veths, ``nft``
(nftables) holds the worker's table of rules (see :mod:`olactors._network`
for the policy).  Nothing here touches a packet: the kernel does all of it.

Each egress namespace gets a veth pair, IPv4 only (no IPv6 link-local
address on either end; the rules drop IPv6 anyway): ``eth0`` inside (an address
``/32`` from ``sandbox.egress_subnet``, a default route to the gateway),
``<prefix><n>`` on the host (the gateway address ``/32``, a route to the
sandbox's address, the alias ``olactors-<worker id>`` recovery looks for).
Addresses are chosen under a host-wide lock file, among those no route of
the host uses yet, so workers sharing a host never pick the same one.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import trio

from .._errors import ConfigError, SandboxError
from .._network import EgressPolicy, iface_alias, iface_name, iface_prefix, table_name

log = logging.getLogger("olactors.sock.network")

#: Serialises the choice of sandbox addresses between the workers of a host.
ADDRESS_LOCK = "/run/olactors-egress.lock"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
ALIAS_PREFIX = "olactors-"


class NetworkSetupFailed(SandboxError):
    """``ip`` or ``nft`` refused to configure a sandbox network."""


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        package = {"nft": "nftables", "ip": "iproute2"}.get(name, "util-linux")
        raise ConfigError(
            f"network: egress needs the {name!r} command (Debian package {package}; "
            "scripts/bootstrap.sh installs it)"
        )
    return path


async def run_tool(
    argv: Sequence[str], stdin: str = "", pass_fds: Sequence[int] = (), what: str = ""
) -> str:
    """Run ``argv`` (its first item a tool name), return its stdout; raise
    :class:`NetworkSetupFailed` with its stderr when it fails."""
    command = [_tool(argv[0]), *argv[1:]]
    result = await trio.run_process(
        command,
        stdin=stdin.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        pass_fds=tuple(pass_fds),
    )
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip()
        raise NetworkSetupFailed(f"{what or argv[0]} failed (exit {result.returncode}): {err}")
    return result.stdout.decode(errors="replace")


async def inside(netns_fd: int, batch: str, what: str) -> None:
    """Run the ``ip -batch`` commands ``batch`` inside the namespace ``netns_fd``."""
    await run_tool(
        ["nsenter", f"--net=/proc/self/fd/{netns_fd}", _tool("ip"), "-batch", "-"],
        stdin=batch,
        pass_fds=(netns_fd,),
        what=what,
    )


def ensure_ip_forward() -> None:
    """NAT needs ``net.ipv4.ip_forward=1``: set it (logged) if it is not."""
    try:
        with open(IP_FORWARD) as f:
            if f.read().strip() == "1":
                return
        with open(IP_FORWARD, "w") as f:
            f.write("1\n")
    except OSError as exc:
        raise NetworkSetupFailed(
            f"network: egress needs net.ipv4.ip_forward=1 and it cannot be set: {exc}"
        ) from None
    log.warning(
        "set net.ipv4.ip_forward=1 (egress sandboxes reach the outside through NAT); "
        "it stays set when the worker stops"
    )


def _take_address_lock() -> int:
    """Wait for the host-wide lock on choosing sandbox addresses; its fd (close to release)."""
    try:
        fd = os.open(ADDRESS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise NetworkSetupFailed(f"cannot open {ADDRESS_LOCK}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ip_json(*args: str) -> list[dict]:
    done = subprocess.run([_tool("ip"), "-json", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetworkSetupFailed(f"ip -json {' '.join(args)} failed: {done.stderr.strip()}")
    result = json.loads(done.stdout or "[]")
    return result if isinstance(result, list) else []


#: The kernel's IPv4 main routing table, as this process's network namespace sees it.
ROUTE_TABLE = "/proc/self/net/route"


def _routed_addresses(policy: EgressPolicy) -> set[ipaddress.IPv4Address]:
    """Sandbox addresses of ``policy.subnet`` that a host route (``/32``, the
    main table, where the veth routes are) points at.  Read from the kernel's
    table directly: no process to start on a function's first call."""
    used = set()
    try:
        with open(ROUTE_TABLE) as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
    except OSError as exc:
        raise NetworkSetupFailed(f"cannot read {ROUTE_TABLE}: {exc}") from None
    for row in rows:
        if len(row) < 8 or row[7] != "FFFFFFFF":
            continue  # not a /32
        try:
            # Little-endian hex, as the kernel prints it.
            address = ipaddress.IPv4Address(bytes.fromhex(row[1])[::-1])
        except ValueError:
            continue
        if address in policy.subnet:
            used.add(address)
    return used


def _sandbox_links() -> dict[str, str]:
    """Host-side sandbox veths of every worker of this host: name -> alias."""
    return {
        link["ifname"]: link["ifalias"]
        for link in _ip_json("link", "show")
        if str(link.get("ifalias", "")).startswith(ALIAS_PREFIX)
    }


@dataclass(frozen=True, slots=True)
class Veth:
    """The host side of an egress namespace's veth pair."""

    name: str
    address: ipaddress.IPv4Address


class Egress:
    """The worker's egress machinery: its nftables table and its veths.

    The table is made with the first egress namespace (and ``ip_forward``
    set then), and removed by :meth:`aclose` and by :func:`recover`.  While
    it should exist, :meth:`guard` puts it back when something else removes
    it (``nft flush ruleset``, a host firewall's reload): without it a
    sandbox could reach the host's own services through its veth.
    """

    def __init__(self, worker_id: str, policy: EgressPolicy) -> None:
        self.worker_id = worker_id
        self.policy = policy
        self.table = table_name(worker_id)
        self._numbers = iter(range(1, 10**6))
        self._table_made = False
        self._table_ready = trio.Event()
        self._lock = trio.Lock()
        #: Times the table was found removed and loaded again (``/stats``).
        self.rules_restored = 0

    async def _load_rules(self) -> None:
        rules = self.policy.ruleset(self.table, iface_prefix(self.worker_id))
        await run_tool(["nft", "-f", "-"], stdin=rules, what="loading the egress rules")

    async def _ensure_table(self) -> None:
        async with self._lock:
            if self._table_made:
                return
            await trio.to_thread.run_sync(ensure_ip_forward)
            await self._load_rules()
            self._table_made = True
            self._table_ready.set()

    async def guard(self) -> None:
        """Load the rules again whenever the table is removed while the worker
        needs it; runs until cancelled (from the table's first use on, it
        follows ``nft monitor destroy tables``, which reports a removal within
        milliseconds)."""
        await self._table_ready.wait()
        while True:
            try:
                await self._follow_removals()
            except OSError as exc:  # nft cannot be started: try again
                log.error("cannot watch the egress rules: %s", exc)
            except NetworkSetupFailed as exc:
                log.error("the egress rules could not be loaded again: %s", exc.message)
            await trio.sleep(1.0)  # the monitor ended: start it again

    async def _follow_removals(self) -> None:
        removed = f"delete table inet {self.table}".encode()
        # SIGKILLed when the worker dies (it would otherwise wait for events forever).
        monitor = [_tool("setpriv"), "--pdeathsig", "KILL", _tool("nft"), "monitor"]
        monitor += ["destroy", "tables"]
        async with trio.open_nursery() as nursery:
            proc = await nursery.start(
                partial(
                    trio.run_process,
                    monitor,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
            )
            await self._restore_if_removed()  # a removal while nothing watched
            pending = b""
            assert proc.stdout is not None
            async for chunk in proc.stdout:
                *lines, pending = (pending + chunk).split(b"\n")
                if any(line.strip() == removed for line in lines):
                    await self._restore_if_removed()

    async def _restore_if_removed(self) -> None:
        async with self._lock:
            if not self._table_made:  # the worker removed it (shutting down)
                return
            listed = await trio.run_process(
                [_tool("nft"), "list", "table", "inet", self.table],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if listed.returncode == 0:  # still there (our own reload's delete-and-make)
                return
            log.error(
                "the egress rules (nftables table inet %s) were removed, e.g. by "
                "`nft flush ruleset` or a firewall reload: loading them again",
                self.table,
            )
            await self._load_rules()
            self.rules_restored += 1

    async def attach(self, netns_fd: int) -> Veth:
        """Connect the namespace ``netns_fd`` to the host (veth, addresses, routes)."""
        await self._ensure_table()
        name = iface_name(self.worker_id, next(self._numbers))
        gateway = self.policy.gateway
        lock_fd = await trio.to_thread.run_sync(_take_address_lock)
        try:
            address = self.policy.pick_address(
                await trio.to_thread.run_sync(_routed_addresses, self.policy)
            )
            if address is None:
                raise NetworkSetupFailed(
                    f"sandbox.egress_subnet {self.policy.subnet} has no free address left"
                )
            host_side = (
                f"link add {name} type veth peer name eth0 netns /proc/self/fd/{netns_fd}\n"
                f"link set dev {name} alias {iface_alias(self.worker_id)}\n"
                f"link set dev {name} addrgenmode none\n"  # no IPv6 link-local address
                f"addr add {gateway}/32 dev {name}\n"
                f"link set dev {name} up\n"
                f"route add {address}/32 dev {name} src {gateway}\n"
            )
            try:
                await run_tool(
                    ["ip", "-batch", "-"], host_side, (netns_fd,), "making an egress veth"
                )
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.detach(Veth(name, address), missing_ok=True)
                raise
        finally:
            os.close(lock_fd)
        veth = Veth(name, address)
        try:
            await inside(
                netns_fd,
                f"addr add {address}/32 dev eth0\n"
                "link set dev eth0 addrgenmode none\n"  # IPv4 only
                "link set eth0 up\n"
                f"route add {gateway}/32 dev eth0 scope link\n"
                f"route add default via {gateway} dev eth0 src {address}\n",
                "configuring an egress namespace",
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.detach(veth)
            raise
        return veth

    async def detach(self, veth: Veth, *, missing_ok: bool = False) -> None:
        """Delete the veth pair (its address and route go with it)."""
        try:
            await run_tool(["ip", "link", "del", "dev", veth.name], what=f"deleting {veth.name}")
        except NetworkSetupFailed:
            if not missing_ok:
                raise

    async def aclose(self) -> None:
        """Remove the worker's table (the veths go with their namespaces)."""
        async with self._lock:
            if self._table_made:
                self._table_made = False
                await run_tool(
                    ["nft", "delete", "table", "inet", self.table], what="removing rules"
                )


def check_subnet_free(policy: EgressPolicy) -> None:
    """Refuse an egress subnet that a host network other than sandbox veths uses."""
    veths = _sandbox_links()
    for route in _ip_json("-4", "route", "show", "table", "main"):
        dev = route.get("dev", "")
        try:
            net = ipaddress.IPv4Network(route.get("dst", ""), strict=False)
        except ValueError:
            continue
        if net.overlaps(policy.subnet) and dev not in veths:
            raise ConfigError(
                f"sandbox.egress_subnet {policy.subnet} overlaps the host's route to {net} "
                f"(dev {dev}); choose a range the host does not use"
            )


def worker_table_exists(worker_id: str) -> bool:
    """Does the worker's table exist?  (False, logged, when nft cannot list tables.)"""
    done = subprocess.run(
        [_tool("nft"), "-json", "list", "tables", "inet"], capture_output=True, text=True
    )
    if done.returncode != 0:
        log.warning("nft cannot list tables: %s", done.stderr.strip())
        return False
    wanted = table_name(worker_id)
    listed = json.loads(done.stdout or "{}").get("nftables", [])
    return any(item.get("table", {}).get("name") == wanted for item in listed)


async def recover(worker_id: str) -> list[str]:
    """Remove the table and veths a dead worker ``worker_id`` left; what was done.

    Its veths normally vanish with its namespaces (the kernel deletes a veth
    pair when either end's namespace goes); one still being deleted is fine.
    """
    done: list[str] = []
    if shutil.which("nft") is not None and await trio.to_thread.run_sync(
        worker_table_exists, worker_id
    ):
        await run_tool(["nft", "delete", "table", "inet", table_name(worker_id)])
        done.append(f"removed nftables table inet {table_name(worker_id)}")
    if shutil.which("ip") is None:
        return done
    alias = iface_alias(worker_id)
    links = await trio.to_thread.run_sync(_sandbox_links)
    for name in [n for n, a in links.items() if a == alias]:
        try:
            await run_tool(["ip", "link", "del", "dev", name], what=f"deleting {name}")
            done.append(f"removed veth {name}")
        except NetworkSetupFailed as exc:
            log.info("veth %s: %s (gone with its namespace)", name, exc.message)
    return done
