"""A whole cluster on one machine: workers in network-namespace hosts, nginx, HAProxy.

:func:`open_testbed` builds what the cluster docs describe, with the real
programs and the project's own generated configs:

* a :class:`~.netns.HostNetwork` and one worker per host (``olactors
  serve``, :mod:`.workers`), all polling one code store;
* the code store: Debian's nginx running ``olactors cluster nginx-config``'s
  config on the network's store address (publishing allowed from this host
  only);
* the balancer: Debian's HAProxy running ``olactors cluster
  haproxy-config``'s config, listening on the store address too, with its
  runtime API socket in the work dir.

Everything listens only on addresses the network created.  At the end the
balancer, nginx and every worker are stopped (by pid) and the hosts removed.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from .._balancing import HashRing, Server
from .._errors import OlactorsError
from ..cluster.haproxy import (
    BACKEND,
    Address,
    Balance,
    HaproxySettings,
    add_server_commands,
    render_haproxy_config,
    server_ids,
)
from ..cluster.nginx import NginxSettings, render_nginx_config
from ..cluster.publish import open_store, publish
from ..registry import pack_function_dir
from ..serve import ADMIN_SOCKET
from .balancer import HAProxy, running_haproxy
from .netns import HostNetwork, host_network, tail
from .workers import HostedWorker, start_worker

STORE_PORT = 8780
BALANCER_PORT = 8781
MAX_CODE_BYTES = 64 << 20


@dataclass
class LocalCluster:
    net: HostNetwork
    work: Path
    settings: list[str]
    balance: Balance
    workers: list[HostedWorker]
    haproxy: HAProxy
    ids: dict[str, int] = field(default_factory=dict)  # worker address -> HAProxy server id

    @property
    def store_url(self) -> str:
        return f"http://{self.net.store_address}:{STORE_PORT}/"

    @property
    def balancer_url(self) -> str:
        return f"http://{self.net.store_address}:{BALANCER_PORT}"

    def publish(self, name: str, directory: Path) -> None:
        """Pack ``directory`` and publish it as ``name`` (blocking: call in a thread)."""
        publish(
            open_store(self.store_url, None), name, pack_function_dir(directory, MAX_CODE_BYTES)
        )

    async def publish_async(self, name: str, directory: Path) -> None:
        await trio.to_thread.run_sync(self.publish, name, directory)

    def ring(self, workers: list[HostedWorker] | None = None) -> HashRing:
        """The ring HAProxy routes by, over ``workers`` (default: all of them)."""
        chosen = self.workers if workers is None else workers
        return HashRing(Server(self.ids[w.address]) for w in chosen)

    def worker_by_id(self, puid: int) -> HostedWorker:
        return next(w for w in self.workers if self.ids[w.address] == puid)

    async def admin(self, worker: HostedWorker, method: str, path: str, **kw: Any) -> Any:
        """A call on ``worker``'s admin socket; its JSON answer."""
        transport = httpx.AsyncHTTPTransport(uds=str(worker.directory / ADMIN_SOCKET))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://olactors-admin", timeout=30.0
        ) as client:
            response = await client.request(method, path, **kw)
        if not response.is_success:
            raise OlactorsError(f"admin {method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    async def invocations(self, worker: HostedWorker) -> dict[str, int]:
        """Answered calls per function on ``worker`` (its own /stats)."""
        stats = await self.admin(worker, "GET", "/stats")
        return {name: f["invocations"] for name, f in stats["functions"].items()}

    async def add_worker(self) -> HostedWorker:
        """A new host and worker, added to the running HAProxy through its runtime API."""
        host = self.net.add_host()
        worker = await start_worker(host, self.work / f"worker{host.index}", self.settings)
        self.workers.append(worker)
        address = Address(host.address, worker.port)
        self.ids = _ids(self.workers)
        for command in add_server_commands(address, self.ids[worker.address]):
            said = await self.haproxy.command(command)
            if said.strip() and "New server registered" not in said:
                raise OlactorsError(f"haproxy refused {command!r}: {said.strip()}")
        return worker

    async def wait_servers_up(self, count: int, timeout_s: float = 20.0) -> None:
        """Until HAProxy sees ``count`` servers up (its health checks passed)."""
        with trio.fail_after(timeout_s):
            while True:
                states = await self.haproxy.servers(BACKEND)
                if sum(s.up for s in states.values()) == count:
                    return
                await trio.sleep(0.1)

    async def wait_server_down(self, worker: HostedWorker, timeout_s: float = 20.0) -> None:
        name = f"w-{worker.host.address}-{worker.port}"
        with trio.fail_after(timeout_s):
            while (await self.haproxy.servers(BACKEND))[name].up:
                await trio.sleep(0.1)


def _ids(workers: list[HostedWorker]) -> dict[str, int]:
    ids = server_ids([Address(w.host.address, w.port) for w in workers])
    return {str(address): puid for address, puid in ids.items()}


@asynccontextmanager
async def _nginx(net: HostNetwork, work: Path) -> AsyncIterator[None]:
    root = work / "store"
    root.mkdir(parents=True, exist_ok=True)
    config = work / "nginx.conf"
    settings = NginxSettings(
        listen=Address(net.store_address, STORE_PORT),
        root=root,
        allow=[f"{net.store_address}/32", "127.0.0.1/32"],
    )
    config.write_text(render_nginx_config(settings))
    log = work / "nginx.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            ["nginx", "-c", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            with trio.fail_after(15):
                while True:
                    if process.poll() is not None:
                        raise OlactorsError(f"nginx exited: {tail(log)}")
                    try:
                        await client.get(f"http://{net.store_address}:{STORE_PORT}/")
                        break
                    except httpx.HTTPError:
                        await trio.sleep(0.05)
        yield
    finally:
        # SIGTERM: the master stops its worker processes (a SIGKILLed master
        # leaves them running, still listening).
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def worker_settings(store_url: str, extra: list[str]) -> list[str]:
    """Every worker's overrides: the shared store, and a pool that fits several here."""
    return [
        f"registry.location={store_url}",
        "memory.pool_mb=2048",
        "sandbox.cgroup_pool_size=4",
        *extra,
    ]


@asynccontextmanager
async def open_testbed(
    work: Path,
    workers: int,
    extra_settings: list[str] | None = None,
    *,
    balance: Balance = Balance.HASH,
    check_interval_s: float = 0.5,
) -> AsyncIterator[LocalCluster]:
    """``workers`` workers behind HAProxy (``balance``), with the nginx code store."""
    work.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        net = stack.enter_context(host_network())
        await stack.enter_async_context(_nginx(net, work))
        store_url = f"http://{net.store_address}:{STORE_PORT}/"
        settings = worker_settings(store_url, extra_settings or [])
        hosts = [net.add_host() for _ in range(workers)]
        started: list[HostedWorker] = []
        try:
            async with trio.open_nursery() as nursery:

                async def start(index: int) -> None:
                    host = hosts[index]
                    w = await start_worker(host, work / f"worker{host.index}", settings)
                    started.append(w)

                for index in range(workers):
                    nursery.start_soon(start, index)
            started.sort(key=lambda w: w.host.index)
            socket_path = work / "haproxy.sock"
            config = work / "haproxy.cfg"
            config.write_text(
                render_haproxy_config(
                    HaproxySettings(
                        bind=Address(net.store_address, BALANCER_PORT),
                        workers=[Address(w.host.address, w.port) for w in started],
                        balance=balance,
                        runtime_socket=socket_path,
                        check_interval_s=check_interval_s,
                    )
                )
            )
            haproxy = await stack.enter_async_context(
                running_haproxy(
                    config,
                    listening=(net.store_address, BALANCER_PORT),
                    admin_socket=socket_path,
                    log=work / "haproxy.log",
                )
            )
            bed = LocalCluster(net, work, settings, balance, started, haproxy, _ids(started))
            await bed.wait_servers_up(workers)
            yield bed
        finally:
            with trio.CancelScope(shield=True):
                for w in started:
                    await w.stop()
