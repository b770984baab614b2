"""Starting a SOCK sandbox: spawning a fresh one or asking a zygote to fork
one, then waiting for its runtime's reports in two phases (see :func:`start`).

A fresh sandbox is spawned by the native layer on the trio thread (a
``CLONE_VFORK`` that returns at ``execve``; its parent-death signal is tied
to that thread).  A forked one is cloned by its zygote, which receives the
child's root dir fd, stdout and stderr pipes and cgroup.procs fds over
SCM_RIGHTS, then a request only the child reads.  The reports come over a
SOCK_SEQPACKET socket with the sender's pid attached by the kernel.
"""

from __future__ import annotations

import array
import base64
import json
import logging
import os
import socket as stdsocket
import struct
from collections.abc import Awaitable, Callable
from contextlib import ExitStack

import trio

from .. import native
from .._capabilities import ZYGOTE_MASK
from .._causes import Cause, CauseCode
from .._errors import (
    InitBadReport,
    InitDied,
    InitTimeout,
    OlactorsError,
    SandboxError,
    ZygoteUnsuitable,
)
from ._blocked import BlockedSyscalls, sandbox_env
from ._procfs import proc_mount
from ._safe import SafeSandbox
from ._secretfs import SECRETS_MOUNTED, holding, mount_secrets
from ._sock import (
    BASE_ENV,
    EXIT_GRACE_S,
    RUNTIME_ARGV_SCRIPT,
    SockSandbox,
    first_hierarchy_pids,
    pid_in_parent_namespace,
    sandbox_socket,
)
from ._suitability import unfit_to_fork

log = logging.getLogger("olactors.sandbox")


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


_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
#: The worker's word to a forked child that its /proc is mounted.
PROC_MOUNTED = b'{"proc": true}'


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


class BadReport(SandboxError):
    """Something the runtime never sends came over its report channel."""


def _parse_report(msg: bytes, what: str) -> dict:
    try:
        data = json.loads(msg)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise BadReport(f"{what}: its start channel carried {msg[:60]!r}, not a report")
    return data


async def _receive_report(
    sock: trio.socket.SocketType, what: str, phase: str
) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """One report and its ancillary data (the sender's credentials);
    :class:`RuntimeClosed` when the peer closed before reaching ``phase``."""
    try:
        msg, ancdata, _flags, _addr = await sock.recvmsg(65536, stdsocket.CMSG_SPACE(_UCRED.size))
    except ConnectionResetError:
        msg = b""
    if not msg:
        raise RuntimeClosed(f"{what}: the sandbox exited before it was {phase}")
    return msg, ancdata


async def import_report(
    sock: trio.socket.SocketType,
    leaf_pid: int,
    zygote_pid: int | None,
    what: str,
    forked: list[int],
) -> None:
    """Phase two's reports, until the leaf's ``{"ready": true}``; the fork
    replies its zygote sent meanwhile (the child's pid in its namespace) are
    appended to ``forked``.

    The function's code runs in this phase and can write on the channel
    too, so only these are taken, each from its kernel-given sender: the
    leaf's own ``{"ready": true}`` and its zygote's ``{"forked": n}``.
    Anything else raises :class:`BadReport`.
    """
    while True:
        msg, ancdata = await _receive_report(sock, what, "ready")
        data = _parse_report(msg, what)
        sender = _sender_pid(ancdata, what)
        if sender == leaf_pid and data == {"ready": True}:
            return
        fork_reply = data.get("forked")
        if sender == zygote_pid and list(data) == ["forked"] and type(fork_reply) is int:
            forked.append(fork_reply)
            continue
        raise BadReport(
            f"{what}: its start channel carried {msg[:60]!r} from pid {sender} while "
            "the function's code was imported"
        )


async def next_report(
    sock: trio.socket.SocketType,
    phase: str,
    what: str,
    forked: list[int] | None = None,
    on_namespaces: Callable[[int], Awaitable[None]] | None = None,
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
    in the zygote's namespace) is appended to ``forked``.  A forked child's
    ``{"namespaces": true}`` (its PID namespace exists: mount its /proc) is
    handed to ``on_namespaces`` with the sender's pid.
    """
    while True:
        msg, ancdata = await _receive_report(sock, what, phase)
        data = _parse_report(msg, what)
        if data.get("namespaces") and on_namespaces is not None:
            await on_namespaces(_sender_pid(ancdata, what))
            continue
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
        # Only that secrets come (see _secretfs.py): never a name or a value.
        secrets = {"secrets": True} if sb.meta.secrets else {}
        return {"mode": "leaf", "entry": sb.meta.entry, "paths": paths, **secrets}
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
       child lives in, is not released under it).  A leaf with secrets gets
       them at the very end of this phase, once its report was checked
       (``_deliver_secrets``, see ``_secretfs.py``): its import waits for them.
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
            if sb.meta.secrets:
                await _deliver_secrets(sb, sock, pool, what)
        else:
            assert zygote is not None
            async with parent._lock:  # serialised with the zygote's other calls
                parent.check_running("zygote")  # again, now that calls are serialised
                sb.zygote = zygote
                await _request_fork(zygote, sb, pool, sock)
                pid = await _started(sb, sock, pool, what, _proc_mounter(sb, pool, sock, what))
                if sb.pidfd < 0 or pid != sb.pid:
                    raise SandboxError(f"{what}: pid {pid} started, not the one given a /proc")
                sb.ns_pid = pid_in_parent_namespace(sb.pid) or sb.ns_pid
                if sb.process_gone():  # it died at once, and its zygote reaped it
                    if not sb.is_leaf:
                        raise SandboxError(f"{what}: it exited as soon as it started")
                    sb.reap(block=True)  # not ours to reap: this closes its pidfd
                    raise await _init_death(sb, pool, zygote, what)
                if sb.pid not in first_hierarchy_pids(sb.cgroup):
                    raise SandboxError(f"{what}: pid {sb.pid} reported outside its cgroup")
                if sb.meta.secrets:  # at once: the leaf's import waits for them
                    await _deliver_secrets(sb, sock, pool, what)
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


async def _started(
    sb: SockSandbox,
    sock: trio.socket.SocketType,
    pool,
    what: str,
    on_namespaces: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """Phase one: the runtime's pid once it reports started (a leaf) or ready (a zygote);
    a forked one's pid in its zygote's namespace goes to ``sb.ns_pid``."""
    timeout = pool.config.sandbox.ready_timeout_s
    forked: list[int] = []
    phase = "started" if sb.is_leaf else "ready"
    with trio.move_on_after(timeout):
        try:
            return await next_report(sock, phase, what, forked, on_namespaces)
        finally:
            if forked:
                sb.ns_pid = forked[-1]
                sb.fork_replied = True
    raise SandboxError(f"{what}: not started within {timeout:g} s (sandbox.ready_timeout_s)")


async def _deliver_secrets(sb: SockSandbox, sock: trio.socket.SocketType, pool, what: str) -> None:
    """Mount a started leaf's secrets, then let it import its code (see
    ``_secretfs.py``).  A forked leaf's zygote must have replied first: it
    closes its copies of the child's fds (its root dir among them) before
    it replies.  Within ``sandbox.ready_timeout_s``; a failure is the
    sandbox's (SandboxError)."""
    timeout = pool.config.sandbox.ready_timeout_s
    with trio.move_on_after(timeout):
        if sb.zygote is not None and not sb.fork_replied:
            forked: list[int] = []
            await next_report(sock, "forked", what, forked)
            sb.ns_pid = forked[-1]
            sb.fork_replied = True
        cfg = pool.config.sandbox
        root = str(sb.root.path)
        if sb.zygote is not None:
            held = holding(sb.zygote.pids(), root)
            if held:
                raise SandboxError(
                    f"{what}: its zygote still reaches its root ({'; '.join(held)}); "
                    "not mounting its secrets"
                )
        try:
            mount_secrets(root, sb.meta.secrets, cfg.leaf_uid, cfg.leaf_gid)
        except OSError as exc:
            raise SandboxError(f"{what}: mounting its secrets failed: {exc}") from exc
        await sock.send(SECRETS_MOUNTED)
        return
    raise SandboxError(f"{what}: its zygote did not confirm the fork within {timeout:g} s")


async def _init_phase(
    sb: SockSandbox, sock: trio.socket.SocketType, pool, zygote: SockSandbox | None, what: str
) -> None:
    """Phase two: the leaf imports the function's code within ``meta.limits.init_s``."""
    limit = sb.meta.limits.init_s
    forked: list[int] = []  # the zygote's fork reply, if it came after "started"
    with trio.move_on_after(limit):
        try:
            await import_report(sock, sb.pid, None if zygote is None else zygote.pid, what, forked)
        except RuntimeClosed as exc:
            _take_fork_reply(sb, forked)
            raise await _init_death(sb, pool, zygote, what) from exc
        except BadReport as exc:
            raise InitBadReport(
                exc.message, Cause.of(CauseCode.BAD_RESPONSE, reason=exc.message)
            ) from exc
        _take_fork_reply(sb, forked)
        _check_open(pool)
        return
    raise InitTimeout(limit)


def _take_fork_reply(sb: SockSandbox, forked: list[int]) -> None:
    """The child's pid in its zygote's namespace from the zygote's reply,
    unless the kernel already told it (``pid_in_parent_namespace``)."""
    if forked and sb.ns_pid <= 0:
        sb.ns_pid = forked[-1]


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


def _proc_mounter(
    sb: SockSandbox, pool, sock: trio.socket.SocketType, what: str
) -> Callable[[int], Awaitable[None]]:
    """What the worker does when a forked child reports its namespaces (its
    first act, before it joins its cgroups and enters its root): take its
    pidfd, mount its /proc (see ``_procfs.py``) and tell it so; it runs no
    function or package code before that word.  Once only."""

    async def mount(pid: int) -> None:
        if sb.pidfd >= 0:
            raise SandboxError(f"{what}: a second namespaces report (pid {pid})")
        try:
            sb.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise SandboxError(f"{what}: the child exited as soon as it was forked") from None
        sb.pid = pid
        pool.procs.mount_for(str(sb.root.path), pid, sb.pidfd)
        await sock.send(PROC_MOUNTED)

    return mount


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
                netns_fd=pool.netns_fd(sb),
                root_fd=root_fd,
                hostname=sb.id,
                uid=sandbox_cfg.leaf_uid if sb.is_leaf else -1,
                gid=sandbox_cfg.leaf_gid if sb.is_leaf else -1,
                stdout_fd=out_fd,
                stderr_fd=err_fd,
                keep_fds=[child_end.fileno()],
                seccomp_bpf=pool.bpf["leaf" if sb.is_leaf else "zygote"],
                cap_keep=0 if sb.is_leaf else ZYGOTE_MASK,
                # called on the trio thread, which lives as long as the worker
                die_with_parent=True,
                proc=proc_mount(str(sb.root.path)),
            )
        )
        sb.pidfd = os.pidfd_open(sb.pid)


async def _request_fork(
    parent: SockSandbox, sb: SockSandbox, pool, sock: trio.socket.SocketType
) -> None:
    """Ask ``parent``'s zygote to fork ``sb``; its reports then come on ``sock``.

    Two messages: the fds for the zygote (the child's root dir, stdout,
    stderr, network namespace and cgroup.procs files), then the request for the child
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
        netns_fd = pool.netns_fd(sb)  # the function's: the zygote is shared by many
        with sandbox_socket(parent.scratch_fd, "zygote.sock") as path:
            try:
                await sock.connect(path)
            except ConnectionRefusedError as exc:
                raise ZygoteGone(parent.id, is_exiting(parent.pid)) from exc
        fds = array.array("i", [root_fd, out_fd, err_fd, netns_fd, *procs_fds])
        await sock.sendmsg([b"fork"], [(stdsocket.SOL_SOCKET, stdsocket.SCM_RIGHTS, fds)])
    await sock.send(json.dumps(request).encode())
