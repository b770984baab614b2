"""The real SOCK sandbox: a process tree in its own cgroup, namespaces and root.

A fresh sandbox is spawned by the native layer (join cgroups, new PID/UTS/IPC
namespaces, network namespace, chroot, identity, no_new_privs, seccomp, exec
``python -I -S /runtime/server.py``).  A forked sandbox is cloned by its parent
zygote, which receives the child's root dir fd, stdout and stderr pipes and
cgroup.procs fds over SCM_RIGHTS; the child enters them before anything else
runs (see ``_stdio.py`` for where its output goes).  Either
way, "created" means the runtime listens on its socket and, for a leaf, has
imported the function's code: two phases with limits of their own (see
:func:`olactors.sock._start.start`), so a slow import is told apart from a
sandbox that failed.  This module holds the sandbox's mechanics, its
diagnosis and its release; ``_start.py`` starts it.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .._causes import Cause, CauseCode, SignalSender
from .._errors import SandboxError
from .._records import NO_OUTPUT, CallOutput
from ._api import Invocation, InvocationResult, SandboxCallUsage, SandboxMeta, SandboxUsage
from ._blocked import BlockedSyscalls
from ._client import BadResponse, LeafClient, ResponseLimits
from ._rootfs import SandboxRoot
from ._safe import ReleaseFailed
from ._stdio import SandboxStdio
from .cgroups import Cgroup, CgroupPool

if TYPE_CHECKING:
    from ._netns import NetworkNamespace
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
    #: Its scratch dir is in its writable space (not one its creator gave).
    own_scratch: bool = True
    pid: int = 0
    pidfd: int = -1
    scratch_fd: int = -1
    exit_status: ExitStatus | None = None
    #: A forked leaf's zygote and its pid in the zygote's namespace (for the
    #: exit status the zygote forwards).
    zygote: SockSandbox | None = None
    ns_pid: int = 0
    #: A forked sandbox's zygote sent its fork reply (it no longer holds the child's fds).
    fork_replied: bool = False
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
    #: A leaf's network namespace, its function's (see _netns.py).
    netns: NetworkNamespace | None = None

    # ------------------------------------------------------------ mechanics
    async def connect(self) -> trio.SocketStream:
        """A new connection to the leaf's ``ol.sock``."""
        with sandbox_socket(self.scratch_fd, "ol.sock") as path:
            return await trio.open_unix_socket(path)

    async def invoke(self, request: Invocation) -> InvocationResult:
        if self.client is None:
            self.client = LeafClient(self.connect, ResponseLimits.of(self.pool.config.limits))
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

    def call_usage(self) -> SandboxCallUsage:
        return self.prepared_cgroup().call_usage()

    def pids(self) -> list[int]:
        """Host pids of every process in the sandbox (its cgroup's members)."""
        if self.cgroup is None:
            return []
        try:
            return first_hierarchy_pids(self.cgroup)
        except OSError:
            return []

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        """The end of its log (what it wrote outside calls), once what is
        still in its pipes has been moved there."""
        if self.stdio is None:
            return ""
        self.stdio.drain()
        return self.stdio.log.tail(max_bytes)

    async def diagnose(self, error: BaseException | None) -> Cause:
        """Why did it die (or fail with ``error``)?  A malformed answer first
        (``bad_response``: it lives; or its socket swapped for something
        else), a forked leaf whose zygote died
        (``zygote_died``), the kernel's own verdicts (the cgroup's OOM kills,
        then its pids-limit hits), the exit status (a forked leaf's is
        forwarded by its zygote), then the error the caller saw; ``unknown``
        only when none of these tells."""
        if isinstance(error, (BadResponse, SocketRedirected)):
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
    if sb.root.is_mounted():
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
