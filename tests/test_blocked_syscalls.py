"""Blocked syscalls are named: a leaf's seccomp filter traps what it denies,
the SIGSYS handler (libolsigsys.so) records the number and answers EPERM, the
worker reads the names per call (olactors/sock/_blocked.py)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from olactors._errors import SandboxDead
from olactors.sock import Invocation, SandboxMeta, seccomp
from olactors.sock._blocked import LIBRARY, MAP_BYTES, BlockedSyscalls, syscall_names
from olactors.sock.runtime import _sigsys

from .conftest import write_function

RUNTIME_DIR = os.path.dirname(LIBRARY)

FUNCTION = """
import ctypes, errno, os, subprocess, sys

libc = ctypes.CDLL(None, use_errno=True)
MOUNT_NR = {mount_nr}


def mount():
    ctypes.set_errno(0)
    if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) != 0:
        err = ctypes.get_errno()
        raise PermissionError(err, os.strerror(err)) if err == errno.EPERM else OSError(err, "")
    return "mounted"


def f(event):
    what = event["do"]
    if what == "mount":
        try:
            mount()
        except PermissionError as exc:
            return {{"errno": exc.errno}}
    if what == "ptrace":
        ctypes.set_errno(0)
        ret = libc.ptrace(0, 0, None, None)  # PTRACE_TRACEME
        return {{"ret": ret, "errno": ctypes.get_errno()}}
    if what == "raise":
        mount()
    if what == "die":
        try:
            mount()
        except PermissionError:
            os._exit(3)  # pid 1 of its namespace: a signal to itself is ignored
    if what == "subprocess":
        code = (
            "import ctypes; l = ctypes.CDLL(None, use_errno=True); "
            "print(l.syscall({{nr}}, 0, 0, 0, 0, 0), ctypes.get_errno())"
        ).format(nr=MOUNT_NR)
        out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True)
        return {{"out": out.stdout.decode(), "rc": out.returncode}}
    if what == "allowed":
        with open("/tmp/x", "w") as fh:
            fh.write(str(os.getpid()))
        return {{"pid": os.getpid(), "files": os.listdir("/tmp")}}
    if what == "loop":
        syscall = libc.syscall
        for _ in range(event["n"]):
            syscall(MOUNT_NR, 0, 0, 0, 0, 0)
        return {{"errno": ctypes.get_errno()}}
    return None
"""

MOUNT_NR = 165 if os.uname().machine == "x86_64" else 40


# ----------------------------------------------------------- without sandboxes
def test_names_are_the_native_syscalls_sorted():
    bitmap = bytearray(MAP_BYTES)
    for nr in (MOUNT_NR, 101, 0):  # mount, ptrace (x86_64), read
        bitmap[nr >> 3] |= 1 << (nr & 7)
    names = syscall_names(bytes(bitmap))
    if os.uname().machine == "x86_64":
        assert names == ("mount", "ptrace", "read")
    assert syscall_names(bytes(MAP_BYTES)) == ()


def _child(code: str, env: dict[str, str], tmp_path) -> subprocess.CompletedProcess[str]:
    leaf = tmp_path / "leaf.bpf"
    leaf.write_bytes(seccomp.compile_profile("leaf"))
    prelude = textwrap.dedent(
        f"""
        import ctypes, json, os, sys
        sys.path.insert(0, {RUNTIME_DIR!r})
        import _linux
        libc = ctypes.CDLL(None, use_errno=True)
        def install():
            with open({str(leaf)!r}, "rb") as fh:
                _linux.install_seccomp(fh.read())
        """
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_leaf_filter_traps_without_the_handler(tmp_path):
    """The leaf's filter traps (SIGSYS kills a program without the handler):
    what a statically linked program exec'd in a sandbox gets."""
    proc = _child("install()\nlibc.syscall(165 if os.uname().machine == 'x86_64' else 40)\n",
                  {"PATH": "/usr/bin:/bin"}, tmp_path)  # fmt: skip
    assert proc.returncode == -signal.SIGSYS, proc.stderr


def test_handler_answers_eperm_and_records_into_its_map(tmp_path):
    scratch = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        blocked = BlockedSyscalls.create(scratch, -1, -1)
    finally:
        os.close(scratch)
    try:
        code = f"""
        sys.path.insert(0, {RUNTIME_DIR!r})
        import _sigsys
        _sigsys.attach({str(tmp_path / "blocked-syscalls")!r})
        install()
        ctypes.set_errno(0)
        ret = libc.mount(b"none", b"/", b"tmpfs", 0, None)
        print(json.dumps([ret, ctypes.get_errno(), libc.getpid() == os.getpid()]))
        """
        proc = _child(code, {"PATH": "/usr/bin:/bin"}, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == [-1, errno.EPERM, True]
        assert blocked.read() == ("mount",)
        blocked.reset()
        assert blocked.read() == ()
    finally:
        blocked.close()
    assert _sigsys.MAP_PATH == "/host/blocked-syscalls"


# -------------------------------------------------------------- real sandboxes
@pytest.fixture
def code(tmp_path):
    return str(write_function(tmp_path, "blocky", FUNCTION.format(mount_nr=MOUNT_NR)))


async def _leaf(pool, code, forked: bool):
    zygote = await pool.create(None, False, None, None, SandboxMeta()) if forked else None
    leaf = await pool.create(zygote, True, code, None, SandboxMeta())
    return zygote, leaf


async def _call(leaf, event) -> tuple[int, dict, tuple[str, ...]]:
    result = await leaf.invoke(Invocation(body=json.dumps(event).encode()))
    return result.status, json.loads(result.body), leaf.raw.blocked_syscalls()


async def _cleanup(zygote, leaf) -> None:
    from olactors._causes import Cause, CauseCode

    done = Cause.of(CauseCode.RELEASED, why="test done")
    for sb in (leaf, zygote):
        if sb is not None:
            await sb.destroy(done)


@pytest.mark.root
@pytest.mark.parametrize("forked", [False, True], ids=["fresh", "forked"])
async def test_blocked_syscalls_are_named_per_call(pool, code, forked):
    zygote, leaf = await _leaf(pool, code, forked)
    try:
        status, body, blocked = await _call(leaf, {"do": "mount"})
        assert (status, body, blocked) == (200, {"errno": errno.EPERM}, ("mount",))

        status, body, blocked = await _call(leaf, {"do": "allowed"})
        assert status == 200 and blocked == (), (body, blocked)

        status, body, blocked = await _call(leaf, {"do": "ptrace"})
        assert (status, body, blocked) == (200, {"ret": -1, "errno": errno.EPERM}, ("ptrace",))

        status, body, blocked = await _call(leaf, {"do": "raise"})
        assert status == 500 and body["type"] == "PermissionError", body
        assert blocked == ("mount",)

        # A program the function starts is named too (it inherits LD_PRELOAD).
        status, body, blocked = await _call(leaf, {"do": "subprocess"})
        assert status == 200 and body == {"out": f"-1 {errno.EPERM}\n", "rc": 0}, body
        assert blocked == ("mount",)
    finally:
        await _cleanup(zygote, leaf)


@pytest.mark.root
@pytest.mark.parametrize("forked", [False, True], ids=["fresh", "forked"])
async def test_blocked_syscall_of_a_call_that_killed_its_sandbox_is_named(pool, code, forked):
    zygote, leaf = await _leaf(pool, code, forked)
    try:
        with pytest.raises(SandboxDead):
            await leaf.invoke(Invocation(body=b'{"do": "die"}'))
        assert leaf.raw.blocked_syscalls() == ("mount",)  # kept after its release
    finally:
        await _cleanup(zygote, None)


def _cpu_s() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.root
async def test_tight_loop_of_blocked_calls_costs_the_worker_nothing(pool, code):
    zygote, leaf = await _leaf(pool, code, forked=True)
    try:
        before = _cpu_s()
        status, body, blocked = await _call(leaf, {"do": "loop", "n": 1_000_000})
        spent = _cpu_s() - before
        assert (status, body, blocked) == (200, {"errno": errno.EPERM}, ("mount",))
        print(f"worker CPU while the sandbox made 1,000,000 blocked calls: {spent:.3f} s")
        assert spent < 0.5
    finally:
        await _cleanup(zygote, leaf)


def test_a_pool_does_not_start_without_the_handler_library(monkeypatch, tmp_path):
    from olactors._errors import ConfigError

    monkeypatch.setattr(seccomp, "SIGSYS_LIBRARY", tmp_path / "libolsigsys.so")
    with pytest.raises(ConfigError, match="libolsigsys.so is missing"):
        seccomp.compile_profiles()
