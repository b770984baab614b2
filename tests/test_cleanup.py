"""`olactors cleanup` after a worker killed with SIGKILL leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from olactors.sock import worker_id

from .conftest import olactors_cgroups, run_cli, write_function

pytestmark = pytest.mark.root

WORKER = textwrap.dedent(
    """
    import json, sys, pathlib, trio
    from olactors._config import build_config
    from olactors.sock import open_sock_pool, prepare_worker_process, SandboxMeta, Invocation
    prepare_worker_process()
    async def main(wd, code):
        async with open_sock_pool(build_config(None), pathlib.Path(wd)) as pool:
            fresh = await pool.create(None, True, code, None, SandboxMeta())
            zygote = await pool.create(None, False, None, None, SandboxMeta())
            child = await pool.create(zygote, True, code, None, SandboxMeta())
            await child.invoke(Invocation(body=b"1"))
            await fresh.pause()
            print(json.dumps([fresh.raw.pid, zygote.raw.pid, child.raw.pid]), flush=True)
            await trio.sleep(60)
    trio.run(main, sys.argv[1], sys.argv[2])
    """
)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cleanup_after_sigkill(worker_dir, tmp_path):
    code = write_function(tmp_path, "echo", "def f(e):\n    return e\n")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(worker_dir), str(code)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = worker.stdout.readline()
        assert line, "worker did not start"
        pids = json.loads(line)
        wid = worker_id(worker_dir)
        assert any(f"olactors-{wid}" in c for c in olactors_cgroups())
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
    assert (worker_dir / "run").exists()
    result = run_cli("cleanup", "--path", str(worker_dir))
    assert result.returncode == 0, result.stderr
    assert "removed cgroup subtree" in result.stdout
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "sandbox processes survived cleanup"
    assert not [c for c in olactors_cgroups() if f"olactors-{wid}" in c]
    assert not (worker_dir / "run").exists()
    with open("/proc/self/mountinfo") as f:
        assert str(worker_dir) not in f.read()
    again = run_cli("cleanup", "--path", str(worker_dir))
    assert again.returncode == 0 and again.stdout.strip() == "nothing to clean"


def test_cleanup_of_missing_dir_is_harmless(tmp_path):
    result = run_cli("cleanup", "--path", str(tmp_path / "nope"))
    assert result.returncode == 0
    assert "nothing to clean" in result.stdout


def test_pool_refuses_leftovers_of_a_dead_worker(worker_dir):
    import trio

    from olactors._config import build_config
    from olactors._errors import SandboxError
    from olactors.sock import open_sock_pool

    (worker_dir / "run" / "sandboxes" / "sb-1").mkdir(parents=True)

    async def start():
        async with open_sock_pool(build_config(None), worker_dir):
            pass

    with pytest.raises(SandboxError, match="olactors cleanup"):
        trio.run(start)
    os.rmdir(worker_dir / "run" / "sandboxes" / "sb-1")
