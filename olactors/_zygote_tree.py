"""The import-cache tree from olactors/config/zygotes.yaml (pure).

A node names the packages its zygote pre-imports beyond its ancestors', by
project name with an optional version range (``numpy>=2,<3``), and may list
extra stdlib modules to import.  :meth:`ZygoteTree.node_for` picks the
deepest node whose packages (with its ancestors') are all among a function's
resolved packages, at versions inside the node's ranges, skipping nodes that
would preload a package found unfit for zygotes; ties go to the earlier
sibling.  A node's zygote is built for exact versions (:meth:`ZygoteNode.pins`),
so one built with numpy 2.1 never serves a function locked to numpy 2.2.
Unknown keys, duplicate names, bad requirements and a root with packages are
rejected with a message naming the node.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from ._errors import ConfigError

DEFAULT_TREE_PATH = Path(__file__).resolve().parent / "config" / "zygotes.yaml"
_KEYS = {"name", "packages", "imports", "children"}


@dataclass(frozen=True, slots=True)
class ZygoteNode:
    name: str
    packages: tuple[str, ...]  # this node's own packages (canonical names, in order)
    imports: tuple[str, ...]  # modules this node's zygote imports (own only)
    children: tuple[ZygoteNode, ...]
    parent_name: str | None
    all_packages: frozenset[str]  # with the ancestors'
    ranges: Mapping[str, SpecifierSet] = field(default_factory=dict)  # with the ancestors'

    def accepts(self, versions: Mapping[str, str], unsuitable: frozenset[str]) -> bool:
        """Whether a function with these resolved ``versions`` can use this node."""
        for name in self.all_packages:
            version = versions.get(name)
            if version is None or name in unsuitable:
                return False
            spec = self.ranges.get(name)
            if spec is not None and not spec.contains(version, prereleases=True):
                return False
        return True

    def pins(self, versions: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The exact versions this node's zygote is built with for ``versions``."""
        return tuple(sorted((name, versions[name]) for name in self.all_packages))


class ZygoteTree:
    def __init__(self, root: ZygoteNode) -> None:
        self.root = root
        self.nodes = {node.name: node for node in _walk(root)}

    def node_for(
        self, versions: Mapping[str, str], unsuitable: frozenset[str] = frozenset()
    ) -> ZygoteNode:
        """The deepest node a function with resolved ``versions`` (canonical
        name -> version) can fork from, never one preloading an ``unsuitable`` package."""
        node = self.root
        while True:
            for child in node.children:
                if child.accepts(versions, unsuitable):
                    node = child
                    break
            else:
                return node

    def path_to(self, name: str) -> list[ZygoteNode]:
        """Nodes from the root down to ``name``."""
        path = []
        node: ZygoteNode | None = self.nodes[name]
        while node is not None:
            path.append(node)
            node = self.nodes[node.parent_name] if node.parent_name else None
        return path[::-1]


def _walk(node: ZygoteNode) -> Iterator[ZygoteNode]:
    yield node
    for child in node.children:
        yield from _walk(child)


def _names(value: object, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {key} must be a list of names")
    for v in value:
        if not all(part.isidentifier() for part in v.split(".")) and key == "imports":
            raise ConfigError(f"{where}: {v!r} in imports is not a module name")
    return tuple(value)


def _parse_node(
    raw: object,
    origin: str,
    parent: str | None,
    seen: set[str],
    inherited: frozenset[str],
    inherited_ranges: Mapping[str, SpecifierSet],
) -> ZygoteNode:
    """Parse one node and its subtree; ``parent`` is the parent node's name."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: every node must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{origin}: a node has no name")
    where = f"{origin}: node {name!r}"
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})"
        )
    if name in seen:
        raise ConfigError(f"{where}: duplicate node name")
    seen.add(name)
    requirements = _names(raw.get("packages"), where, "packages")
    if parent is None and requirements:
        raise ConfigError(f"{where}: the root node cannot have packages")
    imports = _names(raw.get("imports"), where, "imports")
    children_raw = raw.get("children") or []
    if not isinstance(children_raw, list):
        raise ConfigError(f"{where}: children must be a list of nodes")
    packages = []
    ranges = dict(inherited_ranges)
    for text in requirements:
        package, spec = _package(text, where)
        if package in inherited or package in packages:
            raise ConfigError(f"{where}: package {package!r} is named twice on this path")
        packages.append(package)
        if spec is not None:
            ranges[package] = spec
    all_packages = inherited | frozenset(packages)
    children = tuple(_parse_node(c, origin, name, seen, all_packages, ranges) for c in children_raw)
    return ZygoteNode(name, tuple(packages), imports, children, parent, all_packages, ranges)


def _package(text: str, where: str) -> tuple[str, SpecifierSet | None]:
    """``name`` or ``name<range>`` -> (canonical name, range or None)."""
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise ConfigError(f"{where}: {text!r} in packages is not a requirement: {exc}") from None
    if req.extras or req.marker is not None or req.url:
        raise ConfigError(
            f"{where}: {text!r} in packages: only a project name and a version range are allowed"
        )
    return canonicalize_name(req.name), (req.specifier if str(req.specifier) else None)


def parse_zygote_tree(text: str, origin: str = "zygotes.yaml") -> ZygoteTree:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"root"}:
        raise ConfigError(f"{origin}: expected a single top-level key 'root'")
    return ZygoteTree(_parse_node(data["root"], origin, None, set(), frozenset(), {}))


def load_zygote_tree(path: str = "") -> ZygoteTree:
    source = Path(path) if path else DEFAULT_TREE_PATH
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"import_cache.tree: cannot read {source}: {exc.strerror}") from None
    return parse_zygote_tree(text, str(source))
