"""Least privilege, read from the kernel: /proc/<pid>/status of real leaves
(fresh and forked, and the processes they start) and real zygotes (fresh,
and a child zygote forked from one)."""

from __future__ import annotations

import pytest

from olactors._capabilities import ZYGOTE_CAPABILITIES, ZYGOTE_MASK, names
from olactors.sock import Invocation, SandboxMeta

from .conftest import write_function

pytestmark = pytest.mark.root

CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")

# The leaf starts a program that waits, whose status the test reads from the host.
STARTS_A_CHILD = """
import subprocess
import sys

children = []


def f(event):
    argv = [sys.executable, "-I", "-S", "-c", "import time; time.sleep(60)"]
    children.append(subprocess.Popen(argv))
    return children[-1].pid
"""


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def capabilities(pid: int) -> dict[str, int]:
    status = proc_status(pid)
    return {field: int(status[field], 16) for field in CAP_FIELDS}


def assert_unprivileged(status: dict[str, str], uid: int, gid: int) -> None:
    for field in CAP_FIELDS:
        assert int(status[field], 16) == 0, (field, names(int(status[field], 16)))
    assert status["Uid"].split() == [str(uid)] * 4
    assert status["Gid"].split() == [str(gid)] * 4
    assert status["Groups"] == ""
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


@pytest.mark.parametrize("kind", ["fresh", "forked"])
async def test_a_leaf_holds_no_capability(pool, tmp_path, kind):
    code = write_function(tmp_path, "caps", "def f(event):\n    return event\n")
    zygote = None
    if kind == "forked":
        zygote = await pool.create(None, False, None, None, SandboxMeta())
    leaf = await pool.create(zygote, True, str(code), None, SandboxMeta())
    uid, gid = pool.config.sandbox.leaf_uid, pool.config.sandbox.leaf_gid
    assert_unprivileged(proc_status(leaf.raw.pid), uid, gid)


async def test_what_a_leaf_starts_holds_no_capability(pool, tmp_path):
    """A program the leaf execs gets nothing back (no file capabilities, no
    setuid: no_new_privs; and nothing in inheritable or ambient to pass on)."""
    code = write_function(tmp_path, "caps", STARTS_A_CHILD)
    zygote = await pool.create(None, False, None, None, SandboxMeta())
    uid, gid = pool.config.sandbox.leaf_uid, pool.config.sandbox.leaf_gid
    for parent in (None, zygote):
        leaf = await pool.create(parent, True, str(code), None, SandboxMeta())
        assert (await leaf.invoke(Invocation(body=b"null"))).status == 200
        children = [pid for pid in leaf.raw.pids() if pid != leaf.raw.pid]
        assert len(children) == 1, children
        assert_unprivileged(proc_status(children[0]), uid, gid)


async def test_a_zygote_keeps_only_its_fork_path_capabilities(pool, tmp_path):
    zygote = await pool.create(None, False, None, None, SandboxMeta())
    child_zygote = await pool.create(zygote, False, None, None, SandboxMeta())
    for sb in (zygote, child_zygote):
        caps = capabilities(sb.raw.pid)
        assert caps["CapBnd"] == ZYGOTE_MASK, names(caps["CapBnd"])
        assert caps["CapPrm"] == caps["CapEff"] == ZYGOTE_MASK, names(caps["CapPrm"])
        assert caps["CapInh"] == caps["CapAmb"] == 0
        assert proc_status(sb.raw.pid)["Uid"].split() == ["0"] * 4
    assert sorted(names(ZYGOTE_MASK)) == sorted(f"CAP_{c.name}" for c in ZYGOTE_CAPABILITIES)
    # ... and that is enough to fork a working leaf from each.
    code = write_function(tmp_path, "echo", "def f(event):\n    return event\n")
    for sb in (zygote, child_zygote):
        leaf = await pool.create(sb, True, str(code), None, SandboxMeta())
        assert (await leaf.invoke(Invocation(body=b"7"))).body == b"7"
