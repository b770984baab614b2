"""Real workers in network-namespace hosts (:mod:`.netns`): started, awaited, stopped.

Each worker is ``olactors serve`` in its own host, listening on the host's
address, with its own worker dir and ``--set`` overrides (a memory pool
small enough for several on one machine, the shared code store as
``registry.location``).  It is ready when its ``/healthz`` answers 200
from this host's side.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from .._errors import OlactorsError
from .netns import NetnsHost, python_command, tail

WORKER_PORT = 5000
READY_TIMEOUT_S = 90.0


@dataclass
class HostedWorker:
    host: NetnsHost
    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"{self.host.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.process.send_signal(sig)

    async def wait(self) -> int:
        """Wait for the worker process to exit (without blocking trio)."""
        while self.process.poll() is None:
            await trio.sleep(0.05)
        return self.process.returncode

    async def stop(self, timeout_s: float = 40.0) -> None:
        """SIGTERM (graceful: drain, then release every sandbox), SIGKILL if it lingers."""
        self.signal(signal.SIGTERM)
        with trio.move_on_after(timeout_s):
            await self.wait()
        if self.alive:
            self.signal(signal.SIGKILL)
            await self.wait()

    def cleanup(self) -> str:
        """``olactors cleanup`` for this worker dir (after a SIGKILL)."""
        done = subprocess.run(
            python_command("cleanup", "--path", str(self.directory)),
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout + done.stderr


async def start_worker(
    host: NetnsHost,
    directory: Path,
    settings: list[str],
    *,
    port: int = WORKER_PORT,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> HostedWorker:
    """``olactors serve`` in ``host`` on ``port``; returns once ``/healthz`` is 200."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory.parent / f"{directory.name}.log"
    overrides = [f"server.host={host.address}", f"server.port={port}", *settings]
    argv = python_command("serve", "--path", str(directory))
    for item in overrides:
        argv += ["--set", item]
    process = host.start(argv, log=log)
    worker = HostedWorker(host, directory, port, process, log)
    async with httpx.AsyncClient(timeout=2.0) as client:
        with trio.move_on_after(ready_timeout_s):
            while True:
                if not worker.alive:
                    raise OlactorsError(
                        f"worker in {host.name} exited with {process.returncode}: {tail(log)}"
                    )
                try:
                    response = await client.get(f"{worker.url}/healthz")
                    if response.status_code == 200:
                        return worker
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)
    worker.signal(signal.SIGKILL)
    raise OlactorsError(f"worker in {host.name} not ready in {ready_timeout_s} s: {tail(log)}")
