"""Linux capabilities a sandbox keeps (pure: names, numbers, the zygote's set).

Leaves keep none: every set (effective, permitted, inheritable, ambient and
bounding) is empty, fresh or forked.  Zygotes run as root, but only with the
capabilities their fork path needs (:data:`ZYGOTE_CAPABILITIES`, each with
the reason); everything else is dropped from the bounding set and from the
other sets before the runtime starts, so neither the zygote's pre-imported
packages nor anything it execs can get them back.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class Capability(enum.IntEnum):
    """Capability numbers of ``linux/capability.h``."""

    CHOWN = 0
    DAC_OVERRIDE = 1
    DAC_READ_SEARCH = 2
    FOWNER = 3
    FSETID = 4
    KILL = 5
    SETGID = 6
    SETUID = 7
    SETPCAP = 8
    LINUX_IMMUTABLE = 9
    NET_BIND_SERVICE = 10
    NET_BROADCAST = 11
    NET_ADMIN = 12
    NET_RAW = 13
    IPC_LOCK = 14
    IPC_OWNER = 15
    SYS_MODULE = 16
    SYS_RAWIO = 17
    SYS_CHROOT = 18
    SYS_PTRACE = 19
    SYS_PACCT = 20
    SYS_ADMIN = 21
    SYS_BOOT = 22
    SYS_NICE = 23
    SYS_RESOURCE = 24
    SYS_TIME = 25
    SYS_TTY_CONFIG = 26
    MKNOD = 27
    LEASE = 28
    AUDIT_WRITE = 29
    AUDIT_CONTROL = 30
    SETFCAP = 31
    MAC_OVERRIDE = 32
    MAC_ADMIN = 33
    SYSLOG = 34
    WAKE_ALARM = 35
    BLOCK_SUSPEND = 36
    AUDIT_READ = 37
    PERFMON = 38
    BPF = 39
    CHECKPOINT_RESTORE = 40


#: What a zygote keeps, and why: exactly what its fork path uses.  A forked
#: child enters its cgroups through ``cgroup.procs`` fds the worker opened
#: (the write needs no capability: on v1 the writer is root moving itself,
#: on v2 root owns the files), its root through a directory fd, and it
#: reads its blocked-syscall map after it became the leaf uid, so neither
#: ``DAC_OVERRIDE`` nor ``DAC_READ_SEARCH`` is needed.  It never mounts,
#: signals other processes or opens raw sockets.
ZYGOTE_CAPABILITIES: Mapping[Capability, str] = {
    Capability.SYS_ADMIN: (
        "clone(CLONE_NEWPID|CLONE_NEWUTS|CLONE_NEWIPC) for each child and spare, "
        "sethostname in the child's new UTS namespace, and setns of the child "
        "into its function's network namespace (the zygote's seccomp filter "
        "allows setns for CLONE_NEWNET only and still refuses mount, pivot_root "
        "and user namespaces)"
    ),
    Capability.SYS_CHROOT: "chroot of each child into its own root (through the root dir fd)",
    Capability.SETUID: "setresuid of a leaf child to the leaf uid",
    Capability.SETGID: "setgroups([]) and setresgid of a leaf child to the leaf gid",
    Capability.SETPCAP: (
        "PR_CAPBSET_DROP in a leaf child, which empties its bounding set before "
        "it changes uid (a child inherits the zygote's bounding set)"
    ),
}


def mask(capabilities: Iterable[Capability]) -> int:
    """The capability set as a bit mask (bit n = capability n)."""
    bits = 0
    for cap in capabilities:
        bits |= 1 << int(cap)
    return bits


def names(bits: int) -> list[str]:
    """``CAP_*`` names of the bits set in ``bits`` (unknown bits as numbers)."""
    found = []
    for n in range(64):
        if bits >> n & 1:
            try:
                found.append(f"CAP_{Capability(n).name}")
            except ValueError:
                found.append(str(n))
    return found


ZYGOTE_MASK = mask(ZYGOTE_CAPABILITIES)
