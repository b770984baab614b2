"""The hostile-function suite: real functions in real leaves of one real worker
try to leave their sandbox, harm another one or the worker.  Each test is one
attempt; each asserts what "blocked" means for it (the errno or status the
kernel or the worker answered, and that the target is unharmed), then that
the victim function's sandbox is the same one, alive, and that the worker
still serves a normal function (``victim_unharmed``).

Syscalls the leaf seccomp list refuses are also checked in the call's
record (``blocked_syscalls``): refused by the filter, not merely failing.
Network attempts between functions and from ``egress`` are in
test_hostile_network.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat

import pytest

from .hostile_kit import (
    RAW_SERVER_GIGABYTE,
    RAW_SERVER_SWITCH,
    RAW_SERVER_TRICKLE,
    SYMLINKED_SOCKET,
    Worker,
    alive,
    host_processes_with,
    hostile,
    served_worker,
    start_worker,
    stop_worker,
)

pytestmark = pytest.mark.root

EPERM, ENOENT, ESRCH = errno.EPERM, errno.ENOENT, errno.ESRCH


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    yield from served_worker(tmp_path_factory, "hostile")


def attempt(
    worker: Worker, name: str, body: str, event: object = None, ol_yaml: str = ""
) -> tuple[int, object, str]:
    """Run the hostile function ``body``: (status, JSON answer, request id)."""
    worker.write(name, hostile(body), ol_yaml)
    response = worker.call(name, {**worker.targets(), **(event or {})})
    try:
        answer = response.json()
    except ValueError:
        answer = response.text
    return response.status_code, answer, response.headers["x-request-id"]


def blocked_by_filter(worker: Worker, name: str, request_id: str, *syscalls: str) -> None:
    record = worker.record(name, request_id)
    assert set(syscalls) <= set(record["blocked_syscalls"]), record["blocked_syscalls"]


# ------------------------------------------------------------ files and roots
def test_host_files_are_not_there(worker):
    status, got, _ = attempt(
        worker,
        "host-files",
        """
        def f(t):
            paths = ["/etc/shadow", "/root/.bash_history", "/var/log", "/home",
                     t["worker_dir"], t["worker_dir"] + "/worker.yaml", "/sys/kernel"]
            return {p: errno_of(os.stat, p) for p in paths}
        """,
    )
    assert status == 200, got
    assert set(got.values()) == {ENOENT}, got
    assert os.path.exists("/etc/shadow")
    worker.victim_unharmed()


def test_other_functions_code_is_not_there(worker):
    status, got, _ = attempt(
        worker,
        "other-code",
        """
        def f(t):
            victim = t["registry"] + "/victim/f.py"
            return {
                "host_path": errno_of(os.stat, victim),
                "relative": errno_of(os.stat, "/handler/../victim/f.py"),
                "own_dir": sorted(os.listdir("/handler")),
                "write_own": errno_of(lambda: open("/handler/f.py", "a")),
                "grep": [p for p in os.listdir("/") if "victim" in p],
            }
        """,
    )
    assert status == 200, got
    assert got["host_path"] == got["relative"] == ENOENT, got
    assert got["own_dir"] == ["f.py"] and got["grep"] == []
    assert got["write_own"] == errno.EACCES  # root's files, read-only mount beneath
    assert "victim-f00d" in (worker.registry / "victim" / "f.py").read_text()
    worker.victim_unharmed()


def test_chroot_escape(worker):
    """The classic escape: chroot into a subdirectory while holding the old
    root as cwd, then climb.  chroot is refused, and climbing from / stays at /."""
    status, got, request_id = attempt(
        worker,
        "chroot-escape",
        """
        def f(t):
            os.makedirs("/tmp/jail", exist_ok=True)
            os.chdir("/")  # the cwd stays outside the new root...
            result = {"chroot": errno_of(os.chroot, "/tmp/jail")}
            for _ in range(64):  # ...and climbing from it would leave the root
                os.chdir("..")
            result["climbed_to"] = sorted(os.listdir("."))
            result["root"] = sorted(os.listdir("/"))
            result["host_marker"] = errno_of(os.stat, t["worker_dir"])
            return result
        """,
    )
    assert status == 200, got
    assert got["chroot"] == EPERM
    assert got["climbed_to"] == got["root"] and "handler" in got["root"]
    assert got["host_marker"] == ENOENT
    blocked_by_filter(worker, "chroot-escape", request_id, "chroot")
    worker.victim_unharmed()


def test_no_inherited_directory_fd(worker):
    """A directory fd from outside the root would be a way out (openat "..").
    The leaf holds none: every fd it has is stdio, a socket or a pipe."""
    status, got, _ = attempt(
        worker,
        "dir-fd",
        """
        def f(t):
            fds = {}
            for fd in range(4096):
                try:
                    mode = os.fstat(fd).st_mode
                except OSError:
                    continue
                fds[fd] = ("dir" if stat.S_ISDIR(mode) else "reg" if stat.S_ISREG(mode)
                           else "sock" if stat.S_ISSOCK(mode) else "fifo" if stat.S_ISFIFO(mode)
                           else "chr" if stat.S_ISCHR(mode) else "other")
            links = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in fds}
            return {"fds": fds, "links": links}
        import stat
        """,
    )
    assert status == 200, got
    kinds = set(got["fds"].values())
    assert "dir" not in kinds and "reg" not in kinds, got
    # stdin is its own root's /dev/null (not its zygote's: no path of the host shows)
    assert got["fds"]["0"] == "chr" and got["links"]["0"] == "/dev/null", got
    others = {fd: link for fd, link in got["links"].items() if fd != "0"}
    kinds_ok = ("socket:", "pipe:", "anon_inode:")  # anon: its own epoll
    assert all(link.startswith(kinds_ok) for link in others.values()), others
    worker.victim_unharmed()


def test_mount(worker):
    status, got, request_id = attempt(
        worker,
        "mount",
        """
        def f(t):
            os.makedirs("/tmp/m", exist_ok=True)
            before = open("/proc/self/mountinfo").read()
            result = {
                "tmpfs": sys_errno("mount", b"none", b"/tmp/m", b"tmpfs", 0, 0),
                "bind_root": sys_errno("mount", b"/", b"/tmp/m", 0, 0x1000, 0),  # MS_BIND
                "remount_rw": sys_errno("mount", 0, b"/handler", 0, 0x20 | 0x1000, 0),
            }
            result["unchanged"] = open("/proc/self/mountinfo").read() == before
            return result
        """,
    )
    assert status == 200, got
    assert got == {"tmpfs": EPERM, "bind_root": EPERM, "remount_rw": EPERM, "unchanged": True}
    blocked_by_filter(worker, "mount", request_id, "mount")
    worker.victim_unharmed()


def test_umount(worker):
    status, got, request_id = attempt(
        worker,
        "umount",
        """
        def f(t):
            return {
                "handler": sys_errno("umount2", b"/handler", 0),
                "proc": sys_errno("umount2", b"/proc", 2),  # MNT_DETACH
                "still": sorted(os.listdir("/handler")),
            }
        """,
    )
    assert status == 200, got
    assert got == {"handler": EPERM, "proc": EPERM, "still": ["f.py"]}
    blocked_by_filter(worker, "umount", request_id, "umount2")
    worker.victim_unharmed()


def test_pivot_root(worker):
    status, got, request_id = attempt(
        worker,
        "pivot-root",
        """
        def f(t):
            os.makedirs("/tmp/new/old", exist_ok=True)
            return sys_errno("pivot_root", b"/tmp/new", b"/tmp/new/old")
        """,
    )
    assert (status, got) == (200, EPERM)
    blocked_by_filter(worker, "pivot-root", request_id, "pivot_root")
    worker.victim_unharmed()


def test_unshare(worker):
    """New namespaces (a user namespace would give it every capability in it)."""
    status, got, request_id = attempt(
        worker,
        "unshare",
        """
        def f(t):
            flags = {"user": 0x10000000, "mount": 0x00020000, "net": 0x40000000,
                     "pid": 0x20000000, "uts": 0x04000000, "cgroup": 0x02000000}
            result = {k: sys_errno("unshare", v) for k, v in flags.items()}
            # and through clone: a child in a new user namespace
            result["clone_user"] = sys_errno("unshare", 0x10000000 | 0x00020000)
            return result
        """,
    )
    assert status == 200, got
    assert set(got.values()) == {EPERM}, got
    blocked_by_filter(worker, "unshare", request_id, "unshare")
    worker.victim_unharmed()


def test_setns(worker):
    status, got, request_id = attempt(
        worker,
        "setns",
        """
        def f(t):
            result = {}
            for ns in ("net", "mnt", "pid", "uts", "ipc", "user", "cgroup"):
                try:
                    fd = os.open(f"/proc/self/ns/{ns}", os.O_RDONLY)
                except OSError as exc:
                    result[ns] = ("open", exc.errno)
                    continue
                result[ns] = sys_errno("setns", fd, 0)
                os.close(fd)
            return result
        """,
    )
    assert status == 200, got
    assert set(got.values()) == {EPERM}, got
    blocked_by_filter(worker, "setns", request_id, "setns")
    worker.victim_unharmed()


# ------------------------------------------------------- other processes
def test_ptrace_a_sibling(worker):
    """Its own child, and the victim (a sibling leaf of another function)."""
    status, got, request_id = attempt(
        worker,
        "ptrace-sibling",
        """
        def f(t):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
            result = {
                "own_child": sys_errno("ptrace", PTRACE_ATTACH, pid, 0, 0),
                "seize_child": sys_errno("ptrace", PTRACE_SEIZE, pid, 0, 0),
                "victim": sys_errno("ptrace", PTRACE_ATTACH, t["victim_pid"], 0, 0),
                "victim_proc": errno_of(os.stat, f"/proc/{t['victim_pid']}"),
            }
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return result
        """,
    )
    assert status == 200, got
    assert got == {"own_child": EPERM, "seize_child": EPERM, "victim": EPERM,
                   "victim_proc": ENOENT}  # fmt: skip
    blocked_by_filter(worker, "ptrace-sibling", request_id, "ptrace")
    with open(f"/proc/{worker.victim['host_pid']}/status") as f:
        assert "TracerPid:\t0\n" in f.read()
    worker.victim_unharmed()


def test_ptrace_and_read_the_zygote(worker):
    zygote = worker.zygote_pid()
    status, got, request_id = attempt(
        worker,
        "ptrace-zygote",
        """
        def f(t):
            z = t["zygote_pid"]
            buf = ctypes.create_string_buffer(64)
            local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)
            remote = (ctypes.c_void_p * 2)(0x400000, 64)
            return {
                "attach": sys_errno("ptrace", 16, z, 0, 0),
                "vm_read": sys_errno("process_vm_readv", z, ctypes.addressof(local), 1,
                                     ctypes.addressof(remote), 1, 0),
                "mem": errno_of(open, f"/proc/{z}/mem", "rb"),
                "signal": errno_of(os.kill, z, 0),
                "pidfd": sys_errno("pidfd_open", z, 0),
            }
        """,
        {"zygote_pid": zygote},
    )
    assert status == 200, got
    assert got == {"attach": EPERM, "vm_read": EPERM, "mem": ENOENT, "signal": ESRCH,
                   "pidfd": ESRCH}  # fmt: skip
    blocked_by_filter(worker, "ptrace-zygote", request_id, "ptrace", "process_vm_readv")
    assert alive(zygote) and zygote == worker.zygote_pid()
    worker.victim_unharmed()


def test_read_the_workers_memory(worker):
    status, got, _ = attempt(
        worker,
        "worker-memory",
        """
        def f(t):
            w = t["worker_pid"]
            return {
                "mem": errno_of(open, f"/proc/{w}/mem", "rb"),
                "environ": errno_of(open, f"/proc/{w}/environ", "rb"),
                "ptrace": sys_errno("ptrace", 16, w, 0, 0),
                "visible": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            }
        """,
    )
    assert status == 200, got
    assert (got["mem"], got["environ"], got["ptrace"]) == (ENOENT, ENOENT, EPERM)
    assert got["visible"] == [1], got  # its own PID namespace: itself only
    worker.victim_unharmed()


def test_kill_other_sandboxes(worker):
    status, got, _ = attempt(
        worker,
        "kill-sandbox",
        """
        def f(t):
            v = t["victim_pid"]
            return {
                "kill": errno_of(os.kill, v, signal.SIGKILL),
                "pidfd": sys_errno("pidfd_open", v, 0),
                "everyone": errno_of(os.kill, -1, signal.SIGKILL),
                "group": errno_of(os.killpg, v, signal.SIGKILL),
            }
        """,
    )
    assert status == 200, got
    assert got == {"kill": ESRCH, "pidfd": ESRCH, "everyone": ESRCH, "group": ESRCH}
    worker.victim_unharmed()


def test_signal_its_process_group(worker):
    """kill(0) reaches the caller's process group whatever the PID namespace:
    a sandbox left in the worker's group could signal every leaf (same uid)
    in it.  Each sandbox leads a session of its own: only itself is hit."""
    status, got, _ = attempt(
        worker,
        "kill-group",
        """
        def f(t):
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            return {
                "group": errno_of(os.kill, 0, signal.SIGUSR1),
                "hup": errno_of(os.kill, 0, signal.SIGHUP),
                "sid": os.getsid(0), "pgid": os.getpgid(0),
            }
        """,
    )
    assert status == 200, got
    assert got == {"group": 0, "hup": 0, "sid": 1, "pgid": 1}, got
    worker.victim_unharmed()


def test_kill_the_worker(worker):
    status, got, _ = attempt(
        worker,
        "kill-worker",
        """
        def f(t):
            w = t["worker_pid"]
            return {
                "kill": errno_of(os.kill, w, signal.SIGKILL),
                "term": errno_of(os.kill, w, signal.SIGTERM),
                "pidfd": sys_errno("pidfd_open", w, 0),
                "parent": os.getppid(),
            }
        """,
    )
    assert status == 200, got
    assert got == {"kill": ESRCH, "term": ESRCH, "pidfd": ESRCH, "parent": 0}
    worker.victim_unharmed()


def test_renice_others(worker):
    """setpriority reaches a process group or a uid's processes: only those
    of its own namespace and session (the victim's helper stays at nice 0)."""
    status, got, _ = attempt(
        worker,
        "renice",
        """
        def f(t):
            PRIO_PGRP, PRIO_USER = 1, 2
            return {
                "user": errno_of(os.setpriority, PRIO_USER, os.getuid(), 19),
                "group": errno_of(os.setpriority, PRIO_PGRP, 0, 19),
                "victim": errno_of(os.setpriority, os.PRIO_PROCESS, t["victim_pid"], 19),
                "up": errno_of(os.setpriority, os.PRIO_PROCESS, 0, -5),
            }
        """,
        ol_yaml="reuse_sandbox: false\n",
    )
    assert status == 200, got
    assert got == {"user": 0, "group": 0, "victim": ESRCH, "up": errno.EACCES}, got
    worker.victim_unharmed()  # includes the helper's nice value


def test_regain_capabilities(worker):
    """It holds none in any set, and cannot raise one."""
    status, got, _ = attempt(
        worker,
        "regain-caps",
        """
        def f(t):
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
            full = (ctypes.c_uint32 * 6)(*[0xFFFFFFFF] * 6)
            ctypes.set_errno(0)
            rc = libc.capset(ctypes.byref(header), ctypes.byref(full))
            raised = {"capset": 0 if rc == 0 else ctypes.get_errno()}
            libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
            for name, args in {"ambient": (47, 2, 13, 0, 0), "bounding_read": (23, 21, 0, 0, 0),
                               "keepcaps": (8, 1, 0, 0, 0)}.items():
                ctypes.set_errno(0)
                rc = libc.prctl(*args)
                raised[name] = rc if rc >= 0 else -ctypes.get_errno()
            lines = open("/proc/self/status").read().splitlines()
            status = dict(line.split(":\t", 1) for line in lines)
            caps = {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
            return {"raised": raised, "caps": caps, "uid": status["Uid"]}
        """,
    )  # fmt: skip
    assert status == 200, got
    # capset EPERM; ambient raise EPERM; CAP_SYS_ADMIN not in the bounding set (0);
    # keepcaps may be set (0) but there is nothing left to keep
    assert got["raised"] == {"capset": EPERM, "ambient": -EPERM, "bounding_read": 0,
                             "keepcaps": 0}, got  # fmt: skip
    assert set(got["caps"].values()) == {"0000000000000000"}, got
    assert got["uid"].split() == ["65534"] * 4
    worker.victim_unharmed()


def test_escape_the_oom_killer(worker):
    """A process the OOM killer spares would make the host kill others."""
    status, got, _ = attempt(
        worker,
        "oom-score",
        """
        def f(t):
            def write(path, value):
                with open(path, "w") as out:
                    out.write(value)
            return {
                "adj": errno_of(write, "/proc/self/oom_score_adj", "-1000"),
                "legacy": errno_of(write, "/proc/self/oom_adj", "-17"),
                "now": open("/proc/self/oom_score_adj").read().strip(),
            }
        """,
    )
    assert status == 200, got
    assert got == {"adj": errno.EACCES, "legacy": errno.EACCES, "now": "0"}, got
    worker.victim_unharmed()


def test_another_sandboxs_ipc(worker):
    """System V IPC lives in the sandbox's IPC namespace, /dev/shm in its own tmpfs."""
    status, got, _ = attempt(
        worker,
        "ipc",
        """
        def f(t):
            ctypes.set_errno(0)
            shm = libc.shmget(0x0DD1, 0, 0)
            return {
                "sysv": ctypes.get_errno() if shm < 0 else shm,
                "posix": errno_of(os.stat, "/dev/shm/victim-segment"),
                "ours": sorted(os.listdir("/dev/shm")),
            }
        """,
    )
    assert status == 200, got
    assert got == {"sysv": ENOENT, "posix": ENOENT, "ours": []}, got
    worker.victim_unharmed()


def test_the_kernels_proc_files(worker):
    """/proc is the sandbox's own, with the paths Docker masks or makes read-only."""
    status, got, _ = attempt(
        worker,
        "proc-files",
        """
        def f(t):
            def write(path, value):
                with open(path, "w") as out:
                    out.write(value)
            def read(path):
                with open(path, "rb") as f:
                    return f.read(64)
            return {
                "sysrq": errno_of(write, "/proc/sysrq-trigger", "b"),
                "core_pattern": errno_of(write, "/proc/sys/kernel/core_pattern", "|/tmp/x"),
                "keys": read("/proc/keys").decode(),
                "timer_list": read("/proc/timer_list").decode(),
            }
        """,
    )
    assert status == 200, got
    # read-only, where this kernel has it at all
    assert got["sysrq"] == (errno.EROFS if os.path.exists("/proc/sysrq-trigger") else ENOENT)
    assert got["core_pattern"] == errno.EROFS, got
    assert got["keys"] == got["timer_list"] == "", got  # masked: empty
    with open("/proc/sys/kernel/core_pattern") as f:
        assert not f.read().startswith("|/tmp/x")
    worker.victim_unharmed()


# ----------------------------------------------------- kernel attack surface
BUF = "ctypes.addressof(ctypes.create_string_buffer(128))"
#: attempt -> (the syscall the filter must name, the expression the function returns)
SYSCALLS = {
    "bpf": ("bpf", "sys_errno('bpf', 5, 0, 0)"),  # BPF_PROG_LOAD
    "keyctl": (
        "keyctl",
        "[sys_errno('keyctl', 0, -3, 0), sys_errno('add_key', b'user', b'x', b'y', 1, -3)]",
    ),
    "io-uring": ("io_uring_setup", f"sys_errno('io_uring_setup', 8, {BUF})"),
    "perf-event-open": ("perf_event_open", f"sys_errno('perf_event_open', {BUF}, 0, -1, -1, 0)"),
    "userfaultfd": ("userfaultfd", "sys_errno('userfaultfd', 0)"),
    "kexec": (
        "kexec_load",
        "[sys_errno('kexec_load', 0, 0, 0, 0), sys_errno('kexec_file_load', -1, -1, 0, 0, 0)]",
    ),
    "module-loading": (
        "init_module",
        "[sys_errno('init_module', 0, 0, b''), sys_errno('finit_module', 0, b'', 0),"
        " sys_errno('delete_module', b'ext4', 0)]",
    ),
    "reboot": ("reboot", "sys_errno('reboot', 0xfee1dead, 672274793, 0x4321fedc, 0)"),
}


@pytest.mark.parametrize("kind", list(SYSCALLS))
def test_kernel_interfaces(worker, kind):
    syscall, expression = SYSCALLS[kind]
    name = f"sys-{kind}"
    status, got, request_id = attempt(worker, name, f"def f(t):\n    return {expression}\n")
    assert status == 200, got
    assert set(got if isinstance(got, list) else [got]) == {EPERM}, got
    blocked_by_filter(worker, name, request_id, syscall)
    worker.victim_unharmed()


def test_mknod_devices(worker):
    status, got, request_id = attempt(
        worker,
        "mknod",
        """
        def f(t):
            return {
                "block": errno_of(os.mknod, "/tmp/sda", 0o600 | 0o060000, os.makedev(8, 0)),
                "mem": errno_of(os.mknod, "/tmp/mem", 0o600 | 0o020000, os.makedev(1, 1)),
                "fifo": errno_of(os.mkfifo, "/tmp/fifo"),  # allowed: not a device
                "dev": sorted(os.listdir("/dev")),
            }
        """,
    )
    assert status == 200, got
    assert (got["block"], got["mem"], got["fifo"]) == (EPERM, EPERM, 0)
    assert not {"sda", "mem", "kmem", "port"} & set(got["dev"]), got["dev"]
    blocked_by_filter(worker, "mknod", request_id, "mknodat")
    worker.victim_unharmed()


def test_raw_and_packet_sockets(worker):
    status, got, _ = attempt(
        worker,
        "raw-sockets",
        """
        def f(t):
            return {
                "raw": errno_of(socket.socket, socket.AF_INET, socket.SOCK_RAW, 1),
                "raw6": errno_of(socket.socket, socket.AF_INET6, socket.SOCK_RAW, 58),
                "packet": errno_of(socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
                "packet_dgram": errno_of(socket.socket, socket.AF_PACKET, socket.SOCK_DGRAM, 3),
            }
        """,
    )  # fmt: skip
    assert status == 200, got
    assert set(got.values()) == {EPERM}, got  # no CAP_NET_RAW in any set
    worker.victim_unharmed()


# -------------------------------------------------------- worker surfaces
def test_the_workers_port_and_admin_socket_from_none(worker):
    status, got, _ = attempt(
        worker,
        "worker-surfaces",
        """
        def f(t):
            return {
                "port": connect_errno(socket.AF_INET, ("127.0.0.1", t["port"])),
                "admin": connect_errno(socket.AF_UNIX, t["admin"]),
                "admin_abstract": connect_errno(socket.AF_UNIX, "\\0" + t["admin"]),
            }
        """,
    )
    assert status == 200, got
    assert got["port"] == errno.ECONNREFUSED, got  # its own loopback: no worker there
    assert got["admin"] == ENOENT and got["admin_abstract"] == errno.ECONNREFUSED, got
    worker.victim_unharmed()


def test_write_another_cgroups_procs(worker):
    victim_cgroup = open(f"/proc/{worker.victim['host_pid']}/cgroup").read().splitlines()
    paths = [
        "/sys/fs/cgroup/" + (line.split(":")[1] or "unified") + line.split(":")[2]
        for line in victim_cgroup
        if "olactors" in line
    ]
    assert paths
    status, got, _ = attempt(
        worker,
        "cgroup-procs",
        """
        def f(t):
            result = {p: errno_of(lambda: open(p + "/cgroup.procs", "w").write("1"))
                      for p in t["paths"]}
            result["sys"] = errno_of(os.listdir, "/sys/fs/cgroup")
            return result
        """,
        {"paths": paths},
    )
    assert status == 200, got
    assert set(got.values()) == {ENOENT}, got
    worker.victim_unharmed()


# ------------------------------------------------------------- exhaustion
def test_fork_bomb(worker):
    status, got, _ = attempt(
        worker,
        "fork-bomb",
        """
        def f(t):
            children = 0
            while True:
                try:
                    pid = os.fork()
                except OSError as exc:
                    return {"errno": exc.errno, "children": children}
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                children += 1
        """,
        ol_yaml="reuse_sandbox: false\nlimits:\n  procs: 32\n",
    )
    assert status == 200, got
    assert got["errno"] == errno.EAGAIN and 16 <= got["children"] < 32, got
    worker.victim_unharmed()


def test_thread_bomb(worker):
    status, got, _ = attempt(
        worker,
        "thread-bomb",
        """
        import threading
        def f(t):
            threads = 0
            while True:
                try:
                    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
                except RuntimeError as exc:
                    return {"error": str(exc), "threads": threads}
                threads += 1
        """,
        ol_yaml="reuse_sandbox: false\nlimits:\n  procs: 32\n",
    )
    assert status == 200, got
    assert got["error"] == "can't start new thread" and 16 <= got["threads"] < 32, got
    worker.victim_unharmed()


def test_memory_bomb(worker):
    status, got, _ = attempt(
        worker,
        "memory-bomb",
        """
        def f(t):
            hoard = []
            while True:
                hoard.append(bytearray(8 << 20))
        """,
        ol_yaml="limits:\n  mem_mb: 48\n",
    )
    assert status == 502, got
    assert got["error"] == "sandbox_died"
    assert got["cause"] == {"code": "oom", "detail": {"limit_mb": 48}}, got
    worker.victim_unharmed()


@pytest.mark.parametrize("where", ["/tmp", "/dev/shm"])
def test_fill_the_writable_space(worker, where):
    status, got, _ = attempt(
        worker,
        "fill-" + where.strip("/").replace("/", "-"),
        """
        def f(t):
            chunk = b"x" * (1 << 20)
            written = 0
            try:
                with open(t["where"] + "/fill", "wb") as out:
                    while True:
                        out.write(chunk)
                        out.flush()
                        written += len(chunk)
            except OSError as exc:
                return {"errno": exc.errno, "mb": written >> 20}
        """,
        {"where": where},
        ol_yaml="reuse_sandbox: false\n",
    )
    assert status == 200, got
    assert got["errno"] == errno.ENOSPC and 32 <= got["mb"] <= 64, got  # sandbox.tmp_mb
    worker.victim_unharmed()


def test_exhaust_inodes(worker):
    status, got, _ = attempt(
        worker,
        "inodes",
        """
        def f(t):
            os.makedirs("/tmp/many", exist_ok=True)
            n = 0
            while True:
                try:
                    os.close(os.open(f"/tmp/many/{n}", os.O_CREAT | os.O_WRONLY, 0o600))
                except OSError as exc:
                    return {"errno": exc.errno, "files": n}
                n += 1
        """,
        ol_yaml="reuse_sandbox: false\n",
    )
    assert status == 200, got
    # sandbox.tmp_inodes (16384) is exactly what the function gets (/tmp/many
    # is one of them)
    assert got == {"errno": errno.ENOSPC, "files": 16384 - 1}, got
    worker.victim_unharmed()


def test_a_gigabyte_reply(worker):
    worker.write("gigabyte", RAW_SERVER_GIGABYTE)
    response = worker.call("gigabyte")
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error"] == "bad_response" and body["cause"]["code"] == "bad_response"
    assert "limits.max_response_bytes" in body["cause"]["detail"]["reason"]
    worker.victim_unharmed()


def test_a_switching_status_reply(worker):
    """A 101 relayed to the client would switch the worker's own connection."""
    worker.write("switch", RAW_SERVER_SWITCH)
    with worker.client() as client:
        response = client.post("/run/switch")
        assert response.status_code == 502, response.text
        body = response.json()
        assert body["error"] == "bad_response" and body["cause"]["code"] == "bad_response"
        assert "status 101" in body["cause"]["detail"]["reason"]
        # the same client connection serves on
        assert client.post("/run/echo", json=[1]).json() == [1]
    worker.victim_unharmed()


def test_a_trickled_reply(worker):
    """A reply that never completes holds nothing past the runtime limit."""
    worker.write("trickle", RAW_SERVER_TRICKLE, "limits:\n  runtime_s: 1\n")
    response = worker.call("trickle")
    assert response.status_code == 504, response.text
    assert response.json()["cause"] == {"code": "timeout", "detail": {"limit_s": 1.0}}
    assert not worker.pids_of("leaf", "trickle")
    worker.victim_unharmed()


def test_redirect_the_worker_to_its_admin_socket(worker):
    """Its socket swapped for a symlink to the admin socket: the worker opens
    the name without following links and talks only to a socket that is in
    the sandbox's own scratch dir (the DELETE never reaches the admin API)."""
    code = worker.write("symlink", SYMLINKED_SOCKET)
    (code / "target.json").write_text(json.dumps({"admin": str(worker.admin_path)}))
    response = worker.call("symlink", {"method": "DELETE"})
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error"] == "bad_response" and body["cause"] == {
        "code": "bad_response",
        "detail": {"reason": "ol.sock in the sandbox's scratch dir is not a socket"},
    }
    assert worker.admin_path.exists()
    worker.victim_unharmed()


FORGED_REPORT = """
def _start_channel():
    # The report channel to the worker the runtime holds while it imports
    # this module (a connected SEQPACKET socket).
    for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        if sock.type == socket.SOCK_SEQPACKET and not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            return sock
        sock.close()


_channel = _start_channel()
if FROM_CHILD:
    child = os.fork()
    if child == 0:
        _channel.send(FORGED)
        os._exit(0)
    os.waitpid(child, 0)
else:
    _channel.send(FORGED)
time.sleep(0.5)


def f(event):
    return "imported"
"""


@pytest.mark.parametrize(
    ("forged", "from_child"),
    [
        (b"not json{", False),
        (b'{"error": "the zygote refused"}', False),
        (b'{"forked": 1}', False),  # another leaf's pid in the zygote: its exit file
        (b'{"ready": true}', True),
    ],
    ids=["not-json", "forged-refusal", "forged-fork-reply", "ready-from-a-child"],
)
def test_forge_reports_on_its_start_channel(worker, forged, from_child):
    """While its module is imported, function code can write on the channel
    its runtime reports to the worker on.  The worker takes, in that phase,
    only the leaf's own ``{"ready": true}`` and its zygote's fork reply (by
    the sender's kernel-given pid): anything else is the function's bad
    answer, 502 bad_response, never a pid the worker would then use to read
    and remove another leaf's exit status, nor a sandbox error that is retried."""
    name = f"forge-{len(forged)}-{int(from_child)}"
    source = f"FORGED = {forged!r}\nFROM_CHILD = {from_child}\n" + FORGED_REPORT
    worker.write(name, hostile(source))
    response = worker.call(name)
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error"] == "bad_response" and body["cause"]["code"] == "bad_response", body
    assert "start channel" in body["cause"]["detail"]["reason"], body
    worker.victim_unharmed()


def test_forge_a_report_in_a_fresh_leaf(tmp_path):
    """The same from a fresh leaf (no zygote: the import cache is off)."""
    fresh = start_worker(tmp_path / "fresh", "import_cache.enabled=false")
    try:
        source = "FORGED = b'not json{'\nFROM_CHILD = False\n" + FORGED_REPORT
        fresh.write("forge", hostile(source))
        response = fresh.call("forge")
        assert response.status_code == 502, response.text
        assert response.json()["cause"]["code"] == "bad_response", response.text
        fresh.victim_unharmed()
    finally:
        stop_worker(fresh)


def test_spin_past_the_runtime_limit(worker):
    worker.write("spin", "def f(event):\n    while True:\n        pass\n",
                 "limits:\n  runtime_s: 0.5\n")  # fmt: skip
    response = worker.call("spin")
    assert response.status_code == 504, response.text
    body = response.json()
    assert body["error"] == "timeout" and body["cause"] == {
        "code": "timeout",
        "detail": {"limit_s": 0.5},
    }
    assert not worker.pids_of("leaf", "spin")  # its sandbox was destroyed
    worker.victim_unharmed()


DAEMON = """
import subprocess
def f(t):
    r, w = os.pipe()
    # a double fork into a session of its own: a classic daemon
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            os.close(r)
            os.write(w, b"up")
            os.execv(sys.executable, [sys.executable, "-I", "-S", "-c",
                     "import time\\nwhile True: time.sleep(1)", t["marker"]])
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    return os.read(r, 2).decode()
"""


def test_a_daemon_does_not_outlive_its_sandbox(worker):
    marker = "olactors-hostile-daemon-call"
    status, got, _ = attempt(
        worker, "daemon", DAEMON, {"marker": marker}, ol_yaml="reuse_sandbox: false\n"
    )
    assert (status, got) == (200, "up")
    wait_until_gone(marker)
    worker.victim_unharmed()


def wait_until_gone(marker: str, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while host_processes_with(marker):
        assert time.monotonic() < deadline, f"{marker} outlived its sandbox"
        time.sleep(0.05)


# ----------------------------------------------------------- host settings
def test_hostname_and_clock(worker):
    host = socket.gethostname()
    status, got, request_id = attempt(
        worker,
        "host-settings",
        """
        def f(t):
            timespec = (ctypes.c_long * 2)(0, 0)  # 1970
            timeval = (ctypes.c_long * 2)(0, 0)
            return {
                "hostname": sys_errno("sethostname", b"pwned", 5),
                "settime": sys_errno("clock_settime", 0, ctypes.addressof(timespec)),
                "settimeofday": sys_errno("settimeofday", ctypes.addressof(timeval), 0),
                "seen": socket.gethostname(),
            }
        """,
    )
    assert status == 200, got
    assert (got["hostname"], got["settime"], got["settimeofday"]) == (EPERM, EPERM, EPERM)
    assert got["seen"].startswith("sb-")  # its own UTS namespace's name, unchanged
    assert socket.gethostname() == host
    blocked_by_filter(
        worker, "host-settings", request_id, "sethostname", "clock_settime", "settimeofday"
    )
    worker.victim_unharmed()


def test_a_setuid_binary_gives_nothing(worker):
    """/usr/bin/mount is setuid root on the host; in a leaf it runs as the
    leaf uid (nosuid mounts and no_new_privs), which its loader shows."""
    mount = shutil.which("mount") or "/usr/bin/mount"
    info = os.stat(mount)
    assert info.st_mode & stat.S_ISUID and info.st_uid == 0
    status, got, _ = attempt(
        worker,
        "setuid",
        """
        import subprocess
        def f(t):
            st = os.stat(t["binary"])
            run = subprocess.run([t["binary"], "--version"], capture_output=True, text=True,
                                 env={"LD_SHOW_AUXV": "1", "PATH": "/usr/bin"})
            lines = [line for line in run.stdout.splitlines() if line.startswith("AT_")]
            auxv = {k: v.strip() for k, v in (line.split(":", 1) for line in lines)}
            return {"suid": bool(st.st_mode & 0o4000), "owner": st.st_uid,
                    "euid": auxv.get("AT_EUID"), "secure": auxv.get("AT_SECURE"),
                    "nosuid": bool(os.statvfs(t["binary"]).f_flag & os.ST_NOSUID)}
        """,
        {"binary": mount},
    )  # fmt: skip
    assert status == 200, got
    assert got == {"suid": True, "owner": 0, "euid": "65534", "secure": "0", "nosuid": True}
    worker.victim_unharmed()


# ------------------------------------------------ outliving the worker itself
def test_a_daemon_does_not_outlive_the_worker(tmp_path):
    """A daemon started by a function, then the worker SIGKILLed: the
    watchdog kills the worker's whole cgroup subtree, daemon included."""
    import signal

    worker = start_worker(tmp_path / "worker")
    marker = "olactors-hostile-daemon-worker"
    try:
        status, got, _ = attempt(worker, "daemon", DAEMON, {"marker": marker})
        assert (status, got) == (200, "up")
        assert host_processes_with(marker)
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(timeout=10)
        wait_until_gone(marker)
    finally:
        stop_worker(worker)
