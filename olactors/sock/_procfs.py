"""Each sandbox's ``/proc``: a procfs of its own PID namespace, masked like Docker's.

A procfs shows the PID namespace it was created in, sandboxes have no mount
namespace of their own, and no sandbox's seccomp filter allows ``mount``.
So the worker mounts it, in its own (private) mount namespace, at
``<root>/proc`` (never widening what a sandbox may do):

* a **fresh** sandbox's first process mounts it itself in ``native.spawn``,
  as PID 1 of its new namespace, before it chroots, drops its identity and
  installs its filter (nothing else runs in the sandbox yet);
* a **forked** sandbox (a leaf or a child zygote) tells the worker first
  thing, on its fork connection, that its namespaces exist; the worker
  mounts its ``/proc`` while the child joins its cgroups and enters its root,
  and the child waits for the worker's word before any function or package
  code runs (:meth:`ProcMounter.mount_for`).  The worker names the namespace with
  procfs's ``pidns`` option (Linux 6.18); on older kernels a short-lived
  helper process is created in the namespace only to call ``fsopen`` there.

The masks are Docker's defaults (moby ``oci/defaults.go``): the masked paths
are covered (a directory by an empty read-only tmpfs, a file by
``/dev/null``), the read-only ones bound read-only onto themselves; paths a
kernel lacks are skipped.  Docker's ``/sys/firmware`` does not apply:
sandboxes have no ``/sys``.  The mounts are part of the sandbox's root and
go with it (one detach).
"""

from __future__ import annotations

import os
import select

from .. import native
from .._errors import SandboxError

#: Docker's masked paths under /proc (moby oci/defaults.go ``MaskedPaths``).
MASKED_PATHS = (
    "asound",
    "acpi",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
)
#: Docker's read-only paths under /proc (moby oci/defaults.go ``ReadonlyPaths``).
READONLY_PATHS = ("bus", "fs", "irq", "sys", "sysrq-trigger")


def proc_mount(root: str) -> native.ProcMount:
    """The ``/proc`` of the sandbox root ``root`` (a host path), with its masks."""
    target = os.path.join(root, "proc")
    return native.ProcMount(
        target=target,
        masked=tuple(os.path.join(target, name) for name in MASKED_PATHS),
        readonly=tuple(os.path.join(target, name) for name in READONLY_PATHS),
    )


class ProcMounter:
    """Mounts forked sandboxes' ``/proc``: through procfs's ``pidns`` option
    when the kernel has it (probed once), else through a helper process.
    ``via_helper`` may be set to force the helper (tests of older kernels)."""

    def __init__(self) -> None:
        self.via_helper = not native.proc_pidns_option()

    def mount_for(self, root: str, pid: int, pidfd: int) -> None:
        """Mount the procfs of process ``pid``'s PID namespace on ``root``'s
        ``/proc``.  ``pidfd`` (open on ``pid``) proves the namespace fd was
        taken from that very process: it must still be alive afterwards, so
        the pid was not reused.  Raises SandboxError."""
        try:
            ns_fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxError(f"/proc of pid {pid}: its PID namespace: {exc}") from exc
        try:
            if _exited(pidfd):
                raise SandboxError(f"/proc of pid {pid}: the process exited")
            native.mount_proc(proc_mount(root), ns_fd, via_helper=self.via_helper)
        except OSError as exc:
            raise SandboxError(f"/proc of pid {pid}: {exc}") from exc
        finally:
            os.close(ns_fd)


def _exited(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))
