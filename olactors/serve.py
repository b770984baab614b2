"""Serving a worker: the public app on TCP and the admin app on ``<worker>/admin.sock``.

:func:`serve` fits in a nursery (``await nursery.start(serve, config, path)``)
and reports the endpoints it listens on.  It binds both sockets itself (so
port 0 works and the admin socket's mode is set before anyone can connect),
runs one hypercorn server per socket in one nursery with a shared shutdown
trigger.  Shutdown has one deadline, fixed when it is requested:
``server.shutdown_timeout_s`` later (a
:class:`~olactors._shutdown.ShutdownDeadline`).  Until then:

1. the worker refuses new invocations (``503 shutting_down``), hypercorn stops
   accepting connections and closes idle keep-alive ones;
2. in-flight requests may finish, and queued calls are served;
3. the worker is closed: actors stop, instances stop.

At the deadline whatever is left is cancelled (in-flight requests see their
connection closed) and every sandbox is destroyed (cleanup, bounded by the
pool's own kill timeouts, not by the deadline).  Last, ``admin.sock`` and
``run/endpoints.json`` are removed.

Shutdown starts on SIGINT/SIGTERM (``handle_signals=True``, main thread only,
as the CLI runs it) or when the ``shutdown`` event is set; a second request
while shutting down is only logged.  With ``server.drain_s`` > 0 the first
signal drains first (:meth:`~olactors.worker.Worker.drain`: calls are still
served, ``/healthz`` answers 503 so a load balancer stops sending) for that
long, then shuts down; a second signal during the drain shuts down at once.
Cancelling ``serve`` instead skips the grace period.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import stat
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from ._config import Config
from ._errors import OlactorsError
from ._files import write_atomically
from ._groups import lone_errors_unwrapped
from .http import create_admin_app, create_public_app
from .sock import AlreadyRunning
from .worker import open_worker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from quart_trio import QuartTrio

    from .sock import SandboxPool
    from .worker import Worker

log = logging.getLogger("olactors.serve")

ADMIN_SOCKET = "admin.sock"
ENDPOINTS_FILE = Path("run") / "endpoints.json"
LISTEN_BACKLOG = 1024
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Shutdown:
    """The one shutdown request of a serve: fixes the deadline, sets ``requested``,
    tells the worker and puts the deadline on the servers' cancel scope."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.requested = trio.Event()
        self.deadline = math.inf
        self.worker: Worker | None = None
        self.scopes: list[trio.CancelScope] = []
        self.draining = False

    def request(self, why: str) -> None:
        if self.requested.is_set():
            log.warning("already shutting down (%s)", why)
            return
        self.deadline = trio.current_time() + self.timeout_s
        log.info("shutting down (%s); everything stops within %.1f s", why, self.timeout_s)
        self.requested.set()
        if self.worker is not None:
            self.worker.begin_shutdown(self.deadline)
        for scope in self.scopes:
            scope.deadline = self.deadline

    def attach(self, worker: Worker) -> None:
        self.worker = worker
        if self.requested.is_set():
            worker.begin_shutdown(self.deadline)

    def bound(self, scope: trio.CancelScope) -> None:
        """``scope`` is cancelled at the deadline (from when shutdown is requested)."""
        self.scopes.append(scope)
        scope.deadline = self.deadline


async def serve(
    config: Config,
    worker_dir: Path,
    *,
    handle_signals: bool = False,
    shutdown: trio.Event | None = None,
    pool: SandboxPool | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the worker in ``worker_dir`` until shut down (see the module docstring).

    ``task_status.started`` receives the endpoints dict also written to
    ``<worker>/run/endpoints.json``: ``{"public": "http://host:port",
    "admin": "<path of admin.sock>", "pid": <this process>}``.  ``pool`` is
    passed to :func:`olactors.worker.open_worker` (None: the real SOCK pool).
    Raises :class:`AlreadyRunning` if another worker answers on the admin socket
    or holds the worker dir's lock (see :class:`olactors.sock.WorkerDirLock`).
    """
    worker_dir = worker_dir.resolve()
    admin_path = worker_dir / ADMIN_SOCKET
    refuse_if_running(admin_path)
    control = _Shutdown(config.server.shutdown_timeout_s)
    with lone_errors_unwrapped():
        await _serve_until_stopped(
            config, worker_dir, admin_path, control, handle_signals, shutdown, pool, task_status
        )


async def _serve_until_stopped(
    config: Config,
    worker_dir: Path,
    admin_path: Path,
    control: _Shutdown,
    handle_signals: bool,
    shutdown: trio.Event | None,
    pool: SandboxPool | None,
    task_status: trio.TaskStatus[dict[str, Any]],
) -> None:
    with ExitStack() as stack:
        signals = None
        if handle_signals:
            signals = stack.enter_context(trio.open_signal_receiver(*SHUTDOWN_SIGNALS))
        async with trio.open_nursery() as watchers:
            if signals is not None:
                watchers.start_soon(_watch_signals, signals, control, config.server.drain_s)
            if shutdown is not None:
                watchers.start_soon(_watch_event, shutdown, control)
            try:
                await _serve_worker(config, worker_dir, admin_path, control, pool, task_status)
            finally:
                watchers.cancel_scope.cancel()


async def _serve_worker(
    config: Config,
    worker_dir: Path,
    admin_path: Path,
    control: _Shutdown,
    pool: SandboxPool | None,
    task_status: trio.TaskStatus[dict[str, Any]],
) -> None:
    endpoints_path = worker_dir / ENDPOINTS_FILE
    async with open_worker(config, worker_dir, pool=pool) as worker:
        control.attach(worker)
        if control.requested.is_set():
            return
        public_sock = bind_tcp(config.server.host, config.server.port)
        try:
            admin_sock, admin_inode = bind_admin_socket(admin_path)
        except BaseException:
            public_sock.close()
            raise
        try:
            async with trio.open_nursery() as servers:
                control.bound(servers.cancel_scope)  # in-flight requests end by the deadline
                trigger = control.requested.wait
                await servers.start(
                    serve_app, create_public_app(worker), public_sock, config, trigger
                )
                await servers.start(
                    serve_app, create_admin_app(worker), admin_sock, config, trigger
                )
                endpoints = {
                    "public": public_url(public_sock),
                    "admin": str(admin_path),
                    "pid": os.getpid(),
                }
                write_json_atomically(endpoints_path, endpoints)
                log.info("serving %s (admin: %s)", endpoints["public"], admin_path)
                task_status.started(endpoints)
        finally:
            for sock in (public_sock, admin_sock):
                stop_listening(sock)
            endpoints_path.unlink(missing_ok=True)
            remove_socket_file(admin_path, admin_inode)
    log.info("worker stopped")


async def serve_app(
    app: QuartTrio,
    sock: socket.socket,
    config: Config,
    trigger: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One hypercorn server on an already listening ``sock`` (a dup of it, owned by hypercorn).

    After ``trigger`` returns it waits for in-flight requests without a limit
    of its own: the caller's cancel scope carries the shutdown deadline."""
    hconfig = HypercornConfig()
    hconfig.bind = [f"fd://{os.dup(sock.fileno())}"]
    hconfig.accesslog = None  # the apps log one line per request themselves
    hconfig.errorlog = logging.getLogger("olactors.hypercorn")
    # No grace of hypercorn's own: the caller cancels at the one shutdown deadline.
    hconfig.graceful_timeout = math.inf
    hconfig.include_server_header = False
    hconfig.backlog = LISTEN_BACKLOG
    await hypercorn_serve(app, hconfig, shutdown_trigger=trigger, task_status=task_status)


async def _watch_signals(signals: Any, control: _Shutdown, drain_s: float) -> None:
    async with trio.open_nursery() as nursery:
        async for signum in signals:
            why = signal.Signals(signum).name
            worker = control.worker
            if drain_s > 0 and worker is not None and not control.draining:
                control.draining = True
                nursery.start_soon(_drain_then_shut_down, worker, control, drain_s, why)
            else:
                control.request(why)


async def _drain_then_shut_down(
    worker: Worker, control: _Shutdown, drain_s: float, why: str
) -> None:
    log.info("%s: draining for %.1f s before shutting down", why, drain_s)
    worker.drain()
    await trio.sleep(drain_s)
    control.request(f"{why}, after draining")


async def _watch_event(event: trio.Event, control: _Shutdown) -> None:
    await event.wait()
    control.request("shutdown requested")


# ------------------------------------------------------------------ sockets
def refuse_if_running(admin_path: Path) -> None:
    """Raise AlreadyRunning if a worker answers on ``admin_path``; a stale socket stays
    for :func:`bind_admin_socket` to replace."""
    try:
        mode = os.lstat(admin_path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OlactorsError(f"{admin_path} exists and is not a socket; remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(admin_path))
    except OSError:
        return  # nobody listening: a dead worker's leftover
    finally:
        probe.close()
    raise AlreadyRunning(f"a worker is already running at {admin_path.parent}")


def bind_tcp(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_admin_socket(path: Path) -> tuple[socket.socket, int]:
    """Listen on ``path`` with mode 0600 (set before listen, so before anyone can connect,
    whatever the umask).  Returns the socket and the file's inode number."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock.bind(str(path))
        os.chmod(path, 0o600)
        inode = os.lstat(path).st_ino
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock, inode


def stop_listening(sock: socket.socket) -> None:
    """Stop listening now, whoever else holds a descriptor of ``sock`` (hypercorn's dup)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def remove_socket_file(path: Path, inode: int) -> None:
    """Remove ``path`` if it is still the socket this process bound."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
        os.unlink(path)


def public_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def write_json_atomically(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_endpoints(worker_dir: Path) -> dict[str, Any] | None:
    """The endpoints a running worker wrote, or None if there are none."""
    try:
        data = json.loads((worker_dir / ENDPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
