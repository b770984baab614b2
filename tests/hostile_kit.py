"""The harness of the hostile-function suite (tests/test_hostile_*.py): one real
worker (``olactors serve`` in a subprocess, root, real sandboxes) shared by
every attempt, a victim function whose sandbox must survive every attempt,
and the code every hostile function starts with.

Each attempt is a real function in a real leaf.  It reports what the kernel
answered (errno numbers, not messages) and the test asserts precisely what
"blocked" means for it, then that the victim's sandbox is the same one,
alive, and that the worker still serves a normal function.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .conftest import REPO, cgroup_dirs_named, run_cli

#: Every hostile function starts with this: probes that return the errno.
PRELUDE = '''
import ctypes
import errno
import json
import os
import platform
import signal
import socket
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ARM = platform.machine() == "aarch64"
NR = {  # syscalls without a glibc wrapper: x86_64, aarch64
    "bpf": (321, 280), "keyctl": (250, 219), "add_key": (248, 217),
    "io_uring_setup": (425, 425), "perf_event_open": (298, 241),
    "userfaultfd": (323, 282), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "pivot_root": (155, 41), "process_vm_readv": (310, 270), "ptrace": (101, 117),
    "setns": (308, 268), "unshare": (272, 97), "mount": (165, 40), "umount2": (166, 39),
    "reboot": (169, 142), "sethostname": (170, 161), "settimeofday": (164, 170),
    "clock_settime": (227, 112), "pidfd_open": (434, 434),
}


def sys_errno(name, *args):
    """0 if the raw syscall succeeded, else its errno."""
    argv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(NR[name][ARM]), *argv)
    return 0 if rc >= 0 else ctypes.get_errno()


def errno_of(fn, *args):
    """0 if fn(*args) succeeded, else the OSError's errno."""
    try:
        fn(*args)
        return 0
    except OSError as exc:
        return exc.errno


def connect_errno(family, address, timeout=2.0):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(address)
        return 0
    except OSError as exc:
        return exc.errno if exc.errno is not None else "timeout"
    finally:
        s.close()
'''

VICTIM = """
import os
import socket
import subprocess
import sys

# A helper process of its own (not its namespace's init, which the kernel
# shields from its namespace's outsiders anyway): it must survive too.
helper = subprocess.Popen([sys.executable, "-I", "-S", "-c", "import time; time.sleep(3600)"])

# IPC of its own: a System V shared memory segment and a POSIX one.
import ctypes
_libc = ctypes.CDLL(None, use_errno=True)
shm_id = _libc.shmget(0x0DD1, 4096, 0o1000 | 0o666)  # IPC_CREAT
with open("/dev/shm/victim-segment", "wb") as seg:
    seg.write(b"victim")

# Reachable only from inside its own sandbox: an abstract UNIX socket and a
# 127.0.0.1 listener (what another function must not reach).
abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
abstract.bind("\\0olactors-hostile-victim")
abstract.listen(8)
local = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    local.bind(("127.0.0.1", 7777))
    local.listen(8)
except OSError:
    local = None  # loopback down in this network namespace: nothing to reach


def _reach(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(address)
        return 0
    except OSError as exc:
        return exc.errno
    finally:
        s.close()


def f(event):
    answer = {
        "host": socket.gethostname(),
        "helper": helper.poll(),
        "shm": shm_id >= 0 and os.path.exists("/dev/shm/victim-segment"),
        "secret": "victim-f00d",
    }
    if event == "self-check":  # its own sockets are there, and reachable from inside
        answer["abstract"] = _reach(socket.AF_UNIX, "\\0olactors-hostile-victim")
        answer["local"] = _reach(socket.AF_INET, ("127.0.0.1", 7777)) if local else "down"
    return answer
"""

ECHO = "def f(event):\n    return event\n"


@dataclass
class Worker:
    """A worker served by ``olactors serve`` in a subprocess."""

    path: Path
    proc: subprocess.Popen[bytes]
    public: str
    log: Path
    victim: dict[str, Any] = field(default_factory=dict)

    @property
    def registry(self) -> Path:
        return self.path / "registry"

    @property
    def admin_path(self) -> Path:
        return self.path / "admin.sock"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.public, timeout=60.0)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.admin_path)),
            base_url="http://admin",
            timeout=30.0,
        )

    def write(self, name: str, source: str, ol_yaml: str = "") -> Path:
        code = self.registry / name
        code.mkdir(parents=True, exist_ok=True)
        (code / "f.py").write_text(textwrap.dedent(source))
        if ol_yaml:
            (code / "ol.yaml").write_text(textwrap.dedent(ol_yaml))
        return code

    def call(self, name: str, event: object = None) -> httpx.Response:
        with self.client() as client:
            return client.post(f"/run/{name}", json=event)

    def sandboxes(self) -> list[dict[str, Any]]:
        with self.admin() as admin:
            response = admin.get("/sandboxes")
        assert response.status_code == 200, response.text
        return list(response.json())

    def pids_of(self, kind: str, function: str | None = None) -> list[int]:
        return [
            pid
            for sb in self.sandboxes()
            if sb["kind"] == kind
            and (function is None or sb["function"] == function)
            and sb["state"] != "dead"
            for pid in sb["pids"]
        ]

    def zygote_pid(self) -> int:
        """Host pid of a live zygote's own process (not its spare child: the
        first process of its sandbox)."""
        zygotes = [
            min(sb["pids"])
            for sb in self.sandboxes()
            if sb["kind"] == "zygote" and sb["state"] != "dead" and sb["pids"]
        ]
        assert zygotes, "the suite runs forked leaves: a zygote must exist"
        return zygotes[0]

    def record(self, name: str, request_id: str) -> dict[str, Any]:
        """The call's record, once the recorder wrote it."""
        deadline = time.monotonic() + 10
        with self.admin() as admin:
            while True:
                response = admin.get(f"/debug/{name}/{request_id}")
                if response.status_code == 200 or time.monotonic() > deadline:
                    assert response.status_code == 200, response.text
                    return dict(response.json())
                time.sleep(0.05)

    def targets(self) -> dict[str, Any]:
        """What an attempt aims at: host pids of the worker, the victim's
        sandbox and a zygote, the worker's port and admin socket."""
        return {
            "worker_pid": self.proc.pid,
            "victim_pid": self.victim["host_pid"],
            "zygote_pid": self.zygote_pid(),
            "port": httpx.URL(self.public).port,
            "admin": str(self.admin_path),
            "registry": str(self.registry),
            "worker_dir": str(self.path),
        }

    def victim_unharmed(self) -> None:
        """The victim is served by the very sandbox it had, and the worker by
        a normal function."""
        assert self.proc.poll() is None, "the worker died"
        response = self.call("victim")
        assert response.status_code == 200, response.text
        assert response.json()["host"] == self.victim["host"], "the victim's sandbox was replaced"
        assert response.json()["helper"] is None, "the victim's helper process died"
        assert response.json()["shm"] is True, "the victim's IPC is gone"
        assert nice_of(self.victim["helper_pid"]) == 0, "the victim's helper was reniced"
        assert alive(self.victim["host_pid"])
        response = self.call("echo", {"still": "serving"})
        assert response.status_code == 200 and response.json() == {"still": "serving"}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def nice_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])  # field 19: nice


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def start_worker(path: Path, *overrides: str) -> Worker:
    log = path.parent / f"{path.name}.log"
    out = open(log, "wb")
    settings = ["server.port=0", "sandbox.cgroup_pool_size=8", *overrides]
    proc = subprocess.Popen(
        [sys.executable, "-m", "olactors.cli", "serve", "--path", str(path)]
        + [arg for s in settings for arg in ("--set", s)],
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    endpoints = path / "run" / "endpoints.json"
    deadline = time.monotonic() + 60
    while not endpoints.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
    worker = Worker(path, proc, json.loads(endpoints.read_text())["public"], log)
    worker.write("echo", ECHO)
    worker.write("victim", VICTIM)
    response = worker.call("victim")
    assert response.status_code == 200, response.text
    host = response.json()["host"]
    [sandbox] = [sb for sb in worker.sandboxes() if sb["id"] == host]
    main_pid, helper_pid = sandbox["pids"]  # the runtime (first), its helper
    worker.victim = {"host": host, "host_pid": main_pid, "helper_pid": helper_pid}
    assert response.json()["shm"] is True
    return worker


def stop_worker(worker: Worker) -> None:
    """SIGTERM and wait; a worker that was killed leaves its dir to cleanup.
    Either way no cgroup of it is left."""
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
    else:
        run_cli("cleanup", "--path", str(worker.path))
    from olactors.sock import worker_id

    assert not cgroup_dirs_named(f"olactors-{worker_id(worker.path.resolve())}")


def served_worker(tmp_path_factory: Any, name: str, *overrides: str) -> Iterator[Worker]:
    """A module's shared worker (for a ``scope="module"`` fixture)."""
    path = tmp_path_factory.mktemp(name) / "worker"
    worker = start_worker(path, *overrides)
    try:
        yield worker
    finally:
        stop_worker(worker)


def hostile(body: str) -> str:
    """A hostile function's source: the prelude and ``body`` (dedented)."""
    return PRELUDE + textwrap.dedent(body)


def raw_server(answer: str) -> str:
    """A function that, at import, replaces the runtime's socket with its own
    server, which answers every request by running ``answer`` (statements on
    ``conn``, indented by four spaces)."""
    return RAW_SERVER.replace("{answer}", answer)


RAW_SERVER = """
import os, socket, threading

def f(event):
    return "ok"

listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind("/host/raw.sock")
listener.listen(1)
os.rename("/host/raw.sock", "/host/ol.sock")

def answer(conn):
{answer}

def serve():
    while True:
        conn, _ = listener.accept()
        conn.recv(65536)
        try:
            answer(conn)
        except OSError:
            pass
        conn.close()

threading.Thread(target=serve, daemon=True).start()
"""

#: A body of a gigabyte, streamed.
RAW_SERVER_GIGABYTE = raw_server(
    """
    conn.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: %d\\r\\n\\r\\n" % (1 << 30))
    chunk = b"x" * (1 << 20)
    for _ in range(1024):
        conn.sendall(chunk)
"""
)

#: A 101: switching the worker's own connection to its client.
RAW_SERVER_SWITCH = raw_server(
    """
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nupgrade: h2c\\r\\n"
                 b"connection: upgrade\\r\\n\\r\\n")
"""
)

#: The head, then a body of a MiB one byte every 50 ms: past any runtime limit.
RAW_SERVER_TRICKLE = raw_server(
    """
    import time
    conn.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 1048576\\r\\n\\r\\n")
    for _ in range(1 << 20):
        conn.sendall(b"x")
        time.sleep(0.05)
"""
)

#: At import, its runtime's socket becomes a symlink to the worker's admin
#: socket (the worker's first connection to the leaf comes after the import).
SYMLINKED_SOCKET = """
import json, os

def f(event):
    return "served by the function"

target = json.load(open("/handler/target.json"))["admin"]
os.unlink("/host/ol.sock")
os.symlink(target, "/host/ol.sock")
"""
