"""Load and fault tools for the end-to-end reliability tests.

A paced open-loop client (:func:`open_loop`) whose every call has a client
deadline (:func:`timed_call`, or :func:`raw_timed_call` over the lean
keep-alive :class:`RawClient` for rates httpx cannot drive from one process)
and lands in a :class:`LoadRecord`; fault
injectors that act on a real worker from outside, as an operator or the
kernel would: SIGKILL a sandbox's processes (pids from the admin
``/sandboxes``), freeze and thaw a sandbox's cgroup (found under the subtree
the worker records in ``run/cgroups.json``); a worker started as
``olactors serve`` in a subprocess (:func:`serve_process`) so its RSS is its
own; and :func:`leftovers`, everything a stopped worker must not leave behind.
Every loop is bounded in count and time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from .conftest import REPO, cgroup_dirs_named
from .test_http_api import alive, parse_head, wait_for_file

OK = "200 ok"
KEEPALIVE_S = 2.0  # the raw client reconnects after this long idle, well before the server


# ------------------------------------------------------------------ calls
@dataclass(frozen=True, slots=True)
class Outcome:
    """One call as the client saw it.  ``label`` is ``"<status> <error code>"``
    (``"200 ok"`` for a correct success), or a client-side verdict:
    ``"no answer"`` (the client deadline passed), ``"transport <Exc>"``,
    ``"200 wrong answer"`` (the body is not this call's), ``"<status> not json"``."""

    function: str
    label: str
    latency_s: float
    request_id: str | None = None
    message: str = ""  # an error answer's message


@dataclass
class LoadRecord:
    outcomes: list[Outcome] = field(default_factory=list)
    capped: int = 0  # calls the client did not start: its in-flight cap was reached
    late: int = 0  # calls the client did not start: it fell more than a second behind

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def by_label(self) -> Counter[str]:
        return Counter(o.label for o in self.outcomes)

    def latency_ms(self, q: float, label: str | None = None) -> float:
        values = sorted(o.latency_s for o in self.outcomes if label is None or o.label == label)
        if not values:
            return 0.0
        return 1000 * values[min(len(values) - 1, int(q * len(values)))]

    def examples(self) -> dict[str, str]:
        """One error message per label (the first seen)."""
        found: dict[str, str] = {}
        for o in self.outcomes:
            if o.label != OK:
                found.setdefault(o.label, f"{o.function}: {o.message}"[:300])
        return found

    def duplicate_request_ids(self) -> list[str]:
        counts = Counter(o.request_id for o in self.outcomes if o.request_id)
        return [rid for rid, n in counts.items() if n > 1]

    def summary(self) -> str:
        labels = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_label().items()))
        return (
            f"calls {len(self.outcomes)} (not started: {self.capped} at the client's cap, "
            f"{self.late} late); {labels}; "
            f"latency p50 {self.latency_ms(0.5):.0f} ms, p99 {self.latency_ms(0.99):.0f} ms, "
            f"max {self.latency_ms(1.0):.0f} ms"
        )


async def timed_call(
    client: httpx.AsyncClient, name: str, event: dict[str, Any], deadline_s: float
) -> Outcome:
    """POST ``event`` to ``/run/<name>``; a 200 must echo ``event["id"]`` back as ``"id"``."""
    start = trio.current_time()
    response = None
    label = "no answer"
    with trio.move_on_after(deadline_s):
        try:
            response = await client.post(f"/run/{name}", json=event)
        except httpx.TransportError as exc:
            label = f"transport {type(exc).__name__}"
    elapsed = trio.current_time() - start
    if response is None:
        return Outcome(name, label, elapsed)
    answer = (response.status_code, dict(response.headers), response.content)
    return judge(name, event, answer, elapsed)


def judge(
    name: str, event: dict[str, Any], answer: tuple[int, dict[str, str], bytes], elapsed: float
) -> Outcome:
    """The :class:`Outcome` of an answer (status, lower-case headers, body) to ``event``."""
    status, headers, raw = answer
    rid = headers.get("x-request-id")
    try:
        body = json.loads(raw)
    except ValueError:
        return Outcome(name, f"{status} not json", elapsed, rid)
    if status == 200:
        ok = isinstance(body, dict) and body.get("id") == event.get("id")
        return Outcome(name, OK if ok else "200 wrong answer", elapsed, rid)
    code = body.get("error") if isinstance(body, dict) else None
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    return Outcome(name, f"{status} {code}", elapsed, rid, message)


async def open_loop(
    rate: float,
    duration_s: float,
    one_call: Callable[[int], Awaitable[None]],
    max_in_flight: int,
    record: LoadRecord,
) -> None:
    """Start ``one_call(i)`` ``rate`` times a second for ``duration_s`` (paced, not
    waiting for answers), never more than ``max_in_flight`` at once.  A call not
    started for that cap counts in ``record.capped``; one due more than a second
    ago (the client fell behind) in ``record.late``, so the load never outlasts
    ``duration_s``.  Returns once every started call has finished."""
    in_flight = 0

    async def run(i: int) -> None:
        nonlocal in_flight
        try:
            await one_call(i)
        finally:
            in_flight -= 1

    interval = 1.0 / rate
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        i = 0
        while (due := start + i * interval) < start + duration_s:
            await trio.sleep_until(due)
            if in_flight >= max_in_flight:
                record.capped += 1
            elif trio.current_time() - due > 1.0:
                record.late += 1
            else:
                in_flight += 1
                nursery.start_soon(run, i)
            i += 1


class RawClient:
    """A lean HTTP/1.1 keep-alive client for load above what httpx can drive from
    one process: ``connections`` persistent connections to ``base_url``, each
    taking one call at a time from a shared queue.  :meth:`call` queues a POST
    of a JSON body and waits for its answer (status, headers, body).  Bounded:
    at most ``connections`` requests in flight, at most ``backlog`` queued."""

    def __init__(self, base_url: str, connections: int, backlog: int) -> None:
        url = httpx.URL(base_url)
        self.host, self.port = url.host, url.port
        self.connections = connections
        self._send, self._receive = trio.open_memory_channel[tuple[bytes, Any]](backlog)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.connections):
                nursery.start_soon(self._connection)
            task_status.started()

    def close(self) -> None:
        self._send.close()

    async def call(self, path: str, event: Any) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps(event).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: load\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        done: list[Any] = []
        event_done = trio.Event()
        await self._send.send((head + body, (done, event_done)))
        await event_done.wait()
        if isinstance(done[0], BaseException):
            raise done[0]
        return done[0]

    async def _connection(self) -> None:
        stream: trio.SocketStream | None = None
        buffer = b""
        idle_since = 0.0
        async for request, (done, event_done) in self._receive:
            try:
                if stream is not None and (
                    trio.current_time() - idle_since > KEEPALIVE_S or _closed_by_peer(stream)
                ):
                    # Never race the server's own keep-alive timeout (hypercorn: 5 s).
                    await stream.aclose()
                    stream = None
                if stream is None:
                    stream = await trio.open_tcp_stream(self.host, self.port)
                    buffer = b""
                await stream.send_all(request)
                while b"\r\n\r\n" not in buffer:
                    buffer += await _receive(stream)
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                status, headers = parse_head(head)
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    buffer += await _receive(stream)
                body, buffer = buffer[:length], buffer[length:]
                done.append((status, headers, body))
                idle_since = trio.current_time()
                if headers.get("connection", "").lower() == "close":
                    await stream.aclose()
                    stream = None
            except (OSError, trio.BrokenResourceError, EOFError) as exc:
                done.append(exc)
                if stream is not None:
                    await stream.aclose()
                stream = None
            finally:
                event_done.set()
        if stream is not None:
            await stream.aclose()


def _closed_by_peer(stream: trio.SocketStream) -> bool:
    """Whether the peer closed ``stream`` (EOF waiting, seen without consuming data)."""
    peek = socket.socket(fileno=os.dup(stream.socket.fileno()))
    try:
        return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        peek.close()


async def _receive(stream: trio.SocketStream) -> bytes:
    data = await stream.receive_some(65536)
    if not data:
        raise EOFError("the server closed the connection")
    return data


async def raw_timed_call(
    client: RawClient, name: str, event: dict[str, Any], deadline_s: float
) -> Outcome:
    """:func:`timed_call` over a :class:`RawClient` (same labels)."""
    start = trio.current_time()
    answer = None
    label = "no answer"
    with trio.move_on_after(deadline_s):
        try:
            answer = await client.call(f"/run/{name}", event)
        except (OSError, trio.BrokenResourceError, EOFError) as exc:
            label = f"transport {type(exc).__name__}"
    elapsed = trio.current_time() - start
    if answer is None:
        return Outcome(name, label, elapsed)
    return judge(name, event, answer, elapsed)


# ----------------------------------------------------------------- faults
async def sandboxes(admin: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await admin.get("/sandboxes")
    r.raise_for_status()
    return r.json()


def kill_all(pids: list[int]) -> int:
    """SIGKILL each pid (gone ones are skipped); how many were signalled."""
    done = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            done += 1
        except ProcessLookupError:
            pass
    return done


def freezer_dirs(worker_dir: Path) -> list[Path]:
    """The worker's freezer subtrees, from ``run/cgroups.json`` (v1: the freezer
    hierarchy's ``olactors-<id>`` dir; v2: the one unified subtree)."""
    recorded = json.loads((worker_dir / "run" / "cgroups.json").read_text())
    paths = [Path(p) for p in recorded["subtrees"]]
    return [p for p in paths if (p / "freezer.state").exists() or (p / "cgroup.freeze").exists()]


def cgroup_holding(worker_dir: Path, pid: int) -> Path | None:
    """The sandbox cgroup (under the worker's freezer subtree) whose members include ``pid``."""
    for subtree in freezer_dirs(worker_dir):
        try:
            children = [d for d in subtree.iterdir() if d.is_dir()]
        except OSError:
            continue
        for child in children:
            try:
                members = (child / "cgroup.procs").read_text().split()
            except OSError:
                continue
            if str(pid) in members:
                return child
    return None


def set_frozen(cgroup: Path, frozen: bool) -> bool:
    """Freeze or thaw ``cgroup`` from outside the worker (v1 ``freezer.state`` or
    v2 ``cgroup.freeze``); False if it is gone."""
    try:
        if (cgroup / "freezer.state").exists():
            (cgroup / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
        else:
            (cgroup / "cgroup.freeze").write_text("1" if frozen else "0")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- workers
def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` (VmRSS) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """User plus system CPU time ``pid`` has used, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServedProcess:
    proc: subprocess.Popen[bytes]
    worker_dir: Path
    public: str
    admin: str
    log: Path

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.public, timeout=60.0, **kwargs)

    def admin_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.admin), base_url="http://admin", timeout=60
        )


@contextmanager
def serve_process(
    worker_dir: Path, log: Path, processes: list, *overrides: str
) -> Iterator[ServedProcess]:
    """``olactors serve`` on ``worker_dir`` in a subprocess (port 0) until the block
    ends, then SIGTERM; the block's caller asserts on the exit status via ``proc``."""
    args = [sys.executable, "-m", "olactors.cli", "serve", "--path", str(worker_dir)]
    for item in ("server.port=0", *overrides):
        args += ["--set", item]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    processes.append(proc)
    try:
        wait_for_file(worker_dir / "run" / "endpoints.json", proc)
        endpoints = json.loads((worker_dir / "run" / "endpoints.json").read_text())
        yield ServedProcess(proc, worker_dir, endpoints["public"], endpoints["admin"], log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def leftovers(worker_dir: Path, pids_seen: set[int]) -> list[str]:
    """Everything of a stopped worker that is still there: processes it ran,
    cgroups of its subtree, mounts under its dir (in this process's mount
    namespace, where an in-process worker keeps them) and sandbox dirs."""
    from olactors.sock import worker_id

    found = [f"process {pid}" for pid in sorted(pids_seen) if alive(pid)]
    found += [f"cgroup {d}" for d in cgroup_dirs_named(f"olactors-{worker_id(worker_dir)}")]
    root = str(worker_dir.resolve())
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if line.split()[4].startswith(root)]
    sandbox_dirs = worker_dir / "run" / "sandboxes"
    if sandbox_dirs.exists():
        found += [f"sandbox dir {d}" for d in sandbox_dirs.iterdir()]
    return found
