"""The real SOCK sandbox: a process tree in its own cgroup, namespaces and root.

A fresh sandbox is spawned by the native layer (join cgroups, new PID/UTS/IPC
namespaces, network namespace, chroot, identity, no_new_privs, seccomp, exec
``python -I -S /runtime/server.py``).  A forked sandbox is cloned by its parent
zygote, which receives the child's root dir fd, stdout and stderr pipes and
cgroup.procs fds over SCM_RIGHTS; the child enters them before anything else
runs (see ``_stdio.py`` for where its output goes).  Either
way, "created" means the runtime listens on its socket and, for a leaf, has
imported the function's code: two phases with limits of their own (see
:func:`start`), so a slow import is told apart from a sandbox that failed.
"""

from __future__ import annotations

import array
import base64
import json
import logging
import os
import select
import shutil
import signal
import socket as stdsocket
import stat
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .. import native
from .._causes import Cause, CauseCode, SignalSender
from .._errors import InitDied, InitTimeout, OlactorsError, SandboxError, ZygoteUnsuitable
from .._records import NO_OUTPUT, CallOutput
from ._api import Invocation, InvocationResult, SandboxMeta, SandboxUsage
from ._blocked import BlockedSyscalls, sandbox_env
from ._client import BadResponse, LeafClient
from ._rootfs import SandboxRoot
from ._safe import ReleaseFailed, SafeSandbox
from ._stdio import SandboxStdio
from ._suitability import unfit_to_fork
from .cgroups import Cgroup, CgroupPool

if TYPE_CHECKING:
    from ._pool import SockPool

log = logging.getLogger("olactors.sandbox")
RUNTIME_ARGV_SCRIPT = "/runtime/server.py"
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
LOG_TAIL_BYTES = 2000
#: How long a failed start waits for a process's exit to become visible.
EXIT_GRACE_S = 0.25
#: How long a diagnosis waits for the dead process's exit to be seen (a
#: failure path only; a loaded machine can take a while to tear a process down).
DIAGNOSE_EXIT_WAIT_S = 1.0
#: How long diagnosing a forked leaf waits for its zygote to forward its exit status.
FORWARDED_STATUS_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a sandbox's init process ended: ``exit_code``, or killed by ``signal``."""

    exit_code: int | None = None
    signal: int | None = None

    @classmethod
    def from_waitid(cls, si_code: int, status: int) -> ExitStatus:
        if si_code == os.CLD_EXITED:
            return cls(exit_code=status)
        return cls(signal=status)

    @classmethod
    def from_json(cls, data: object) -> ExitStatus | None:
        """What a zygote forwarded (see runtime/server.py ``_reap_children``)."""
        if isinstance(data, dict):
            if isinstance(data.get("signal"), int):
                return cls(signal=data["signal"])
            if isinstance(data.get("exit_code"), int):
                return cls(exit_code=data["exit_code"])
        return None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class SocketRedirected(SandboxError):
    """A sandbox replaced its socket with something else (e.g. a symlink)."""


@contextmanager
def sandbox_socket(scratch_fd: int, name: str) -> Iterator[str]:
    """A path that reaches exactly the socket ``name`` in a sandbox's scratch dir.

    The scratch dir is writable by the sandbox, so the name could be swapped
    for a symlink to any socket of the host.  The inode is therefore opened
    with O_PATH|O_NOFOLLOW relative to the scratch dir's fd and must be a
    socket; ``/proc/self/fd/N`` then names that inode and nothing else (and
    is short, whatever the length of the worker dir's path).
    """
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=scratch_fd)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SocketRedirected(f"{name} in the sandbox's scratch dir is not a socket")
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


@dataclass
class SockSandbox:
    """Mechanics of one SOCK sandbox (wrapped by SafeSandbox for the rules)."""

    id: str
    is_leaf: bool
    meta: SandboxMeta
    dir: Path
    scratch: Path
    root: SandboxRoot
    code_dir: str | None
    cgroup: Cgroup | None  # None until _prepare takes one from the cgroup pool
    pool: SockPool  # for cgroup release and counters
    network: str
    pid: int = 0
    pidfd: int = -1
    scratch_fd: int = -1
    exit_status: ExitStatus | None = None
    #: A forked leaf's zygote and its pid in the zygote's namespace (for the
    #: exit status the zygote forwards).
    zygote: SockSandbox | None = None
    ns_pid: int = 0
    #: The worker killed it (its release began).
    killed: bool = False
    #: Held while a forked leaf's forwarded exit status is read.
    reading_status: trio.Lock = field(default_factory=trio.Lock)
    exited: trio.Event = field(default_factory=trio.Event)
    watching: bool = False
    client: LeafClient | None = None
    #: Its process did not exit after a kill and is no longer watched.
    lost: bool = False
    #: Its stdout and stderr pipes (set when it is prepared).
    stdio: SandboxStdio | None = None
    #: A leaf's map of the syscalls its filter blocked (see _blocked.py).
    blocked: BlockedSyscalls | None = None

    # ------------------------------------------------------------ mechanics
    async def connect(self) -> trio.SocketStream:
        """A new connection to the leaf's ``ol.sock``."""
        with sandbox_socket(self.scratch_fd, "ol.sock") as path:
            return await trio.open_unix_socket(path)

    async def invoke(self, request: Invocation) -> InvocationResult:
        if self.client is None:
            self.client = LeafClient(self.connect)
        if self.blocked is not None:
            self.blocked.reset()
        stdio = self.prepared_stdio()
        stdio.begin_call()
        try:
            result = await self.client.request(request)
        finally:
            output = stdio.end_call(self.blocked_syscalls())
        return InvocationResult(result.status, result.headers, result.body, output)

    def prepared_stdio(self) -> SandboxStdio:
        """Its output pipes, made when it was prepared."""
        if self.stdio is None:
            raise SandboxError(f"sandbox {self.id} has no output pipes yet")
        return self.stdio

    def call_output(self) -> CallOutput:
        """What its last call wrote (as far as it got, if it failed)."""
        return NO_OUTPUT if self.stdio is None else self.stdio.call_output()

    def blocked_syscalls(self) -> tuple[str, ...]:
        """Names of the syscalls its seccomp filter blocked since the last call
        began: the call's own, also after the sandbox died and was released
        (() before it starts)."""
        return () if self.blocked is None else self.blocked.read()

    def prepared_cgroup(self) -> Cgroup:
        """Its cgroup, taken when it was prepared (before anything can run in it)."""
        if self.cgroup is None:
            raise SandboxError(f"sandbox {self.id} has no cgroup yet")
        return self.cgroup

    async def freeze(self) -> None:
        await self.prepared_cgroup().freeze(self.pool.config.sandbox.freeze_timeout_s)

    async def thaw(self) -> None:
        await self.prepared_cgroup().thaw(self.pool.config.sandbox.freeze_timeout_s)

    def usage(self) -> SandboxUsage:
        return self.prepared_cgroup().usage()

    def pids(self) -> list[int]:
        """Host pids of every process in the sandbox (its cgroup's members)."""
        if self.cgroup is None:
            return []
        try:
            return first_hierarchy_pids(self.cgroup)
        except OSError:
            return []

    def log_tail(self) -> str:
        """The end of its log (what it wrote outside calls), once what is
        still in its pipes has been moved there."""
        if self.stdio is None:
            return ""
        self.stdio.drain()
        return self.stdio.log.tail(LOG_TAIL_BYTES)

    async def diagnose(self, error: BaseException | None) -> Cause:
        """Why did it die (or fail with ``error``)?  A malformed answer first
        (``bad_response``: it lives), a forked leaf whose zygote died
        (``zygote_died``), the kernel's own verdicts (the cgroup's OOM kills,
        then its pids-limit hits), the exit status (a forked leaf's is
        forwarded by its zygote), then the error the caller saw; ``unknown``
        only when none of these tells."""
        if isinstance(error, BadResponse):
            return Cause.of(CauseCode.BAD_RESPONSE, reason=str(error))
        if self.watching:
            with trio.move_on_after(DIAGNOSE_EXIT_WAIT_S):
                await self.exited.wait()
        elif self.pidfd >= 0:
            self.reap(block=False)
        status = self.exit_status
        if status is None and self.zygote is not None and self.process_gone():
            async with self.reading_status:  # a concurrent diagnosis reads it once for both
                status = self.exit_status or await self.forwarded_status()
            if status is None and self.zygote.process_gone():
                # its zygote, its PID namespace's init, died: the kernel killed it
                return Cause.of(CauseCode.ZYGOTE_DIED, zygote=self.zygote.id)
        try:
            u = self.prepared_cgroup().usage()
        except Exception:  # cgroup already gone
            u = None
        limits = self.meta.limits
        oom = u is not None and u.oom_kills > 0
        if status is not None and status.signal is not None:
            if oom and status.signal == signal.SIGKILL:
                return Cause.of(CauseCode.OOM, limit_mb=limits.mem_mb)
            sender = (
                SignalSender.OOM_KILLER
                if oom
                else SignalSender.WORKER
                if self.killed
                else SignalSender.OTHER
            )
            return Cause.of(
                CauseCode.SIGNAL, signal=signal_name(status.signal), sender=sender.value
            )
        if oom:
            return Cause.of(CauseCode.OOM, limit_mb=limits.mem_mb)
        if u is not None and u.pids_limit_hits:
            return Cause.of(CauseCode.PIDS_LIMIT, limit=limits.procs)
        if status is not None:
            return Cause.of(CauseCode.EXIT, exit_code=status.exit_code)
        if error is not None:
            return Cause.of(CauseCode.UNKNOWN, error=f"{type(error).__name__}: {error}")
        return Cause.of(CauseCode.UNKNOWN, error="its process exited unexpectedly")

    def process_gone(self) -> bool:
        """Has its init process exited (seen, or its pidfd says so now)?"""
        if self.exited.is_set():
            return True
        if self.pidfd < 0:
            return False
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    async def forwarded_status(self) -> ExitStatus | None:
        """A forked leaf's exit status, as its zygote forwarded it (read and
        removed; waited for briefly: the zygote reaps it after the worker may
        already have seen it die).  None if it never came."""
        zygote = self.zygote
        if zygote is None or self.ns_pid <= 0:
            return None
        with trio.move_on_after(FORWARDED_STATUS_WAIT_S):
            while True:
                found, status = read_forwarded_status(zygote, self.ns_pid)
                if found:
                    self.exit_status = status  # read once: the file is gone now
                    return status
                if zygote.exited.is_set():
                    return None
                await trio.sleep(0.005)
        return None

    async def release(self, cause: Cause) -> None:
        """Kill, unmount, remove (see :func:`release_sandbox`); raises
        ReleaseFailed when something stays.  A retry does what is left."""
        if self.client is not None:
            client, self.client = self.client, None
            await client.aclose()
        report = await self.pool.release_resources(self)
        if report.leftovers:
            raise ReleaseFailed(self.id, report.leftovers, report.processes_gone)

    # ------------------------------------------------------------- watching
    def reap(self, *, block: bool) -> bool:
        """Collect the exit status if the init process is our child and has exited.

        Returns True once the process is known to be gone (pidfd then closed).
        """
        if self.pidfd < 0:
            return True
        flags = os.WEXITED | (0 if block else os.WNOHANG)
        try:
            info = os.waitid(os.P_PIDFD, self.pidfd, flags)
        except ChildProcessError:
            info = None  # forked by a zygote, which reaps it
            if not block:
                return False
        else:
            if info is None:
                return False
            self.exit_status = ExitStatus.from_waitid(info.si_code, info.si_status)
        os.close(self.pidfd)
        self.pidfd = -1
        self.exited.set()
        return True

    async def watch(self, on_exit) -> None:
        """Wait for the sandbox's init process to exit, reap it if it is ours, report."""
        try:
            await trio.lowlevel.wait_readable(self.pidfd)
        except BaseException:
            self.watching = False  # cancelled: release_resources reaps instead
            raise
        self.reap(block=True)
        await on_exit()

    async def await_exit(self, timeout: float) -> bool:
        """After a kill: wait (bounded) for the init process to be gone and reaped.

        True once it is gone: every process of the sandbox is then gone too
        (the init of a PID namespace takes the others with it).  False if it
        still runs: a watched sandbox keeps its pidfd, so a retry can wait
        again; an unwatched one (it failed to start) is given up on: its
        pidfd is closed and it stays ``lost``.
        """
        with trio.move_on_after(timeout):
            if self.watching:
                await self.exited.wait()
            elif self.pidfd >= 0:
                await trio.lowlevel.wait_readable(self.pidfd)
                self.reap(block=True)
        if self.exited.is_set() or (self.pidfd < 0 and not self.watching and not self.lost):
            return True  # gone, or there never was a process to wait for
        log.error("sandbox %s: process %d did not exit after kill", self.id, self.pid)
        if not self.watching and self.pidfd >= 0:
            trio.lowlevel.notify_closing(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
            self.lost = True
        return False


#: ``PF_EXITING`` in the flags field of /proc/<pid>/stat: the task is exiting.
PF_EXITING = 0x4


def is_exiting(pid: int) -> bool:
    """Is process ``pid`` (still there, perhaps unreaped) in the middle of exiting?

    A zygote killed while one of its descendants is frozen cannot finish: as
    the init of its PID namespace it waits for every process in it, and a
    frozen one dies only once thawed (cgroup v1).  Its pidfd then never
    becomes readable, but its flags say it is on its way out.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True  # gone already
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return bool(int(fields[6]) & PF_EXITING)  # field 9: after pid, comm, state...
    except (IndexError, ValueError):
        return False


class ZygoteGone(SandboxError):
    """A zygote's fork socket refused the connection: nobody listens there any
    more.  ``exiting`` says whether its process is on its way out (then its
    frozen descendants are what holds it, see :func:`is_exiting`)."""

    def __init__(self, zygote_id: str, exiting: bool) -> None:
        state = "is exiting" if exiting else "no longer listens for forks"
        super().__init__(f"zygote {zygote_id} {state}")
        self.exiting = exiting
        self.cause = Cause.of(CauseCode.ZYGOTE_DIED, zygote=zygote_id)


def pid_in_parent_namespace(pid: int) -> int:
    """The pid of process ``pid`` as its parent namespace sees it (a forked
    leaf's pid in its zygote's namespace: the name of the file its zygote
    forwards its exit status in), from ``NSpid`` in /proc; 0 if unknown.

    Read while the process lives (its pidfd is open, so the pid is not
    reused): the zygote's fork reply says the same, but may come after the
    leaf already reported ready."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    pids = line.split()[1:]
                    return int(pids[-2]) if len(pids) >= 2 else 0
    except (OSError, ValueError):
        pass
    return 0


def read_forwarded_status(zygote: SockSandbox, ns_pid: int) -> tuple[bool, ExitStatus | None]:
    """Read and remove the exit status ``zygote`` forwarded for its child
    ``ns_pid``: ``(found, status)``.  Opened without following symlinks,
    relative to the zygote's scratch dir (which the zygote can write)."""
    if zygote.scratch_fd < 0:
        return False, None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open("exits", flags | os.O_DIRECTORY, dir_fd=zygote.scratch_fd)
    except OSError:
        return False, None
    try:
        fd = os.open(str(ns_pid), flags | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        os.close(dir_fd)
        return False, None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(256)
        os.unlink(str(ns_pid), dir_fd=dir_fd)
    except OSError:
        return True, None
    finally:
        os.close(dir_fd)
    try:
        return True, ExitStatus.from_json(json.loads(data))
    except ValueError:
        return True, None


_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


def passing_credentials(sock: stdsocket.socket | trio.socket.SocketType) -> None:
    """Have the kernel attach each sender's pid (as seen by us) to its messages."""
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PASSCRED, 1)


def _sender_pid(ancdata: list, what: str) -> int:
    for level, kind, payload in ancdata:
        if (level, kind) == (stdsocket.SOL_SOCKET, stdsocket.SCM_CREDENTIALS):
            return _UCRED.unpack(payload[: _UCRED.size])[0]
    raise SandboxError(f"{what}: a runtime message carried no credentials")


class RuntimeClosed(SandboxError):
    """The runtime closed its report channel before the phase ended (it exited)."""


async def next_report(
    sock: trio.socket.SocketType, phase: str, what: str, forked: list[int] | None = None
) -> int:
    """Read the runtime's reports until ``{phase: true}``; return the sender's host pid.

    ``phase`` is ``"started"`` (a leaf's runtime listens; the function's code
    is not imported yet) or ``"ready"`` (a leaf imported it; a zygote
    listens).  The pid comes from the kernel (SCM_CREDENTIALS, translated
    into our PID namespace), not from anything the sandbox says.  A zygote
    reports each package it preloaded; the process is then inspected from
    the host and :class:`ZygoteUnsuitable` raised if it is no longer fit to
    fork.  Raises :class:`RuntimeClosed` when the peer closes first and
    SandboxError when a zygote refuses the fork.  No timeout: the caller's
    cancel scope bounds each phase.  The zygote's fork reply (the child's pid
    in the zygote's namespace) is appended to ``forked``.
    """
    while True:
        try:
            msg, ancdata, _flags, _addr = await sock.recvmsg(
                65536, stdsocket.CMSG_SPACE(_UCRED.size)
            )
        except ConnectionResetError:
            msg = b""
        if not msg:
            raise RuntimeClosed(f"{what}: the sandbox exited before it was {phase}")
        data = json.loads(msg)
        if "imported" in data:
            package = str(data["imported"])
            problems = [data["error"]] if "error" in data else []
            if not problems:
                pid = _sender_pid(ancdata, what)
                problems = unfit_to_fork(pid, ignore_fds={0, 1, 2, data.get("channel_fd")})
            if problems:
                raise ZygoteUnsuitable(package, "; ".join(problems))
            await sock.send(b'{"ok": true}')
            continue
        if "error" in data:
            raise SandboxError(f"{what}: zygote refused the fork: {data['error']}")
        if forked is not None and isinstance(data.get("forked"), int):
            forked.append(data["forked"])
        if data.get(phase):
            return _sender_pid(ancdata, what)


def runtime_config(sb: SockSandbox, leaf_bpf: bytes) -> dict:
    """The JSON config the in-sandbox runtime starts with."""
    paths = [mount.target for mount in sb.meta.packages if mount.on_path]
    if sb.is_leaf:
        return {"mode": "leaf", "entry": sb.meta.entry, "paths": paths}
    return {
        "mode": "zygote",
        "imports": list(sb.meta.imports),
        "paths": paths,
        "preload": [[p.package, list(p.modules)] for p in sb.meta.preload],
        "leaf_seccomp": base64.b64encode(leaf_bpf).decode(),
    }


def _open_child_fds(sb: SockSandbox, stack: ExitStack) -> tuple[int, tuple[int, int], list[int]]:
    """Root dir fd, (stdout, stderr) pipe write ends and cgroup.procs fds for
    a new sandbox, closed with ``stack`` (the worker's copies of the write
    ends too: the sandbox then holds the only ones)."""
    root_fd = os.open(sb.root.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    stack.callback(os.close, root_fd)
    stdio = sb.prepared_stdio()
    stack.callback(stdio.close_write_ends)
    procs_fds = sb.prepared_cgroup().open_procs_fds()
    for fd in procs_fds:
        stack.callback(os.close, fd)
    return root_fd, stdio.write_fds, procs_fds


async def start(sb: SockSandbox, pool, parent: SafeSandbox | None) -> None:
    """Start ``sb``, fresh or forked from the zygote ``parent``, in two phases.

    1. *The sandbox starts*: the runtime runs and listens (a zygote also
       preloads its packages), within ``sandbox.ready_timeout_s``.  Exceeding
       it, or the runtime dying meanwhile, raises SandboxError: the
       sandbox's failure, which a caller may retry.  A fork holds the
       zygote's lock for this phase only; from its end the child counts as
       the zygote's (``child_added``: the zygote, whose PID namespace the
       child lives in, is not released under it).
    2. *The init phase* (leaves): the function's code is imported, within
       ``meta.limits.init_s``.  Exceeding it raises :class:`InitTimeout`;
       the process dying meanwhile raises :class:`InitDied` with the
       diagnosis (or SandboxError if its zygote died and took it along).
       Both are the function's failures, never to be retried as the
       sandbox's.  A forked child that fails here stops counting as the
       zygote's (``child_not_started``).

    On any error the caller releases ``sb``'s resources.
    """
    zygote = None if parent is None else parent.raw
    assert zygote is None or isinstance(zygote, SockSandbox)  # a SockPool's own
    if sb.is_leaf and sb.blocked is None:  # mapped by the leaf as it starts
        cfg = pool.config.sandbox
        sb.blocked = BlockedSyscalls.create(sb.scratch_fd, cfg.leaf_uid, cfg.leaf_gid)
    if parent is None:
        what = f"start {sb.id}"
        parent_end, child_end = stdsocket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_SEQPACKET)
        sock = trio.socket.from_stdlib_socket(parent_end)
    else:
        what = f"fork {sb.id} from {parent.id}"
        sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_SEQPACKET)
    with sock:
        passing_credentials(sock)
        if parent is None:
            with child_end:
                _spawn(sb, pool, child_end)
            pid = await _started(sb, sock, pool, what)
            if pid != sb.pid:
                raise SandboxError(f"{what}: the report came from pid {pid}, not {sb.pid}")
            _check_open(pool)
        else:
            assert zygote is not None
            async with parent._lock:  # serialised with the zygote's other calls
                parent.check_running("zygote")  # again, now that calls are serialised
                sb.zygote = zygote
                await _request_fork(zygote, sb, pool, sock)
                sb.pid = await _started(sb, sock, pool, what)
                try:
                    sb.pidfd = os.pidfd_open(sb.pid)
                    sb.ns_pid = pid_in_parent_namespace(sb.pid) or sb.ns_pid
                except ProcessLookupError:  # it died at once, and its zygote reaped it
                    if not sb.is_leaf:
                        raise SandboxError(f"{what}: it exited as soon as it started") from None
                    sb.exited.set()
                    raise await _init_death(sb, pool, zygote, what) from None
                if sb.pid not in first_hierarchy_pids(sb.cgroup):
                    raise SandboxError(f"{what}: pid {sb.pid} reported outside its cgroup")
                _check_open(pool)  # before child_added: the caller's cleanup cannot undo it
                parent.child_added()
        if sb.is_leaf:
            try:
                await _init_phase(sb, sock, pool, zygote, what)
            except BaseException:
                if parent is not None:
                    with trio.CancelScope(shield=True):
                        await parent.child_not_started()
                raise


def _check_open(pool) -> None:
    if pool.closing:
        raise shutting_down()


def shutting_down() -> SandboxError:
    """The error of a creation the pool's closing cut short (cause ``worker_shutdown``)."""
    err = SandboxError("the sandbox pool is shutting down")
    err.cause = Cause.of(CauseCode.WORKER_SHUTDOWN)
    return err


async def _started(sb: SockSandbox, sock: trio.socket.SocketType, pool, what: str) -> int:
    """Phase one: the runtime's pid once it reports started (a leaf) or ready (a zygote);
    a forked one's pid in its zygote's namespace goes to ``sb.ns_pid``."""
    timeout = pool.config.sandbox.ready_timeout_s
    forked: list[int] = []
    with trio.move_on_after(timeout):
        try:
            return await next_report(sock, "started" if sb.is_leaf else "ready", what, forked)
        finally:
            if forked:
                sb.ns_pid = forked[-1]
    raise SandboxError(f"{what}: not started within {timeout:g} s (sandbox.ready_timeout_s)")


async def _init_phase(
    sb: SockSandbox, sock: trio.socket.SocketType, pool, zygote: SockSandbox | None, what: str
) -> None:
    """Phase two: the leaf imports the function's code within ``meta.limits.init_s``."""
    limit = sb.meta.limits.init_s
    forked: list[int] = []  # the zygote's fork reply, if it came after "started"
    with trio.move_on_after(limit):
        try:
            pid = await next_report(sock, "ready", what, forked)
        except RuntimeClosed as exc:
            if forked:
                sb.ns_pid = forked[-1]
            raise await _init_death(sb, pool, zygote, what) from exc
        if forked:
            sb.ns_pid = forked[-1]
        if pid != sb.pid:
            raise SandboxError(f"{what}: the report came from pid {pid}, not {sb.pid}")
        _check_open(pool)
        return
    raise InitTimeout(limit)


async def _init_death(
    sb: SockSandbox, pool, zygote: SockSandbox | None, what: str
) -> OlactorsError:
    """Whose fault is a death during the init phase?  The function's
    (:class:`InitDied`, with the diagnosis), unless the pool is closing or
    the child's zygote died: the kernel kills a PID namespace's processes
    before the namespace's init (the zygote) is gone, so its exit is awaited
    briefly."""
    if zygote is not None:
        with trio.move_on_after(EXIT_GRACE_S):
            await zygote.exited.wait()
        if zygote.exited.is_set():
            err = SandboxError(f"{what}: its zygote {zygote.id} died while the child started")
            err.cause = Cause.of(CauseCode.ZYGOTE_DIED, zygote=zygote.id)
            return err
    if pool.closing:
        return shutting_down()
    if sb.pidfd >= 0:
        with trio.move_on_after(EXIT_GRACE_S):
            await trio.lowlevel.wait_readable(sb.pidfd)  # exited: its status is readable
    cause = await sb.diagnose(None)  # the kernel's verdict, else the exit status
    tail = sb.log_tail()
    detail = f"\n--- sandbox log ---\n{tail}" if tail.strip() else ""
    return InitDied(
        f"the sandbox died while importing the function's code: {cause.summary()}{detail}",
        cause,
    )


def _spawn(sb: SockSandbox, pool, child_end: stdsocket.socket) -> None:
    """Spawn the runtime of a fresh sandbox, reporting on ``child_end``."""
    sandbox_cfg = pool.config.sandbox
    python = pool.python
    with ExitStack() as stack:
        root_fd, (out_fd, err_fd), procs_fds = _open_child_fds(sb, stack)
        sb.pid = native.spawn(
            native.SpawnSpec(
                path=python,
                argv=[
                    python,
                    "-I",
                    "-S",
                    RUNTIME_ARGV_SCRIPT,
                    json.dumps(runtime_config(sb, pool.bpf["leaf"])),
                ],
                env=sandbox_env({**BASE_ENV, **sb.meta.env}),
                cgroup_procs_fds=procs_fds,
                netns_fd=pool.netns_fd(sb.network),
                root_fd=root_fd,
                hostname=sb.id,
                uid=sandbox_cfg.leaf_uid if sb.is_leaf else -1,
                gid=sandbox_cfg.leaf_gid if sb.is_leaf else -1,
                stdout_fd=out_fd,
                stderr_fd=err_fd,
                keep_fds=[child_end.fileno()],
                seccomp_bpf=pool.bpf["leaf" if sb.is_leaf else "zygote"],
                # called on the trio thread, which lives as long as the worker
                die_with_parent=True,
            )
        )
        sb.pidfd = os.pidfd_open(sb.pid)


async def _request_fork(
    parent: SockSandbox, sb: SockSandbox, pool, sock: trio.socket.SocketType
) -> None:
    """Ask ``parent``'s zygote to fork ``sb``; its reports then come on ``sock``.

    Two messages: the fds for the zygote, then the request for the child
    alone (hostname, identity, environment, config), which the zygote never
    reads, so no function's environment is left in the zygote's memory.
    """
    sandbox_cfg = pool.config.sandbox
    request = {
        "hostname": sb.id,
        "uid": sandbox_cfg.leaf_uid,
        "gid": sandbox_cfg.leaf_gid,
        "env": sandbox_env({**BASE_ENV, **sb.meta.env}),
        "config": runtime_config(sb, pool.bpf["leaf"]),
    }
    with ExitStack() as stack:
        root_fd, (out_fd, err_fd), procs_fds = _open_child_fds(sb, stack)
        with sandbox_socket(parent.scratch_fd, "zygote.sock") as path:
            try:
                await sock.connect(path)
            except ConnectionRefusedError as exc:
                raise ZygoteGone(parent.id, is_exiting(parent.pid)) from exc
        fds = array.array("i", [root_fd, out_fd, err_fd, *procs_fds])
        await sock.sendmsg([b"fork"], [(stdsocket.SOL_SOCKET, stdsocket.SCM_RIGHTS, fds)])
    await sock.send(json.dumps(request).encode())


def first_hierarchy_pids(cgroup) -> list[int]:
    """Members of the cgroup, read from one hierarchy (every member is in all)."""
    with open(cgroup.procs_files()[0]) as f:
        return [int(line) for line in f.read().split()]


def remove_sandbox_dir(sb: SockSandbox) -> None:
    """Delete the sandbox dir, but never through a mount point (the root must be
    unmounted first; if it still is a mount the dir is left and reported).
    Raises SandboxError if the dir is still there afterwards."""
    if sb.blocked is not None:
        sb.blocked.close()
    if sb.scratch_fd >= 0:
        os.close(sb.scratch_fd)
        sb.scratch_fd = -1
    if sb.root.mounted or os.path.ismount(sb.root.path):
        raise SandboxError(f"{sb.id}: root still mounted, not removing {sb.dir}")
    shutil.rmtree(sb.dir, ignore_errors=True)
    if os.path.lexists(sb.dir):
        raise SandboxError(f"{sb.id}: could not remove {sb.dir}")


@dataclass(frozen=True, slots=True)
class ReleaseReport:
    """What :func:`release_sandbox` could not free (``leftovers``, empty if
    nothing) and whether the sandbox's processes are gone."""

    processes_gone: bool
    leftovers: tuple[str, ...] = ()


async def release_sandbox(
    sb: SockSandbox, cgroups: CgroupPool, kill_timeout_s: float, *, reuse_cgroup: bool
) -> ReleaseReport:
    """Kill the sandbox's processes and free its cgroup, mounts and dir.

    Every step runs even if one before failed; each failure is logged and
    named in the report.  Safe to call again after a failure: the cgroup is
    handed back once (a cgroup that does not empty is kept by the cgroup pool,
    which retries its removal), the wait for the processes and the removal of
    the root and dir are retried.  The caller shields it from cancellation.
    """
    leftovers = []
    sb.killed = True
    if sb.cgroup is not None:
        cg, sb.cgroup = sb.cgroup, None
        try:
            await cgroups.release(cg, reuse=reuse_cgroup)
        except Exception as exc:
            log.exception("releasing cgroup of %s failed", sb.id)
            leftovers.append(f"cgroup: {exc}")
    gone = await sb.await_exit(kill_timeout_s)
    if not gone:
        leftovers.append(f"process {sb.pid} still running after kill")
    try:
        sb.root.unmount()
        await trio.to_thread.run_sync(remove_sandbox_dir, sb)
    except Exception as exc:
        log.exception("removing the root of %s failed", sb.id)
        leftovers.append(f"root or dir: {exc}")
    return ReleaseReport(gone, tuple(leftovers))
