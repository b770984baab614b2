"""Sandbox runtime: leaf HTTP server or zygote fork server (stdlib only).

Started as ``python -I -S /runtime/server.py '<json config>'`` with fd 3 being
a SOCK_SEQPACKET socket on which the runtime reports ``{"ready": true}`` once
its own socket listens.  Children forked by a zygote report on the fork
request's connection instead, so in both cases "ready" means "listening".

Config keys: ``mode`` ("leaf" | "zygote"), ``entry`` ("module:attr" for
leaves, default "f:f"), ``imports`` (modules a zygote pre-imports).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
HANDLER_DIR = "/handler"
LEAF_SOCKET = "/host/ol.sock"
ZYGOTE_SOCKET = "/host/zygote.sock"
LEAF_SECCOMP = b""  # set in zygotes: the filter their leaf children install
MAX_HEADER_BYTES = 65536
MAX_FORK_MESSAGE = 1 << 20
MAX_FDS = 16
REQUEST_TIMEOUT_S = 10.0
HANDOVER_TIMEOUT_S = 1.0


# ----------------------------------------------------------------- leaf mode
class Request:
    __slots__ = ("method", "target", "headers", "body")

    def __init__(self, method: str, target: str, headers: list, body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body


def _json_response(status: int, obj: object) -> tuple:
    body = json.dumps(obj).encode()
    return status, [("content-type", "application/json")], body


def load_entry(spec: str):
    """Import the handler once; an import failure is served as a 500 on every call."""
    if HANDLER_DIR not in sys.path:
        sys.path.insert(0, HANDLER_DIR)
    sys.path_importer_cache.pop(HANDLER_DIR, None)
    module_name, _, attr = spec.partition(":")
    try:
        module = __import__(module_name, fromlist=["_"])
        func = getattr(module, attr or "f")
    except BaseException as exc:  # noqa: BLE001 - reported to the caller
        import traceback

        failure = {
            "error": "handler_import_failed",
            "message": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
        return lambda request: _json_response(500, failure)

    def call(request: Request) -> tuple:
        if request.body:
            try:
                event = json.loads(request.body)
            except ValueError as exc:
                return _json_response(400, {"error": "bad_json", "message": str(exc)})
        else:
            event = None
        try:
            result = func(event)
            return _json_response(200, result)
        except BaseException as exc:  # noqa: BLE001 - the sandbox survives handler errors
            import traceback

            return _json_response(
                500,
                {
                    "error": "handler_exception",
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "traceback": traceback.format_exc(),
                },
            )

    return call


def parse_request(buf: bytearray) -> Request | None:
    """Take one complete request off the front of ``buf``; None if incomplete.

    Raises ValueError for a malformed or oversized request.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEADER_BYTES:
            raise ValueError("request header too large")
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = []
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            raise ValueError("chunked requests are not supported")
        headers.append((name, value))
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return Request(method, target, headers, body)


_REASONS = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}


def _write_response(conn: socket.socket, status: int, headers: list, body: bytes) -> None:
    out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"]
    for name, value in headers:
        out.append(f"{name}: {value}\r\n")
    out.append(f"content-length: {len(body)}\r\n\r\n")
    conn.sendall("".join(out).encode("latin-1") + body)


def _serve_buffered(conn: socket.socket, buf: bytearray, app) -> bool:
    """Answer every complete request in ``buf``; False when the connection must close."""
    while True:
        try:
            request = parse_request(buf)
        except (ValueError, UnicodeError) as exc:
            _write_response(
                conn, *_json_response(400, {"error": "bad_request", "message": str(exc)})
            )
            return False
        if request is None:
            return True
        status, headers, body = app(request)
        sys.stdout.flush()
        sys.stderr.flush()
        _write_response(conn, status, headers, body)


def serve_leaf(listener: socket.socket, app) -> None:
    """Serve invocations on any number of keep-alive connections, one request at a time."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _ in selector.select():
            if key.data is None:
                conn, _ = listener.accept()
                selector.register(conn, selectors.EVENT_READ, bytearray())
                continue
            conn, buf = key.fileobj, key.data
            try:
                chunk = conn.recv(65536)
                keep = bool(chunk)
                if keep:
                    buf += chunk
                    keep = _serve_buffered(conn, buf, app)
            except OSError:
                keep = False
            if not keep:
                selector.unregister(conn)
                conn.close()


# --------------------------------------------------------------- zygote mode
def _reap_children(_signum=None, _frame=None) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_child(conn: socket.socket, fds: list) -> None:
    """In a cloned child: enter the child's cgroups, root and identity, then run.

    The request (hostname, identity, environment, config) is the second
    message on ``conn``, read here by the child alone: the zygote only ever
    sees the fds.  Nothing of the function runs before this completes; any
    failure exits the child, which the worker sees as the connection closing
    without "ready".
    """
    import _proc

    try:
        conn.settimeout(REQUEST_TIMEOUT_S)
        request = json.loads(conn.recv(MAX_FORK_MESSAGE))
        conn.settimeout(None)
        root_fd, log_fd, *cgroup_fds = fds
        for fd in cgroup_fds:
            os.write(fd, b"0")
            os.close(fd)
        _proc.chroot_to_fd(root_fd)
        os.close(root_fd)
        _proc.sethostname(request["hostname"])
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        keep = conn.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, 65536)
        os.environ.clear()
        os.environ.update(request.get("env", {}))
        if "ssl" in sys.modules:
            # OpenSSL detects forks by pid, and every sandbox is pid 1: reseed
            # so siblings never share random streams.
            sys.modules["ssl"].RAND_add(os.urandom(48), 48.0)
        config = request["config"]
        if config["mode"] == "leaf":
            import _linux

            _proc.drop_privileges(request["uid"], request["gid"])
            _proc.set_no_new_privs()
            if LEAF_SECCOMP:
                _linux.install_seccomp(LEAF_SECCOMP)
        run(config, conn)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
    os._exit(1)


class Spare:
    """A child cloned ahead of time, waiting on ``channel`` for its fork request.

    Cloning, CPython's after-fork work and the first copy-on-write faults then
    happen between requests instead of on a request's critical path.  The
    spare sits in the zygote's cgroup and runs no function code until it has
    entered the cgroups, root and identity it is handed.
    """

    def __init__(self, listener: socket.socket) -> None:
        import _proc

        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = _proc.clone_into_namespaces()
        if pid == 0:
            parent_end.close()
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _spare_wait(child_end)
        child_end.close()
        self.pid = pid
        self.channel = parent_end

    def hand_over(self, fds: list, conn: socket.socket) -> bool:
        """Give the spare its fds and connection; False if it is gone (clone instead).

        The spare acknowledges what it received: a spare that was dying when
        the message went out (killed but not yet exited) would otherwise take
        the request down with it.
        """
        try:
            socket.send_fds(self.channel, [b"fork"], [*fds, conn.fileno()])
            self.channel.settimeout(HANDOVER_TIMEOUT_S)
            return self.channel.recv(1) == b"1"
        except OSError:
            return False
        finally:
            self.channel.close()


def _new_spare(listener: socket.socket) -> Spare | None:
    """A new spare, or None when cloning fails now (e.g. at the pids limit):
    requests then clone on demand, and the zygote lives on."""
    try:
        return Spare(listener)
    except OSError as exc:
        print(f"zygote: no spare child: {exc}", file=sys.stderr)
        return None


def _spare_wait(channel: socket.socket) -> None:
    try:
        message, fds, _flags, _addr = socket.recv_fds(channel, MAX_FORK_MESSAGE, MAX_FDS + 1)
    except OSError:
        os._exit(0)
    if not message or not fds:
        os._exit(0)  # the zygote closed the channel: nothing to become
    try:
        channel.send(b"1")  # taken: the zygote now reports this pid
    except OSError:
        os._exit(0)  # the zygote gave up on us and cloned instead
    channel.close()
    conn = socket.socket(fileno=fds.pop())
    _become_child(conn, fds)


def serve_zygote(listener: socket.socket) -> None:
    """Answer fork requests (one SEQPACKET connection each), from a spare when one is ready."""
    import _proc

    signal.signal(signal.SIGCHLD, _reap_children)
    spare = _new_spare(listener)
    while True:
        conn, _ = listener.accept()
        fds: list = []
        try:
            msg, fds, _flags, _addr = socket.recv_fds(conn, 64, MAX_FDS)
            if msg != b"fork":
                raise ValueError("expected a fork request")
            if spare is not None and spare.hand_over(fds, conn):
                pid = spare.pid
            else:
                pid = _proc.clone_into_namespaces()
                if pid == 0:
                    listener.close()
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    _become_child(conn, fds)
            spare = None
            conn.send(json.dumps({"forked": pid}).encode())
        except Exception as exc:  # noqa: BLE001 - a bad request must not kill the zygote
            try:
                conn.send(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
                # Unread messages would make the close a reset that hides the answer.
                conn.settimeout(0.1)
                while conn.recv(MAX_FORK_MESSAGE):
                    pass
            except OSError:
                pass
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()
        if spare is None:
            spare = _new_spare(listener)


# ------------------------------------------------------------------- common
def _listen(path: str, kind: int) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, kind)
    listener.bind(path)
    listener.listen(128)
    return listener


def run(config: dict, ready: socket.socket) -> None:
    """Become a leaf or zygote, report ready on ``ready`` once listening, serve forever."""
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    sys.dont_write_bytecode = True
    if config["mode"] == "leaf":
        app = load_entry(config.get("entry") or "f:f")
        listener = _listen(LEAF_SOCKET, socket.SOCK_STREAM)
        ready.send(b'{"ready": true}')
        ready.close()
        serve_leaf(listener, app)
    else:
        # Everything a forked child needs is prepared here, once, not per fork.
        import base64
        import gc
        import traceback  # noqa: F401

        import _linux  # noqa: F401
        import _proc  # noqa: F401

        global LEAF_SECCOMP
        LEAF_SECCOMP = base64.b64decode(config.get("leaf_seccomp", ""))
        for name in config.get("imports", ()):
            __import__(name)
        compile("def _warm(event):\n    return event\n", "<warm-up>", "exec")
        # Freeze what exists now so the collector never touches (and copies)
        # the zygote's pages in its children.
        gc.collect()
        gc.freeze()
        listener = _listen(ZYGOTE_SOCKET, socket.SOCK_SEQPACKET)
        ready.send(b'{"ready": true}')
        ready.close()
        serve_zygote(listener)


def main() -> None:
    sys.path.insert(0, RUNTIME_DIR)
    config = json.loads(sys.argv[1])
    ready = socket.socket(fileno=3)
    run(config, ready)


if __name__ == "__main__":
    main()
