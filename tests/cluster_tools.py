"""Running the real HAProxy and nginx from generated configs in tests.

``running(argv, port)`` starts a program in the foreground (its own process
group), waits until it listens on 127.0.0.1:``port`` and, on exit, stops it
(SIGTERM, then SIGKILL) and reaps it; its output is kept in a log file the
failure message quotes.  ``free_port()`` asks the kernel for an unused port.
``ServeProcess`` runs `olactors serve` on a given port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT_S = 10.0
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def runtime_api(socket_path: Path, command: str) -> str:
    """One HAProxy runtime API command, its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(socket_path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


@contextlib.contextmanager
def running(argv: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{argv} did not start listening on {port} "
                    f"(exit {proc.poll()}): {log.read_text(errors='replace')}"
                )
            time.sleep(0.05)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's group, then SIGKILL after 5 s; always reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def haproxy(config: Path, port: int, log: Path) -> contextlib.AbstractContextManager:
    """HAProxy started from ``config`` as it is (``haproxy -f FILE``)."""
    return running([HAPROXY, "-f", str(config)], port, log)


def nginx(config: Path, port: int, log: Path) -> contextlib.AbstractContextManager:
    """nginx started from ``config`` as it is (``nginx -c FILE``)."""
    return running([NGINX, "-c", str(config)], port, log)


class ServeProcess:
    """`olactors serve` in a subprocess on a given port (a worker of a cluster
    under test), logging to a file; :meth:`stop` SIGTERMs it and waits."""

    def __init__(self, path: Path, port: int, log: Path, *settings: str) -> None:
        self.path = path
        self.port = port
        self.log = log
        self.public = f"http://127.0.0.1:{port}"
        self.address = f"127.0.0.1:{port}"
        argv = [sys.executable, "-m", "olactors.cli", "serve", "--path", str(path)]
        for setting in ("server.host=127.0.0.1", f"server.port={port}", *settings):
            argv += ["--set", setting]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_serving(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"serve exited: {self.tail()}"
            assert time.monotonic() < deadline, f"not serving: {self.tail()}"
            try:
                if httpx.get(f"{self.public}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def admin(self, method: str, route: str) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.path / "admin.sock"))
        with httpx.Client(transport=transport, timeout=30) as client:
            return client.request(method, f"http://admin{route}")

    def stats(self) -> dict:
        answer = self.admin("GET", "/stats")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
