"""Secrets at the sandbox layer (root, real sandboxes): a forked and a fresh leaf
get /run/secrets before their code is imported; a zygote whose pre-imported
code keeps the child's root dir fd (so it could reach the secrets later) makes
the worker refuse to mount them, and the value never reaches the zygote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from olactors._errors import SandboxError
from olactors._secrets import SecretFile
from olactors.sock import Invocation, PackageMount, Preload, SandboxMeta

from .conftest import mounts_mentioning, write_function
from .test_secrets_worker import memory_holds

pytestmark = pytest.mark.root

VALUE = b"tok-sandbox-layer-0123456789abcdef"
SECRETS = (SecretFile("DB", 1, VALUE),)

READ = """
import os
AT_IMPORT = open("/run/secrets/DB").read() if os.path.exists("/run/secrets/DB") else None

def f(event):
    flags = os.statvfs("/run/secrets").f_flag
    mount = {n: bool(flags & getattr(os, "ST_" + n.upper())) for n in ("rdonly", "nosuid", "nodev")}
    return {"at_import": AT_IMPORT, "files": sorted(os.listdir("/run/secrets")), "mount": mount}
"""

#: /run/secrets is read-only, and neither set-uid files nor device nodes work there.
SEALED = {"rdonly": True, "nosuid": True, "nodev": True}

#: Pre-imported by a zygote: from then on it keeps a copy of every directory
#: fd it closes, the root dir fd of each child it forks among them.
KEEPER = """
import os
import stat

_close = os.close
KEPT = []


def close(fd):
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            KEPT.append(os.dup(fd))
    except OSError:
        pass
    _close(fd)


os.close = close
"""


def package(tmp_path: Path, name: str, source: str) -> PackageMount:
    site = tmp_path / "pkgs" / name
    site.mkdir(parents=True)
    (site / f"{name}.py").write_text(source)
    return PackageMount(str(site), f"/packages/{name}/1.0")


async def call(sb) -> dict:
    result = await sb.invoke(Invocation(body=b""))
    assert result.status == 200, result
    return json.loads(result.body)


async def zygote_with(pool, tmp_path: Path, name: str, source: str):
    mount = package(tmp_path, name, source)
    meta = SandboxMeta(packages=(mount,), preload=(Preload(name, (name,)),))
    return await pool.create(None, False, None, None, meta), mount


async def test_forked_and_fresh_leaves_get_their_secrets_before_import(pool, tmp_path):
    code = str(write_function(tmp_path, "reader", READ))
    zygote, mount = await zygote_with(pool, tmp_path, "plain", "VALUE = 1\n")
    meta = SandboxMeta(packages=(mount,), secrets=SECRETS)
    forked = await pool.create(zygote, True, code, None, meta)
    fresh = await pool.create(None, True, code, None, meta)
    for sb in (forked, fresh):
        assert await call(sb) == {"at_import": VALUE.decode(), "files": ["DB"], "mount": SEALED}
    bare = await pool.create(zygote, True, code, None, SandboxMeta(packages=(mount,)))
    assert (await call(bare))["files"] == []  # its own empty dir
    for pid in zygote.raw.pids():
        assert not memory_holds(pid, VALUE)


async def test_a_zygote_that_keeps_the_childs_root_gets_no_secret_mounted(pool, tmp_path):
    code = str(write_function(tmp_path, "reader", READ))
    zygote, mount = await zygote_with(pool, tmp_path, "keeper", KEEPER)
    with pytest.raises(SandboxError, match="still reaches its root"):
        await pool.create(zygote, True, code, None, SandboxMeta(packages=(mount,), secrets=SECRETS))
    assert mounts_mentioning("run/secrets") == []
    for pid in zygote.raw.pids():
        assert not memory_holds(pid, VALUE)
    # Without secrets the same zygote still forks (nothing to protect).
    leaf = await pool.create(zygote, True, code, None, SandboxMeta(packages=(mount,)))
    assert (await call(leaf))["at_import"] is None
