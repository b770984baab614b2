"""Running the real HAProxy and nginx from generated configs in tests.

``running(argv, port)`` starts a program in the foreground (its own process
group), waits until it listens on 127.0.0.1:``port`` and, on exit, stops it
(SIGTERM, then SIGKILL) and reaps it; its output is kept in a log file the
failure message quotes.  ``free_port()`` asks the kernel for an unused port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT_S = 10.0


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
