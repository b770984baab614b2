"""Sandbox runtime: leaf HTTP server or zygote fork server (stdlib only).

Started as ``python -I -S /runtime/server.py '<json config>'`` with fd 3 being
a SOCK_SEQPACKET socket on which the runtime reports its start.  Children
forked by a zygote report on the fork request's connection instead, first
``{"namespaces": true}`` (the worker then mounts the child's /proc and
answers ``{"proc": true}``, which the child awaits before any function or
package code runs).  A leaf
reports two phases, so the worker can tell whose fault a slow start is:
``{"started": true}`` once its own socket listens (the sandbox started: the
worker bounds this by ``sandbox.ready_timeout_s``), then, after importing the
function's code (the *init phase*, bounded by the function's ``limits.init_s``),
``{"ready": true}``.  A zygote reports ``{"ready": true}`` once listening.

Config keys: ``mode`` ("leaf" | "zygote"), ``entry`` (leaves: "" or missing
for automatic selection, or "module:attr"; see ``load_entry``, and
``_entry.py`` for the WSGI and ASGI details), ``imports`` (stdlib modules a
zygote pre-imports), ``paths`` (package dirs appended to ``sys.path``) and
``preload`` (zygotes: ``[[package, [module, ...]], ...]``).  After importing
each preloaded package's modules a zygote reports ``{"imported": package}``
(with ``"error"`` if an import failed) and waits for the worker's verdict:
``{"ok": true}`` to go on; anything else (or the worker closing) ends it.
``secrets`` (leaves: true when the function has granted secrets): after
``{"started": true}`` the leaf waits for the worker's ``{"secrets": true}``
(its ``/run/secrets`` is mounted) before it imports the function's code.

Responses the runtime generates itself (``handler_exception``, ``bad_result``,
``handler_import_failed``, ``bad_json``, ``bad_request``) are JSON
``{"error": code, ...}`` and carry the header ``x-olactors-error: <code>``; an
app's own responses never do (``_entry`` strips it from what an app sets).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import types

RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
LEAF_SOCKET = "/host/ol.sock"
ZYGOTE_SOCKET = "/host/zygote.sock"
#: Where a zygote leaves each reaped child's exit status, for the worker (a
#: forked leaf is the zygote's child: only the zygote can reap it).
EXITS_DIR = "/host/exits"
MAX_EXIT_FILES = 512
LEAF_SECCOMP = b""  # set in zygotes: the filter their leaf children install
MAX_HEADER_BYTES = 65536
MAX_FORK_MESSAGE = 1 << 20
MAX_FDS = 16
REQUEST_TIMEOUT_S = 10.0
HANDOVER_TIMEOUT_S = 1.0
#: A forked child's first message (its namespaces exist) and the worker's
#: answer once it mounted the child's /proc (see olactors/sock/_procfs.py).
NAMESPACES_READY = b'{"namespaces": true}'
PROC_MOUNTED = b'{"proc": true}'
#: The worker's word that a leaf's /run/secrets is in place (olactors/sock/_secretfs.py).
SECRETS_MOUNTED = b'{"secrets": true}'


# ----------------------------------------------------------------- leaf mode
# Entry selection and JSON handlers live here, compiled with this script, so a
# JSON leaf imports nothing more.  The WSGI and ASGI adapters are in _entry.py,
# imported only by leaves that serve such an app (and pre-imported by zygotes).
HANDLER_DIR = "/handler"
ERROR_HEADER = "x-olactors-error"
_CO_VARARGS = 0x04
_CO_COROUTINE = 0x80
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


class Request:
    __slots__ = ("method", "target", "headers", "body")

    def __init__(self, method: str, target: str, headers: list, body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body


class EntryError(Exception):
    """The entry cannot be used (served as ``handler_import_failed``)."""


def _reason(status: int) -> str:
    phrase = _REASONS.get(status)
    if phrase is None:
        from http import HTTPStatus

        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Status"
    return phrase


def _json_response(status: int, obj: object, error: str | None = None) -> tuple:
    """``(status, reason, headers, body)``; a None reason means the standard phrase."""
    headers = [("content-type", "application/json")]
    if error is not None:
        headers.append((ERROR_HEADER, error))
    return status, None, headers, json.dumps(obj).encode()


def _error(status: int, code: str, **fields: object) -> tuple:
    """A runtime-generated error: JSON ``{"error": code, ...}``, marked with ERROR_HEADER."""
    return _json_response(status, {"error": code, **fields}, error=code)


def _app_error(exc: BaseException) -> tuple:
    """The 500 for an exception out of function code; call in the ``except`` block."""
    entry = sys.modules.get("_entry")
    if entry is not None and isinstance(exc, entry.BadResult):
        return _error(500, "bad_result", message=str(exc))
    import traceback

    return _error(
        500,
        "handler_exception",
        type=type(exc).__name__,
        message=str(exc),
        traceback=traceback.format_exc(),
    )


def _json_handler(func):
    def call(request: Request) -> tuple:
        if request.body:
            try:
                event = json.loads(request.body)
            except ValueError as exc:
                return _error(400, "bad_json", message=str(exc))
        else:
            event = None
        try:
            result = func(event)
        except BaseException as exc:  # noqa: BLE001 - the sandbox survives handler errors
            return _app_error(exc)
        try:
            return _json_response(200, result)
        except (TypeError, ValueError, RecursionError) as exc:
            kind = type(result).__name__
            message = f"the result (a {kind}) is not JSON-serialisable: {exc}"
            return _error(500, "bad_result", type=kind, message=message)

    return call


def _wsgi_handler(app):
    import _entry

    def call(request: Request) -> tuple:
        try:
            return _entry.run_wsgi(app, request)
        except BaseException as exc:  # noqa: BLE001 - the sandbox survives app errors
            return _app_error(exc)

    return call


def _asgi_handler(app):
    import _entry

    runner = _entry.AsgiRunner(app)

    def call(request: Request) -> tuple:
        try:
            return runner(request)
        except BaseException as exc:  # noqa: BLE001 - the sandbox survives app errors
            return _app_error(exc)

    return call


def _is_coroutine_function(obj) -> bool:
    """``inspect.iscoroutinefunction(obj)``; plain functions and methods are
    answered from their code objects without importing inspect (~10 ms)."""
    func = obj.__func__ if type(obj) is types.MethodType else obj
    if type(func) is types.FunctionType and not hasattr(func, "_is_coroutine_marker"):
        return bool(func.__code__.co_flags & _CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(obj)


def _is_asgi(obj) -> bool:
    """A coroutine function, or an instance whose ``__call__`` is one (calling a
    class constructs an instance, so a class's ``__call__`` does not count)."""
    if _is_coroutine_function(obj):
        return True
    if isinstance(obj, (type, types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return False
    call = getattr(obj, "__call__", None)  # noqa: B004 - the method itself is inspected
    return call is not None and _is_coroutine_function(call)


def _accepts(obj, n: int) -> bool | None:
    """Whether ``obj`` can be called with ``n`` positional arguments; None if unknowable.

    Plain functions and methods are answered from their code objects (as
    ``inspect.signature(obj).bind(*n_args)`` would); anything else asks inspect.
    """
    func, bound = obj, 0
    if type(obj) is types.MethodType:
        func, bound = obj.__func__, 1
    if (
        type(func) is types.FunctionType
        and not hasattr(func, "__wrapped__")
        and not hasattr(func, "__signature__")
    ):
        code = func.__code__
        kwonly = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
        if any(name not in (func.__kwdefaults__ or {}) for name in kwonly):
            return False  # a keyword-only argument without a default
        positional = code.co_argcount - bound
        required = positional - len(func.__defaults__ or ())
        return required <= n and (n <= positional or bool(code.co_flags & _CO_VARARGS))
    import inspect

    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*(None,) * n)
    except TypeError:
        return False
    return True


def _classify(obj, spec: str):
    """The caller for an explicit ``module:attr`` entry; EntryError if it fits no kind."""
    if _is_asgi(obj):
        return _asgi_handler(obj)
    if not callable(obj):
        raise EntryError(f"entry {spec!r} is not callable (a {type(obj).__name__})")
    one = _accepts(obj, 1)
    if one:
        return _json_handler(obj)
    two = _accepts(obj, 2)
    if two:
        return _wsgi_handler(obj)
    if one is None and two is None:
        raise EntryError(f"entry {spec!r}: cannot read the signature of {obj!r}")
    raise EntryError(
        f"entry {spec!r} is neither an ASGI app (a coroutine function, or an object whose "
        "__call__ is one), a JSON handler (one positional argument: event) nor a WSGI app "
        "(two positional arguments: environ, start_response)"
    )


def _automatic(module, name: str):
    if hasattr(module, "f"):
        return _json_handler(module.f)
    if hasattr(module, "app"):
        app = module.app
        return _asgi_handler(app) if _is_asgi(app) else _wsgi_handler(app)
    raise EntryError(f"{name}.py defines neither f(event) nor app")


def load_entry(spec: str):
    """Import the function's code once and pick how to call it.

    Returns ``call(request) -> (status, reason, headers, body)``.  ``spec``:

    * ``""`` (automatic): module ``f`` from /handler; its ``f`` is a JSON
      handler, else its ``app`` is an ASGI app when it is a coroutine function
      (or its ``__call__`` is one) and a WSGI app otherwise;
    * ``"module"`` or ``"module:"``: the same rule applied to ``module``;
    * ``"module:attr"`` (both may be dotted): the object is an ASGI app when it
      is a coroutine function or its ``__call__`` is one; else a JSON handler
      when it can be called with one positional argument; else a WSGI app when
      it can be called with two (environ, start_response).

    A JSON handler gets the body parsed as JSON (None when empty) and its result
    is served as JSON with status 200.  Failing to import or classify the entry
    is served as a 500 ``handler_import_failed`` on every call.
    """
    if HANDLER_DIR not in sys.path:
        sys.path.insert(0, HANDLER_DIR)
    sys.path_importer_cache.pop(HANDLER_DIR, None)
    module_name, _, attr = (spec or "f").partition(":")
    try:
        module = __import__(module_name, fromlist=["_"])
        if not attr:
            return _automatic(module, module_name.replace(".", "/"))
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return _classify(obj, spec)
    except EntryError as exc:
        failure = _error(500, "handler_import_failed", message=str(exc), traceback="")
    except BaseException as exc:  # noqa: BLE001 - reported to the caller
        import traceback

        failure = _error(
            500,
            "handler_import_failed",
            message=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )
    return lambda request: failure


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
            if length < 0:
                raise ValueError("negative content-length")
        elif name == "transfer-encoding":
            raise ValueError("chunked requests are not supported")
        headers.append((name, value))
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return Request(method, target, headers, body)


def _write_response(
    conn: socket.socket, status: int, reason: str | None, headers: list, body: bytes
) -> None:
    out = [f"HTTP/1.1 {status} {reason or _reason(status)}\r\n"]
    for name, value in headers:
        out.append(f"{name}: {value}\r\n")
    out.append(f"content-length: {len(body)}\r\n\r\n")
    head = "".join(out).encode("latin-1")
    if len(body) < 65536:
        conn.sendall(head + body)
    else:  # no copy of a large body
        conn.sendall(head)
        conn.sendall(body)


_fflush = None  # libc's fflush, once ctypes is loaded


def _flush_output() -> None:
    """Push what the call wrote through Python's and C's stdio buffers into
    fd 1 and 2 before the answer goes out: the worker counts what is in its
    pipes when the answer arrives as the call's output.

    C stdio (``printf`` in an extension) is flushed once ctypes is loaded:
    always in a forked leaf (its zygote imported it) and in a fresh one whose
    function imported it; importing it here would cost every fresh leaf ~4 ms.
    Writes to the fds themselves (``os.write``, child processes) need nothing.
    """
    global _fflush
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a function's replaced or closed stream
            pass
    if _fflush is None:
        ctypes = sys.modules.get("ctypes")
        if ctypes is None:
            return
        _fflush = ctypes.CDLL(None).fflush
    _fflush(None)


def _serve_buffered(conn: socket.socket, buf: bytearray, app) -> bool:
    """Answer every complete request in ``buf``; False when the connection must close."""
    while True:
        try:
            request = parse_request(buf)
        except (ValueError, UnicodeError) as exc:
            _write_response(conn, *_error(400, "bad_request", message=str(exc)))
            return False
        if request is None:
            return True
        response = app(request)
        _flush_output()
        _write_response(conn, *response)


def serve_leaf(listener: socket.socket, app) -> None:
    """Serve invocations on any number of keep-alive connections, one request at a time."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _ in selector.select():
            if key.data is None:
                accepted, _ = listener.accept()
                selector.register(accepted, selectors.EVENT_READ, bytearray())
                continue
            conn, buf = key.fileobj, key.data
            assert isinstance(conn, socket.socket)  # only sockets are registered
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
_exit_files: list = []


def _reap_children(_signum=None, _frame=None) -> None:
    """Reap every exited child and forward its status to the worker.

    Each child's status goes to ``EXITS_DIR/<pid>`` (its pid in the zygote's
    namespace, which the fork reply told the worker), written atomically:
    ``{"exit_code": n}`` or ``{"signal": n}``.  The worker reads and removes
    it when the leaf dies; the oldest are pruned beyond ``MAX_EXIT_FILES``
    (children whose status the worker never asked for, e.g. spares).
    """
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if os.WIFSIGNALED(status):
            report = {"signal": os.WTERMSIG(status)}
        else:
            report = {"exit_code": os.waitstatus_to_exitcode(status)}
        try:
            tmp = f"{EXITS_DIR}/.{pid}"
            with open(tmp, "w") as f:
                f.write(json.dumps(report))
            os.rename(tmp, f"{EXITS_DIR}/{pid}")
        except OSError:
            continue  # the worker then tells less (no exit status)
        _exit_files.append(pid)
        while len(_exit_files) > MAX_EXIT_FILES:
            try:
                os.unlink(f"{EXITS_DIR}/{_exit_files.pop(0)}")
            except OSError:
                pass


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
        # First: the worker mounts this sandbox's /proc while it goes on.
        conn.send(NAMESPACES_READY)
        # A session and process group of its own, not its zygote's: kill(0)
        # reaches a process group across PID namespaces, and its siblings
        # (other functions' leaves) have the same uid.
        os.setsid()
        conn.settimeout(REQUEST_TIMEOUT_S)
        request = json.loads(conn.recv(MAX_FORK_MESSAGE))
        conn.settimeout(None)
        root_fd, out_fd, err_fd, netns_fd, *cgroup_fds = fds
        for fd in cgroup_fds:
            os.write(fd, b"0")
            os.close(fd)
        _proc.join_network_namespace(netns_fd)  # its function's, not the zygote's
        os.close(netns_fd)
        _proc.chroot_to_fd(root_fd)
        os.close(root_fd)
        # stdin is the zygote's /dev/null, of the zygote's root: its own instead
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _proc.sethostname(request["hostname"])
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
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
            import _sigsys

            _proc.drop_privileges(request["uid"], request["gid"])  # every capability too
            # Its own map (owned by the leaf uid: opened after the drop, so the
            # zygote needs no DAC_OVERRIDE), before its filter can trap anything.
            _sigsys.attach()
            _proc.set_no_new_privs()
            _linux.install_seccomp(LEAF_SECCOMP)  # raises if empty: never unfiltered
        run(config, conn, proc_pending=True)
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


def _close_all(fds: list) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def serve_zygote(listener: socket.socket) -> None:
    """Answer fork requests (one SEQPACKET connection each), from a spare when one is ready."""
    import _proc

    os.makedirs(EXITS_DIR, exist_ok=True)
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
            # The child has its fds now: this zygote drops its copies (the
            # child's root dir among them) before it replies, so from the
            # reply on it holds nothing that reaches the child's root (the
            # worker mounts a leaf's secrets there only after the reply).
            _close_all(fds)
            fds = []
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
            _close_all(fds)
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


def _preload(preload: list, ready: socket.socket) -> None:
    """Import each package's modules, then ask the worker whether to go on."""
    for package, modules in preload:
        report = {"imported": package, "channel_fd": ready.fileno()}
        try:
            for name in modules:
                __import__(name)
        except BaseException as exc:  # noqa: BLE001 - reported, then the zygote ends
            report["error"] = f"importing it failed: {type(exc).__name__}: {exc}"
        ready.send(json.dumps(report).encode())
        ready.settimeout(REQUEST_TIMEOUT_S)
        if ready.recv(64) != b'{"ok": true}':
            os._exit(3)
        ready.settimeout(None)


def _await_secrets(ready: socket.socket) -> None:
    """Wait for the worker's word that /run/secrets is mounted (a leaf whose
    config says secrets come): its function's code is imported only after."""
    ready.settimeout(REQUEST_TIMEOUT_S)
    if ready.recv(64) != SECRETS_MOUNTED:
        raise RuntimeError("the worker did not confirm this sandbox's secrets")
    ready.settimeout(None)


def _await_proc(conn: socket.socket) -> None:
    """Wait for the worker's word that this (forked) sandbox's /proc is mounted."""
    conn.settimeout(REQUEST_TIMEOUT_S)
    if conn.recv(64) != PROC_MOUNTED:
        raise RuntimeError("the worker did not mount this sandbox's /proc")
    conn.settimeout(None)


def run(config: dict, ready: socket.socket, proc_pending: bool = False) -> None:
    """Become a leaf or zygote, report its phases on ``ready``, serve forever.

    ``proc_pending``: a forked child, whose /proc the worker is mounting; no
    function or package code runs before the worker says it is done.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    sys.dont_write_bytecode = True
    for path in config.get("paths", ()):
        if path not in sys.path:
            sys.path.append(path)
    if config["mode"] == "leaf":
        listener = _listen(LEAF_SOCKET, socket.SOCK_STREAM)
        ready.send(b'{"started": true}')
        if proc_pending:
            _await_proc(ready)
        if config.get("secrets"):
            _await_secrets(ready)
        app = load_entry(config.get("entry") or "")  # the init phase: function code runs
        ready.send(b'{"ready": true}')
        ready.close()
        serve_leaf(listener, app)
    else:
        if proc_pending:
            _await_proc(ready)
        # Everything a forked child needs is prepared here, once, not per fork.
        import base64
        import gc
        import traceback  # noqa: F401

        import _entry  # noqa: F401
        import _linux  # noqa: F401
        import _proc  # noqa: F401
        import _sigsys

        _sigsys.load()  # the SIGSYS handler its leaf children inherit

        global LEAF_SECCOMP
        LEAF_SECCOMP = base64.b64decode(config.get("leaf_seccomp", ""))
        if not LEAF_SECCOMP:
            raise ValueError("zygote config carries no leaf seccomp program; refusing to start")
        for name in config.get("imports", ()):
            __import__(name)
        _preload(config.get("preload", ()), ready)
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
