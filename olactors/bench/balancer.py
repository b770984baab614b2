"""A real HAProxy for tests and benchmarks: start it from a config, use its runtime API, stop it.

Debian's ``haproxy`` package (2.6), installed by ``scripts/bootstrap.sh``,
runs in the foreground (``-db``) as a child of the caller, so it is stopped
by its pid and never outlives the block.  The config is checked first
(``haproxy -c``) so a bad one is a clear error, not a process that exits.
The runtime API is HAProxy's ``stats socket`` (``level admin``): one
command per connection, the answer read to EOF.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from .._errors import OlactorsError

HAPROXY = "haproxy"
START_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ServerState:
    """One line of ``show servers state``: a backend server as HAProxy sees it."""

    backend: str
    puid: int
    name: str
    address: str
    operational: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin: int  # bit flags: 0x01 forced maintenance, 0x08 forced drain, ...
    weight: int
    port: int

    @property
    def up(self) -> bool:
        return self.operational == 2


@dataclass
class HAProxy:
    process: trio.Process
    config: Path
    admin_socket: Path | None

    @property
    def pid(self) -> int:
        return self.process.pid

    async def command(self, line: str) -> str:
        """Run one runtime API command; returns its answer (HAProxy's text)."""
        if self.admin_socket is None:
            raise OlactorsError(f"{self.config} declares no admin stats socket")
        stream = await trio.open_unix_socket(str(self.admin_socket))
        async with stream:
            await stream.send_all(line.encode() + b"\n")
            chunks = []
            while data := await stream.receive_some(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    async def servers(self, backend: str) -> dict[str, ServerState]:
        """The backend's servers by name (``show servers state <backend>``)."""
        text = await self.command(f"show servers state {backend}")
        servers = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 19 or not fields[0].isdigit():
                continue  # the version line, the header, blank lines
            state = ServerState(
                backend=fields[1],
                puid=int(fields[2]),
                name=fields[3],
                address=fields[4],
                operational=int(fields[5]),
                admin=int(fields[6]),
                weight=int(fields[7]),
                port=int(fields[18]),
            )
            servers[state.name] = state
        return servers


def haproxy_path() -> str:
    path = shutil.which(HAPROXY) or shutil.which(HAPROXY, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise OlactorsError("haproxy is not installed (scripts/bootstrap.sh installs it)")
    return path


async def check_config(config: Path) -> None:
    """``haproxy -c``: raises :class:`OlactorsError` with HAProxy's own words."""
    done = await trio.run_process(
        [haproxy_path(), "-c", "-q", "-f", str(config)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if done.returncode != 0:
        said = (done.stdout + done.stderr).decode(errors="replace").strip()
        raise OlactorsError(f"haproxy refuses {config}: {said[-2000:]}")


async def _accepting(host: str, port: int, process: trio.Process) -> None:
    while True:
        if process.poll() is not None:
            raise OlactorsError(f"haproxy exited with {process.returncode} before listening")
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, None):
                raise
            await trio.sleep(0.02)
            continue
        await stream.aclose()
        return


@asynccontextmanager
async def running_haproxy(
    config: Path, *, listening: tuple[str, int], admin_socket: Path | None = None, log: Path
) -> AsyncIterator[HAProxy]:
    """HAProxy running ``config`` until the block ends (killed and reaped by pid).

    Ready when ``listening`` (its frontend's address) accepts connections;
    HAProxy's own output goes to ``log``.
    """
    await check_config(config)
    with open(log, "ab") as out:
        process = await trio.lowlevel.open_process(
            [haproxy_path(), "-f", str(config), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with trio.fail_after(START_TIMEOUT_S):
            await _accepting(*listening, process)
        yield HAProxy(process, config, admin_socket)
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.kill()
            await process.wait()
