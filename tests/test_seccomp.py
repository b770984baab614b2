"""seccomp profiles: yaml validation, BPF compilation, and real enforcement.

Enforcement tests start a child ``python -I -S`` (no site-packages, like a
sandbox) that imports the runtime's ``_linux.py`` by path, installs the
compiled filter, exercises ordinary CPython features and probes forbidden
syscalls through ctypes, then prints one JSON object. A baseline test runs the
same probes unfiltered to show they would report something else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyseccomp
import pytest

from olactors._errors import ConfigError
from olactors.sock import seccomp

REPO = Path(__file__).resolve().parents[1]
RUNTIME_DIR = REPO / "olactors" / "sock" / "runtime"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, namespaces)")

PROBED_SYSCALLS = (
    "mount", "unshare", "chroot", "ptrace", "keyctl", "bpf", "clone", "clone3", "setns",
    "sethostname", "setuid", "perf_event_open", "io_uring_setup", "process_vm_readv",
    "pivot_root", "mknodat",
)  # fmt: skip

# ---------------------------------------------------------------------------
# Code run inside the child interpreter.
# ---------------------------------------------------------------------------

CHILD_PRELUDE = r'''
import ctypes, errno, json, os, sys

PARAMS = json.loads(sys.argv[1])
sys.path.insert(0, PARAMS["runtime_dir"])
import _linux

NR = PARAMS["nr"]
TMP = PARAMS["tmp"]
RESULTS = {}
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
SIGCHLD = 17


def install(kind):
    with open(PARAMS["bpf"][kind], "rb") as f:
        _linux.install_seccomp(f.read())


def raw(name, *args, keep_gil=False):
    """syscall(name, *args) -> ("ok", ret) or the errno name; bytes become C strings."""
    lib = ctypes.PyDLL(None, use_errno=True) if keep_gil else ctypes.CDLL(None, use_errno=True)
    fn = lib["syscall"]
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long] * (1 + len(args))
    buffers = [ctypes.create_string_buffer(a) for a in args if isinstance(a, bytes)]
    it = iter(buffers)
    values = [ctypes.addressof(next(it)) if isinstance(a, bytes) else a for a in args]
    ctypes.set_errno(0)
    ret = fn(NR[name], *values)
    if ret < 0:
        return errno.errorcode[ctypes.get_errno()]
    return ("ok", ret)


def errname(ret):
    return "ok" if isinstance(ret, tuple) else ret


def probe(name, *args):
    return errname(raw(name, *args))


def clone(flags):
    """Raw clone(2) (fork-like, no CLONE_VM); the child exits 0 if it is pid 1
    of a new pid namespace or was not asked for one. Returns "exit=N" or errno."""
    # PyDLL keeps the GIL across the call, so the child resumes holding it.
    ret = raw("clone", flags | SIGCHLD, 0, 0, 0, 0, keep_gil=True)
    if not isinstance(ret, tuple):
        return ret
    if ret[1] == 0:
        os._exit(0 if (os.getpid() == 1) == bool(flags & CLONE_NEWPID) else 3)
    _, status = os.waitpid(ret[1], 0)
    return f"exit={os.waitstatus_to_exitcode(status)}"


def check(name, fn):
    try:
        value = fn()
    except BaseException as exc:  # report, do not die: other checks still run
        RESULTS[name] = f"{type(exc).__name__}: {exc}"
    else:
        RESULTS[name] = "ok" if value is True else f"unexpected: {value!r}"


def in_child(fn):
    """Run fn in a forked child; True if it returned True there."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if fn() is True else 1)
        except BaseException:
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def common_workload():
    """Ordinary CPython features every sandbox needs."""
    import hashlib, json as js, selectors, signal, socket, subprocess, tempfile, threading
    import time

    check("json", lambda: js.loads(js.dumps({"a": [1, 2.5, None]})) == {"a": [1, 2.5, None]})
    check("hashlib", lambda: hashlib.sha256(b"abc").hexdigest().startswith("ba7816bf")
          and len(hashlib.md5(b"x").digest()) == 16 and len(hashlib.blake2b(b"").digest()) == 64)

    def tmp():
        with tempfile.TemporaryDirectory() as d:
            with tempfile.NamedTemporaryFile("w+", dir=d) as f:
                f.write("hello")
                f.flush()
                f.seek(0)
                return f.read() == "hello" and len(os.listdir(d)) == 1
    check("tempfile", tmp)

    def thread():
        box = []
        t = threading.Thread(target=lambda: box.append(threading.get_ident()))
        t.start()
        t.join(10)
        return not t.is_alive() and box and box[0] != threading.get_ident()
    check("thread", thread)

    def pool():
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(4) as ex:
            return list(ex.map(lambda x: x * x, range(8))) == [x * x for x in range(8)]
    check("thread_pool", pool)

    check("subprocess_true", lambda: subprocess.run(["/bin/true"], timeout=30).returncode == 0)
    check("subprocess_python", lambda: subprocess.run(
        [sys.executable, "-I", "-S", "-c", "print(6 * 7)"],
        capture_output=True, text=True, timeout=30).stdout.strip() == "42")
    check("subprocess_shell", lambda: subprocess.run(
        "echo hi | cat", shell=True, capture_output=True, text=True, timeout=30
    ).stdout.strip() == "hi")
    check("fork", lambda: in_child(lambda: True))

    def unix():
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"ping")
            return b.recv(4) == b"ping"
    check("socket_unix", unix)

    def inet():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            with socket.create_connection(srv.getsockname(), timeout=10) as c:
                conn, _ = srv.accept()
                with conn:
                    c.sendall(b"pong")
                    return conn.recv(4) == b"pong"
    check("socket_inet", inet)
    check("socket_udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close() is None)

    def select():
        a, b = socket.socketpair()
        with a, b, selectors.DefaultSelector() as sel:
            sel.register(b, selectors.EVENT_READ)
            a.send(b"x")
            return len(sel.select(timeout=5)) == 1
    check("selectors", select)

    def use_ctypes():
        libc = ctypes.CDLL(None)
        arr = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
        cmp = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                               ctypes.POINTER(ctypes.c_int))(lambda a, b: a[0] - b[0])
        libc.qsort(arr, 5, ctypes.sizeof(ctypes.c_int), cmp)
        return list(arr) == [1, 2, 3, 4, 5] and libc.getpid() == os.getpid()
    check("ctypes", use_ctypes)

    def signals():
        got = []
        signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.001)
        return got == [1]
    check("signals", signals)
    check("urandom", lambda: len(os.urandom(32)) == 32)

    def fifo():
        path = os.path.join(TMP, f"fifo-{os.getpid()}")
        os.mkfifo(path)
        try:
            import stat
            return stat.S_ISFIFO(os.stat(path).st_mode)
        finally:
            os.unlink(path)
    check("mkfifo", fifo)

    def mp():
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=q.put, args=(41,))
        p.start()
        value = q.get(timeout=20)
        p.join(20)
        return value == 41 and p.exitcode == 0
    check("multiprocessing", mp)


def forbidden_probes():
    """Calls no sandbox may make; returns {name: "ok" | errno name}."""
    chardev = os.path.join(TMP, f"null-{os.getpid()}")
    return {
        "mount": probe("mount", b"none", b"/nonexistent-olactors", b"tmpfs", 0, 0),
        "ptrace": probe("ptrace", 12, 1 << 30, 0, 0),  # GETREGS on a pid that cannot exist
        "keyctl": probe("keyctl", 9999, 0, 0, 0, 0),
        "bpf": probe("bpf", 9999, 0, 0),
        "clone3": probe("clone3", 0, 0),
        "setns": probe("setns", -1, 0),
        "perf_event_open": probe("perf_event_open", 0, 0, -1, -1, 0),
        "io_uring_setup": probe("io_uring_setup", 0, 0),
        "process_vm_readv": probe("process_vm_readv", 1 << 30, 0, 1, 0, 1, 0),
        "pivot_root": probe("pivot_root", 0, 0),
        "mknod_chardev": probe("mknodat", -100, chardev.encode(), 0o020600, os.makedev(1, 3)),
    }


def done():
    print(json.dumps(RESULTS))
'''

LEAF_SCRIPT = r"""
install("leaf")
common_workload()
RESULTS["forbidden"] = forbidden_probes()
RESULTS["unshare_ns"] = probe("unshare", CLONE_NEWNS)
RESULTS["unshare_uts"] = probe("unshare", CLONE_NEWUTS)
RESULTS["chroot"] = probe("chroot", b"/")
RESULTS["setuid"] = probe("setuid", os.getuid())
RESULTS["clone_newpid"] = clone(CLONE_NEWPID)
RESULTS["clone_newuser"] = clone(CLONE_NEWUSER)
RESULTS["clone_plain"] = clone(0)
RESULTS["setns_net"] = probe("setns", -1, CLONE_NEWNET)
check("alive_after_denials", lambda: json.loads(json.dumps([1])) == [1])
done()
"""

ZYGOTE_SCRIPT = r"""
install("zygote")
common_workload()
RESULTS["forbidden"] = forbidden_probes()

def enter_root():
    # the zygote pattern: fchdir to the root dir fd, then chroot(".")
    fd = os.open(PARAMS["root"], os.O_RDONLY | os.O_DIRECTORY)
    os.fchdir(fd)
    os.chroot(".")
    os.close(fd)
    return os.listdir("/") == ["marker"] and os.getcwd() == "/"
RESULTS["chroot"] = "ok" if in_child(enter_root) else "failed"

def drop_privileges():
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    os.setgid(65534)
    os.setuid(65534)
    return os.getresuid() == (65534,) * 3 and os.getgroups() == []
RESULTS["setuid_family"] = "ok" if in_child(drop_privileges) else "failed"

RESULTS["unshare_uts"] = probe("unshare", CLONE_NEWUTS)
if RESULTS["unshare_uts"] == "ok":  # never touch the host's hostname
    name = b"olactors-zygote"
    RESULTS["sethostname"] = probe("sethostname", name, len(name))
    RESULTS["hostname"] = os.uname().nodename
RESULTS["unshare_ipc"] = probe("unshare", CLONE_NEWIPC)
RESULTS["unshare_user"] = probe("unshare", CLONE_NEWUSER)
RESULTS["unshare_ns"] = probe("unshare", CLONE_NEWNS)
RESULTS["unshare_net"] = probe("unshare", CLONE_NEWNET)
RESULTS["clone_newpid"] = clone(CLONE_NEWPID)
RESULTS["clone_pid_uts_ipc"] = clone(CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC)
RESULTS["clone_newuser"] = clone(CLONE_NEWUSER)
RESULTS["clone_pid_user"] = clone(CLONE_NEWPID | CLONE_NEWUSER)
RESULTS["clone_newns"] = clone(CLONE_NEWNS)
RESULTS["clone_newnet"] = clone(CLONE_NEWNET)
# A forked child joins its function's network namespace: setns for that type only.
RESULTS["setns_net"] = probe("setns", -1, CLONE_NEWNET)
RESULTS["setns_pid"] = probe("setns", -1, CLONE_NEWPID)
RESULTS["setns_mnt"] = probe("setns", -1, CLONE_NEWNS)
done()
"""

STACKED_SCRIPT = r"""
install("zygote")
RESULTS["zygote_unshare_uts"] = probe("unshare", CLONE_NEWUTS)
install("leaf")
RESULTS["leaf_unshare_uts"] = probe("unshare", CLONE_NEWUTS)
if RESULTS["zygote_unshare_uts"] == "ok":  # own UTS namespace: safe even if allowed
    name = b"olactors-leaf"
    RESULTS["sethostname"] = probe("sethostname", name, len(name))
RESULTS["chroot"] = probe("chroot", b"/")
RESULTS["setuid"] = probe("setuid", os.getuid())
RESULTS["clone_newpid"] = clone(CLONE_NEWPID)
RESULTS["clone3"] = probe("clone3", 0, 0)
RESULTS["setns_net"] = probe("setns", -1, CLONE_NEWNET)  # the zygote's, not the leaf's
check("subprocess_true", lambda: __import__("subprocess").run(["/bin/true"]).returncode == 0)
done()
"""

BASELINE_SCRIPT = r"""
RESULTS["forbidden"] = forbidden_probes()
done()
"""


@pytest.fixture(scope="module")
def bpf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("bpf")
    files = {}
    for kind in seccomp.KINDS:
        path = directory / f"{kind}.bpf"
        path.write_bytes(seccomp.compile_profile(kind))
        files[kind] = str(path)
    return files


def run_child(script: str, bpf_files: dict[str, str], tmp_path: Path) -> dict[str, object]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "marker").write_text("inside")
    params = {
        "runtime_dir": str(RUNTIME_DIR),
        "bpf": bpf_files,
        "tmp": str(tmp_path),
        "root": str(root),
        "nr": {n: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n) for n in PROBED_SYSCALLS},
    }
    code = textwrap.dedent(CHILD_PRELUDE) + textwrap.dedent(script)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        # As in a sandbox: the SIGSYS handler that answers the leaf filter's traps.
        env={**os.environ, "LD_PRELOAD": str(RUNTIME_DIR / "libolsigsys.so")},
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


DENIED = {
    "mount": "EPERM",
    "ptrace": "EPERM",
    "keyctl": "EPERM",
    "bpf": "EPERM",
    "clone3": "ENOSYS",
    "setns": "EPERM",
    "perf_event_open": "EPERM",
    "io_uring_setup": "EPERM",
    "process_vm_readv": "EPERM",
    "pivot_root": "EPERM",
    "mknod_chardev": "EPERM",
}

WORKLOAD_CHECKS = (
    "json", "hashlib", "tempfile", "thread", "thread_pool", "subprocess_true",
    "subprocess_python", "subprocess_shell", "fork", "socket_unix", "socket_inet",
    "socket_udp", "selectors", "ctypes", "signals", "urandom", "mkfifo", "multiprocessing",
)  # fmt: skip

# ---------------------------------------------------------------------------
# Enforcement
# ---------------------------------------------------------------------------


def test_baseline_probes_differ_without_filter(bpf_files, tmp_path):
    """Unfiltered, the probes report the kernel's own answers, not EPERM/ENOSYS."""
    results = run_child(BASELINE_SCRIPT, bpf_files, tmp_path)
    forbidden = results["forbidden"]
    assert forbidden["mount"] == "ENOENT"
    assert forbidden["ptrace"] == "ESRCH"
    assert forbidden["keyctl"] in ("EOPNOTSUPP", "ENOTSUP")  # same number
    assert forbidden["bpf"] == "EINVAL"
    assert forbidden["clone3"] == "EINVAL"
    assert forbidden["setns"] == "EBADF"
    assert forbidden["process_vm_readv"] == "EFAULT"


def test_leaf_runs_cpython_and_denies_privileged_calls(bpf_files, tmp_path):
    results = run_child(LEAF_SCRIPT, bpf_files, tmp_path)
    for name in (*WORKLOAD_CHECKS, "alive_after_denials"):
        assert results[name] == "ok", (name, results[name])
    assert results["forbidden"] == DENIED
    assert results["unshare_ns"] == "EPERM"
    assert results["unshare_uts"] == "EPERM"
    assert results["chroot"] == "EPERM"
    assert results["setuid"] == "EPERM"
    assert results["clone_newpid"] == "EPERM"
    assert results["clone_newuser"] == "EPERM"
    assert results["clone_plain"] == "exit=0"
    assert results["setns_net"] == "EPERM"


@needs_root
@pytest.mark.root
def test_zygote_may_chroot_unshare_and_clone_pid_namespaces(bpf_files, tmp_path):
    results = run_child(ZYGOTE_SCRIPT, bpf_files, tmp_path)
    for name in WORKLOAD_CHECKS:
        assert results[name] == "ok", (name, results[name])
    assert results["forbidden"] == DENIED
    assert results["chroot"] == "ok"
    assert results["setuid_family"] == "ok"
    assert results["unshare_uts"] == "ok"
    assert results["sethostname"] == "ok"
    assert results["hostname"] == "olactors-zygote"
    assert results["unshare_ipc"] == "ok"
    assert results["unshare_user"] == "EPERM"
    assert results["unshare_ns"] == "EPERM"
    assert results["unshare_net"] == "EPERM"
    assert results["clone_newpid"] == "exit=0"
    assert results["clone_pid_uts_ipc"] == "exit=0"
    assert results["clone_newuser"] == "EPERM"
    assert results["clone_pid_user"] == "EPERM"
    assert results["clone_newns"] == "EPERM"
    assert results["clone_newnet"] == "EPERM"
    assert results["setns_net"] == "EBADF"  # the filter let it through to the kernel
    assert results["setns_pid"] == "EPERM"
    assert results["setns_mnt"] == "EPERM"


@needs_root
@pytest.mark.root
def test_leaf_filter_stacked_on_zygote_filter_removes_zygote_calls(bpf_files, tmp_path):
    results = run_child(STACKED_SCRIPT, bpf_files, tmp_path)
    assert results["zygote_unshare_uts"] == "ok"
    assert results["leaf_unshare_uts"] == "EPERM"
    assert results["sethostname"] == "EPERM"
    assert results["chroot"] == "EPERM"
    assert results["setuid"] == "EPERM"
    assert results["clone_newpid"] == "EPERM"
    assert results["clone3"] == "ENOSYS"
    assert results["setns_net"] == "EPERM"
    assert results["subprocess_true"] == "ok"


def test_runtime_module_is_stdlib_only():
    code = (
        f"import sys; sys.path.insert(0, {str(RUNTIME_DIR)!r}); import _linux; "
        "print(' '.join(sorted(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    modules = set(proc.stdout.split())
    assert "_linux" in modules
    assert not modules & {"pyseccomp", "trio", "olactors", "yaml"}


def test_install_seccomp_rejects_malformed_programs():
    spec = importlib.util.spec_from_file_location("_olactors_test_linux", RUNTIME_DIR / "_linux.py")
    assert spec is not None and spec.loader is not None
    _linux = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_linux)
    for bad in (b"", b"\x00" * 7, b"\x00" * 8 * 4097):
        with pytest.raises(ValueError):
            _linux.install_seccomp(bad)


# ---------------------------------------------------------------------------
# Loading and compiling
# ---------------------------------------------------------------------------


def test_default_profiles_are_consistent():
    profiles = seccomp.load_profiles()
    assert set(profiles) == {"zygote", "leaf"}
    zygote, leaf = set(profiles["zygote"]), set(profiles["leaf"])
    assert leaf < zygote
    assert {"chroot", "unshare", "sethostname", "setresuid", "fchdir"} <= zygote - leaf
    assert {"clone", "execve", "futex", "rseq", "socket", "getrandom", "prctl"} <= leaf
    assert not (zygote | leaf) & seccomp.FORBIDDEN_EVERYWHERE
    assert not leaf & seccomp.ZYGOTE_ONLY
    assert "clone3" not in zygote
    assert profiles["leaf"] == sorted(profiles["leaf"])


def test_compile_profile_returns_cached_bpf():
    for kind in seccomp.KINDS:
        program = seccomp.compile_profile(kind)
        assert isinstance(program, bytes)
        assert len(program) % 8 == 0 and 0 < len(program) // 8 <= 4096
        assert seccomp.compile_profile(kind) is program
    assert seccomp.compile_profile("zygote") != seccomp.compile_profile("leaf")
    with pytest.raises(ValueError):
        seccomp.compile_profile("root")  # type: ignore[arg-type]


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "seccomp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
common: [read, write, exit_group, clone]
zygote: [chroot]
leaf: []
"""


def test_small_custom_profile_compiles(tmp_path):
    path = write_yaml(tmp_path, GOOD)
    assert seccomp.load_profiles(path) == {
        "zygote": ["chroot", "clone", "exit_group", "read", "write"],
        "leaf": ["clone", "exit_group", "read", "write"],
    }
    assert len(seccomp.compile_profile("leaf", path)) % 8 == 0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("common: [read, frobnicate]\nzygote: []\nleaf: []\n", "frobnicate"),
        ("common: [read]\nzygote: []\nleaf: []\nextras: [write]\n", "extras"),
        ("common: [read]\nzygote: [no_such_call]\nleaf: []\n", "no_such_call"),
        ("common: [read, mount]\nzygote: []\nleaf: []\n", "mount"),
        ("common: [read]\nzygote: [ptrace]\nleaf: []\n", "ptrace"),
        ("common: [read, chroot]\nzygote: []\nleaf: []\n", "chroot"),
        ("common: [read]\nzygote: []\nleaf: [unshare]\n", "unshare"),
        ("common: [read]\nzygote: []\nleaf: [write]\n", "write"),
        ("common: [read, clone3]\nzygote: []\nleaf: []\n", "clone3"),
        ("common: [read, read]\nzygote: []\nleaf: []\n", "read"),
        ("common: [read]\nzygote: []\n", "leaf"),
        ("common: read\nzygote: []\nleaf: []\n", "common"),
        ("common: [read, 42]\nzygote: []\nleaf: []\n", "42"),
        ("- read\n", "mapping"),
        ("common: [read\n", "YAML"),
    ],
)
def test_bad_yaml_is_a_config_error_naming_the_culprit(tmp_path, text, needle):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=needle):
        seccomp.load_profiles(path)
    with pytest.raises(ConfigError, match=needle):
        seccomp.compile_profile("leaf", path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        seccomp.load_profiles(tmp_path / "absent.yaml")
