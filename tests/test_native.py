"""The native layer: failures are OSErrors that say what was being done."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from olactors import native

pytestmark = pytest.mark.root


def test_spawn_failure_names_the_step(tmp_path):
    spec = native.SpawnSpec(path="/nonexistent/python", argv=["x"], env={}, clone_flags=0)
    with pytest.raises(native.NativeError) as info:
        native.spawn(spec)
    assert info.value.errno == errno.ENOENT
    assert "execve" in str(info.value) and "/nonexistent/python" in str(info.value)
    bad_root = native.SpawnSpec(
        path="/bin/true", argv=["true"], env={}, root_fd=9999, clone_flags=0
    )
    with pytest.raises(native.NativeError) as info:
        native.spawn(bad_root)
    assert info.value.errno == errno.EBADF and "chroot" in str(info.value)


def test_spawn_runs_in_new_namespaces_with_hostname(tmp_path):
    r, w = os.pipe()
    spec = native.SpawnSpec(
        path="/bin/sh",
        argv=["sh", "-c", "echo $$ $(hostname)"],
        env={"PATH": "/usr/bin:/bin"},
        hostname="spawned-test",
        stdout_fd=w,
    )
    pid = native.spawn(spec)
    os.close(w)
    out = os.read(r, 1000).decode().split()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert out == ["1", "spawned-test"]


def test_mount_errors_carry_paths(tmp_path):
    with pytest.raises(native.NativeError) as info:
        native.bind(str(tmp_path / "missing"), str(tmp_path), readonly=True)
    assert info.value.errno == errno.ENOENT
    assert str(tmp_path / "missing") in str(info.value)
    with pytest.raises(native.NativeError) as info:
        native.umount(str(tmp_path / "not-a-mount"))
    assert "umount" in str(info.value)


def test_readonly_bind_and_tmpfs(tmp_path):
    src, dst, tmp = tmp_path / "src", tmp_path / "dst", tmp_path / "tmp"
    for d in (src, dst, tmp):
        d.mkdir()
    (src / "file").write_text("hello")
    native.bind(str(src), str(dst), readonly=True)
    native.mount_tmpfs(str(tmp), size_bytes=1 << 20)
    try:
        assert (dst / "file").read_text() == "hello"
        with pytest.raises(OSError) as info:
            (dst / "new").write_text("x")
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError) as info:
            (tmp / "big").write_bytes(b"x" * (2 << 20))
        assert info.value.errno == errno.ENOSPC
    finally:
        native.umount(str(dst))
        native.umount(str(tmp))


def test_network_namespace_is_empty_and_distinct():
    fd = native.new_network_namespace()
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") != os.readlink("/proc/self/ns/net")
        assert os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net")
    finally:
        os.close(fd)


@pytest.mark.root
def test_network_namespace_with_its_loopback_up():
    """The loopback is up inside (and this thread is back in its own namespace)."""
    fd = native.new_network_namespace(loopback_up=True)
    try:
        assert os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net")
        links = subprocess.run(
            ["nsenter", f"--net=/proc/self/fd/{fd}", "ip", "-json", "addr", "show", "lo"],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (lo,) = json.loads(links)
        assert "UP" in lo["flags"]
        assert {a["local"] for a in lo["addr_info"]} >= {"127.0.0.1"}
    finally:
        os.close(fd)


def test_mounts_under_decodes_escaped_and_non_ascii_paths(tmp_path):
    from olactors.sock._rootfs import mounts_under, remove_tree_safely

    odd = tmp_path / "wörker dir"
    target = odd / "mnt"
    target.mkdir(parents=True)
    native.mount_tmpfs(str(target), size_bytes=1 << 20)
    (target / "keep").write_text("x")
    assert mounts_under(odd) == [str(target)]
    remove_tree_safely(odd)  # detaches first, never deletes through the mount
    assert not odd.exists()
    assert mounts_under(tmp_path) == []
