"""The backend factory: pick the v1 or v2 implementation for a layout."""

from __future__ import annotations

from ._anomalies import CgroupAnomalies
from ._api import CgroupBackend
from ._detect import CgroupLayout
from ._v1 import V1Backend
from ._v2 import V2Backend


def open_backend(
    layout: CgroupLayout,
    worker_id: str,
    anomalies: CgroupAnomalies,
    root_override: str | None = None,
) -> CgroupBackend:
    """Return a backend for ``layout`` whose subtree (``olactors-<worker_id>``) exists.

    Creating the subtree is idempotent, so a backend can be opened over a
    crashed worker's leftovers (e.g. to call ``remove_subtree``).
    ``root_override`` (v2 only) replaces the worker's own v2 cgroup as the
    parent of the subtree.  Raises CgroupError if the subtree cannot be set up
    and ValueError for an invalid ``worker_id``.
    """
    backend: V1Backend | V2Backend
    if layout.version == 2:
        backend = V2Backend(layout, worker_id, anomalies, root_override)
    else:
        if root_override is not None:
            raise ValueError("root_override is only supported by the cgroup v2 backend")
        backend = V1Backend(layout, worker_id, anomalies)
    backend.ensure_subtree()
    return backend
