"""Find out which cgroup version to use and where the worker's own cgroups are.

:func:`detect_layout` is pure (it parses the texts of ``/proc/self/cgroup``,
``/proc/self/mountinfo`` and the worker's own v2 ``cgroup.controllers``);
:meth:`CgroupLayout.current` reads the real files and calls it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from ..._errors import CgroupError

Prefer = Literal["auto", "v1", "v2"]

#: Controllers each backend needs.
V1_REQUIRED = ("memory", "pids", "cpu", "cpuacct", "freezer")
V2_REQUIRED = ("memory", "pids", "cpu")


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One mounted cgroup hierarchy as seen by the worker.

    - ``controllers``: v1: controllers attached to this hierarchy; v2: the
      controllers available in the worker's own cgroup (its cgroup.controllers).
    - ``mount_point``: where the hierarchy is mounted.
    - ``own_path``: the worker's cgroup in this hierarchy, from /proc/self/cgroup.
    - ``own_dir``: the directory of that cgroup (mount point + own path, made
      relative to the mount's root for bind-mounted or namespaced hierarchies).
    """

    controllers: frozenset[str]
    mount_point: str
    own_path: str
    own_dir: str


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """The cgroup version to use and, per needed controller, its hierarchy."""

    version: Literal[1, 2]
    hierarchies: tuple[Hierarchy, ...]
    by_controller: dict[str, Hierarchy] = field(default_factory=dict, hash=False)

    def hierarchy_for(self, controller: str) -> Hierarchy:
        """The hierarchy serving ``controller`` (v2: the unified one); CgroupError if none."""
        if self.version == 2:
            return self.hierarchies[0]
        try:
            return self.by_controller[controller]
        except KeyError:
            raise CgroupError(f"no cgroup v1 hierarchy for controller {controller!r}") from None

    @classmethod
    def current(cls, prefer: Prefer = "auto") -> CgroupLayout:
        """Detect the layout of the running process from /proc and /sys."""
        proc_cgroup = _read("/proc/self/cgroup")
        mountinfo = _read("/proc/self/mountinfo")
        v2_controllers = None
        unified = find_unified(parse_proc_cgroup(proc_cgroup), parse_mountinfo(mountinfo))
        if unified is not None:
            try:
                with open(os.path.join(unified.own_dir, "cgroup.controllers")) as f:
                    v2_controllers = f.read()
            except OSError:
                v2_controllers = None
        return detect_layout(proc_cgroup, mountinfo, prefer, v2_controllers=v2_controllers)

    @classmethod
    def v2_at(cls, own_dir: str, controllers: frozenset[str] = frozenset()) -> CgroupLayout:
        """A v2 layout for an explicit directory (tests, or an operator-chosen cgroup)."""
        hierarchy = Hierarchy(controllers, own_dir, "/", own_dir)
        return cls(2, (hierarchy,), {c: hierarchy for c in controllers})


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str
    mount_point: str
    fstype: str
    super_options: frozenset[str]


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map controller -> own path from /proc/self/cgroup; the v2 entry is keyed ``""``.

    Named v1 hierarchies (``name=systemd``) are ignored.
    """
    result: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise CgroupError(f"malformed /proc/self/cgroup line: {line!r}")
        _hid, controllers, path = parts
        if controllers == "":
            result[""] = path
            continue
        for controller in controllers.split(","):
            if controller and not controller.startswith("name="):
                result[controller] = path
    return result


def _unescape(field_text: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    if "\\" not in field_text:
        return field_text
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[_Mount]:
    """The cgroup and cgroup2 mounts listed in /proc/self/mountinfo, in order."""
    mounts: list[_Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            _Mount(
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fstype=tail[0],
                super_options=frozenset(tail[2].split(",")),
            )
        )
    return mounts


def _own_dir(mount: _Mount, own_path: str) -> str | None:
    """Directory of ``own_path`` inside ``mount``, or None if the mount does not contain it."""
    root = mount.root.rstrip("/")
    if own_path != root and not own_path.startswith(root + "/"):
        return None
    rel = own_path[len(root) :].lstrip("/")
    return os.path.join(mount.mount_point, rel) if rel else mount.mount_point


def find_unified(own: dict[str, str], mounts: list[_Mount]) -> Hierarchy | None:
    """The cgroup2 hierarchy holding the worker's own cgroup (controllers left empty)."""
    if "" not in own:
        return None
    for mount in mounts:
        if mount.fstype == "cgroup2":
            own_dir = _own_dir(mount, own[""])
            if own_dir is not None:
                return Hierarchy(frozenset(), mount.mount_point, own[""], own_dir)
    return None


def _v1_hierarchies(own: dict[str, str], mounts: list[_Mount]) -> dict[str, Hierarchy]:
    found: dict[str, Hierarchy] = {}
    for mount in mounts:
        if mount.fstype != "cgroup":
            continue
        controllers = frozenset(c for c in mount.super_options if c in own)
        for controller in controllers:
            if controller in found:
                continue
            own_dir = _own_dir(mount, own[controller])
            if own_dir is not None:
                found[controller] = Hierarchy(
                    controllers, mount.mount_point, own[controller], own_dir
                )
    return found


def detect_layout(
    proc_self_cgroup: str,
    proc_self_mountinfo: str,
    prefer: Prefer = "auto",
    *,
    v2_controllers: str | None = None,
) -> CgroupLayout:
    """Choose the cgroup version and locate the worker's own cgroup per controller.

    ``v2_controllers`` is the content of ``cgroup.controllers`` in the worker's
    own v2 cgroup (None: unknown, treated as empty).  ``auto`` picks v2 only
    if memory, pids and cpu are all available there, otherwise v1, which needs
    memory, pids, cpu, cpuacct and freezer.  Raises CgroupError naming the
    missing controllers when the chosen (or every) version is unusable.
    """
    if prefer not in ("auto", "v1", "v2"):
        raise CgroupError(f"unknown cgroup version preference {prefer!r}")
    own = parse_proc_cgroup(proc_self_cgroup)
    mounts = parse_mountinfo(proc_self_mountinfo)

    v2_error = None
    unified = find_unified(own, mounts)
    if unified is None:
        v2_error = "no cgroup2 hierarchy containing the worker's cgroup is mounted"
    else:
        available = frozenset((v2_controllers or "").split())
        missing = [c for c in V2_REQUIRED if c not in available]
        if missing:
            v2_error = (
                f"cgroup v2 controller(s) {', '.join(missing)} not available in "
                f"{unified.own_dir} (cgroup.controllers: {' '.join(sorted(available)) or '-'})"
            )
        else:
            hierarchy = Hierarchy(available, unified.mount_point, unified.own_path, unified.own_dir)
            if prefer in ("auto", "v2"):
                return CgroupLayout(2, (hierarchy,), {c: hierarchy for c in available})
    if prefer == "v2":
        raise CgroupError(v2_error or "cgroup v2 unusable")

    v1 = _v1_hierarchies(own, mounts)
    missing = [c for c in V1_REQUIRED if c not in v1]
    if missing:
        v1_error = f"cgroup v1 controller(s) {', '.join(missing)} not mounted for this process"
        if prefer == "auto":
            raise CgroupError(f"no usable cgroups: {v2_error}; {v1_error}")
        raise CgroupError(v1_error)
    hierarchies = tuple(dict.fromkeys(v1[c] for c in V1_REQUIRED))
    return CgroupLayout(1, hierarchies, {c: v1[c] for c in V1_REQUIRED})


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise CgroupError(f"cannot read {path}: {exc.strerror}") from exc
