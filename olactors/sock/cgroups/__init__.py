"""Sandbox cgroups for cgroup v1 (hybrid) and v2 behind one interface.

Typical use::

    layout = CgroupLayout.current()                  # or detect_layout(...)
    anomalies = CgroupAnomalies()
    backend = open_backend(layout, worker_id, anomalies)
    pool = CgroupPool(backend, size=8, anomalies=anomalies)
    await pool.start()
    cgroup = pool.acquire(CgroupLimits(mem_bytes=128 << 20, pids=64, cpu_percent=100))
    fds = cgroup.open_procs_fds()                    # child writes "0" to each, caller closes
    ...
    await pool.release(cgroup)
    await pool.close()

Every cgroup lives under ``<own cgroup>/olactors-<worker_id>/`` (see ``_v2``
for the single, documented exception on cgroup v2).  Failures raise
:class:`~olactors._errors.CgroupError`; slow and failed kernel operations are
counted in :class:`CgroupAnomalies`.
"""

from __future__ import annotations

from ._anomalies import CgroupAnomalies
from ._api import CallUsage, Cgroup, CgroupBackend, CgroupLimits, CgroupUsage
from ._backend import open_backend
from ._detect import CgroupLayout, Hierarchy, detect_layout
from ._pool import CgroupPool

__all__ = [
    "CallUsage",
    "Cgroup",
    "CgroupAnomalies",
    "CgroupBackend",
    "CgroupLayout",
    "CgroupLimits",
    "CgroupPool",
    "CgroupUsage",
    "Hierarchy",
    "detect_layout",
    "open_backend",
]
