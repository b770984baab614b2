"""The import-cache tree from config/zygotes.yaml (pure).

A node names the packages its zygote pre-imports beyond its ancestors' and
may list extra modules to import.  :meth:`ZygoteTree.node_for` picks the
deepest node whose packages (with its ancestors') are all among a function's
packages; ties go to the earlier sibling.  Unknown keys, duplicate names and
a root with packages are rejected with a message naming the node.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ._errors import ConfigError

DEFAULT_TREE_PATH = Path(__file__).resolve().parent.parent / "config" / "zygotes.yaml"
_KEYS = {"name", "packages", "imports", "children"}


@dataclass(frozen=True, slots=True)
class ZygoteNode:
    name: str
    packages: tuple[str, ...]  # this node's own packages
    imports: tuple[str, ...]  # modules this node's zygote imports (own only)
    children: tuple[ZygoteNode, ...]
    parent_name: str | None
    all_packages: frozenset[str]  # with the ancestors'


class ZygoteTree:
    def __init__(self, root: ZygoteNode) -> None:
        self.root = root
        self.nodes = {node.name: node for node in _walk(root)}

    def node_for(self, packages: frozenset[str]) -> ZygoteNode:
        node = self.root
        while True:
            for child in node.children:
                if child.all_packages <= packages:
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
    raw: object, origin: str, parent: str | None, seen: set[str], inherited: frozenset[str]
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
    packages = _names(raw.get("packages"), where, "packages")
    if parent is None and packages:
        raise ConfigError(f"{where}: the root node cannot have packages")
    imports = _names(raw.get("imports"), where, "imports")
    children_raw = raw.get("children") or []
    if not isinstance(children_raw, list):
        raise ConfigError(f"{where}: children must be a list of nodes")
    all_packages = inherited | frozenset(p.lower() for p in packages)
    children = tuple(_parse_node(c, origin, name, seen, all_packages) for c in children_raw)
    return ZygoteNode(name, packages, imports, children, parent, all_packages)


def parse_zygote_tree(text: str, origin: str = "zygotes.yaml") -> ZygoteTree:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"root"}:
        raise ConfigError(f"{origin}: expected a single top-level key 'root'")
    return ZygoteTree(_parse_node(data["root"], origin, None, set(), frozenset()))


def load_zygote_tree(path: str = "") -> ZygoteTree:
    source = Path(path) if path else DEFAULT_TREE_PATH
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"import_cache.tree: cannot read {source}: {exc.strerror}") from None
    return parse_zygote_tree(text, str(source))
