"""Worker configuration: defaults, worker.yaml, ``--set`` overrides (pure).

The shipped ``olactors/config/worker.yaml`` is both the documented defaults and the
schema: a key that is not in it is rejected, and a value must have the same
type as its default (an int is accepted where a float is expected).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ._errors import ConfigError
from ._network import CONFIG_CHECKS

DEFAULTS_PATH = Path(__file__).resolve().parent / "config" / "worker.yaml"

# Keys whose value must be one of a fixed set.
CHOICES: dict[str, tuple[str, ...]] = {
    "sandbox.cgroup_version": ("auto", "v1", "v2"),
    "memory.eviction_policy": ("openlambda", "lru", "gdsf"),
    "functions.default_access": ("public", "private"),
}
# List keys whose items are not strings: the type of their items.
LIST_ITEM_TYPES: dict[str, type] = {"sandbox.egress_allow_host": int}
# Keys whose value must be >= the given minimum.
MINIMUMS: dict[str, float] = {
    "sandbox.tmp_mb": 1,
    "sandbox.tmp_inodes": 16,
    "sandbox.cgroup_pool_size": 0,
    "sandbox.ready_timeout_s": 0.1,
    "sandbox.freeze_timeout_s": 0.1,
    "sandbox.kill_timeout_s": 0.1,
    "limits.mem_mb": 16,
    "limits.procs": 4,
    "limits.cpu_percent": 0,
    "limits.runtime_s": 0.01,
    "limits.init_s": 0.1,
    "limits.zygote_mem_mb": 16,
    "limits.zygote_procs": 4,
    "limits.max_body_bytes": 0,
    "limits.max_response_bytes": 0,
    "limits.max_response_headers": 1,
    "limits.max_response_header_bytes": 64,
    "server.port": 0,
    "server.shutdown_timeout_s": 0,
    "server.drain_s": 0,
    "queue.max_depth": 1,
    "queue.retry_after_s": 0,
    "functions.idle_timeout_s": 0.01,
    "functions.max_instances": 1,
    "functions.scale_interval_s": 0.001,
    "functions.pause_after_s": 0,
    "functions.restart_intensity": 0,
    "functions.restart_period_s": 0.001,
    "functions.failure_cooldown_s": 0,
    "registry.cache_s": 0,
    "registry.max_code_mb": 1,
    "registry.timeout_s": 0.1,
    "memory.pool_mb": 16,
    "memory.free_goal_mb": 0,
    "memory.reserve_timeout_s": 0.01,
    "memory.eviction_interval_s": 0.01,
    "memory.max_concurrent_evictions": 1,
    "import_cache.pause_after_s": 0,
    "packages.resolve_timeout_s": 1,
    "packages.install_timeout_s": 1,
    "packages.install_mem_mb": 64,
    "packages.max_disk_mb": 16,
    "debug.max_output_bytes": 0,
    "debug.keep_per_function": 1,
    "debug.keep_s": 1,
    "debug.queue_max": 1,
}


#: Bounds on a YAML document read from a file or a client (see :func:`load_yaml`).
YAML_MAX_DEPTH = 64
YAML_MAX_NODES = 100_000
#: The largest magnitude of a number in a configuration (a float holds every
#: integer up to it exactly; nothing configurable is bigger). Also refuses NaN.
NUMBER_MAX = 2**53


class YamlTooComplex(yaml.error.MarkedYAMLError):
    """A YAML document nests too deeply, expands (through aliases) to too many
    nodes, or refers to an alias from inside its own anchor."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounded depth and alias expansion, whose
    scalar constructors report bad values as :class:`yaml.YAMLError`.

    PyYAML composes recursively (a deep document exhausts the stack with
    RecursionError) and shares aliased nodes, so a few hundred bytes of nested
    aliases ("billion laughs") stand for billions of nodes to anything that
    walks the result (a repr in an error message, a JSON dump). Each node's
    expanded size is counted as it is composed, so such a document is refused
    before anything walks it.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise YamlTooComplex(
                    problem=f"alias *{event.anchor} refers to its own anchor",
                    problem_mark=mark,
                )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise YamlTooComplex(
                    problem=f"nested deeper than {YAML_MAX_DEPTH} levels",
                    problem_mark=mark,
                )
            node: Any = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        else:
            size = 1
        if size > YAML_MAX_NODES:
            raise YamlTooComplex(
                problem=f"expands to more than {YAML_MAX_NODES} nodes (through aliases)",
                problem_mark=node.start_mark,
            )
        self._sizes[id(node)] = size
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # int('1'*5000), 2001-02-30, !!float x
            raise yaml.constructor.ConstructorError(
                problem=f"bad {node.tag.rpartition(':')[2]} value: {exc}",
                problem_mark=node.start_mark,
            ) from None


def load_yaml(text: str) -> Any:
    """One YAML document from ``text``, PyYAML's safe subset, bounded.

    Every problem with the text (syntax, a bad scalar such as ``2001-02-30``,
    nesting beyond :data:`YAML_MAX_DEPTH`, alias expansion beyond
    :data:`YAML_MAX_NODES`, recursive aliases) raises :class:`yaml.YAMLError`.
    """
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """``exc`` on one line."""
    return " ".join(str(exc).split())


class Section:
    """Read-only attribute view of one config section."""

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self._name = name
        self._values = dict(values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config has no key {self._name}.{key}") from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


class Config:
    """A validated worker configuration: ``config.sandbox.tmp_mb``."""

    def __init__(self, data: Mapping[str, Mapping[str, Any]]) -> None:
        self._data = {name: dict(values) for name, values in data.items()}
        for name, values in self._data.items():
            setattr(self, name, Section(name, values))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._data)

    def __getattr__(self, name: str) -> Section:  # for type checkers; real sections set in init
        raise AttributeError(f"config has no section {name}")


def load_defaults() -> dict[str, dict[str, Any]]:
    with open(DEFAULTS_PATH) as f:
        defaults: dict[str, dict[str, Any]] = yaml.safe_load(f)
    return defaults


def _type_ok(default: Any, value: Any, item_type: type = str) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list) and all(
            isinstance(item, item_type) and not isinstance(item, bool) for item in value
        )
    return isinstance(value, type(default))


def _merge(base: dict[str, dict[str, Any]], layer: Any, origin: str) -> None:
    if layer is None:
        return
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{origin}: top level must be a mapping of sections")
    for section, values in layer.items():
        if section not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"{origin}: unknown section {section!r} (known: {known})")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        for key, value in values.items():
            _set(base, f"{section}.{key}", value, origin)


def _set(base: dict[str, dict[str, Any]], dotted: str, value: Any, origin: str) -> None:
    section, _, key = dotted.partition(".")
    if section not in base or key not in base[section]:
        raise ConfigError(f"{origin}: unknown key {dotted!r}")
    default = base[section][key]
    item_type = LIST_ITEM_TYPES.get(dotted, str)
    if not _type_ok(default, value, item_type):
        items = "integers" if item_type is int else "strings"
        kind = f"a list of {items}" if isinstance(default, list) else type(default).__name__
        raise ConfigError(f"{origin}: {dotted} must be {kind}, got {value!r}")
    if isinstance(default, int | float) and not abs(value) <= NUMBER_MAX:  # also NaN
        raise ConfigError(
            f"{origin}: {dotted} must be a finite number of magnitude at most 2**53, got {value!r}"
        )
    if any(
        "\0" in item
        for item in (value if isinstance(value, list) else [value])
        if isinstance(item, str)
    ):
        raise ConfigError(f"{origin}: {dotted} contains a NUL character")
    if dotted in CHOICES and value not in CHOICES[dotted]:
        raise ConfigError(
            f"{origin}: {dotted} must be one of {', '.join(CHOICES[dotted])}, got {value!r}"
        )
    problem = CONFIG_CHECKS[dotted](value) if dotted in CONFIG_CHECKS else None
    if problem is not None:
        raise ConfigError(f"{origin}: {dotted} {problem}")
    if dotted in MINIMUMS and value < MINIMUMS[dotted]:
        raise ConfigError(f"{origin}: {dotted} must be >= {MINIMUMS[dotted]}, got {value!r}")
    base[section][key] = float(value) if isinstance(default, float) else value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is read as YAML (``5`` is an int)."""
    dotted, sep, raw = text.partition("=")
    if not sep or "." not in dotted:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: bad value: {describe_yaml_error(exc)}") from None
    return dotted.strip(), value


def build_config(
    file_text: str | None = None,
    overrides: Iterable[str] = (),
    *,
    origin: str = "worker.yaml",
) -> Config:
    """Defaults, then the YAML ``file_text``, then ``--set`` overrides."""
    data = load_defaults()
    if file_text is not None:
        try:
            layer = load_yaml(file_text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{origin}: not valid YAML: {describe_yaml_error(exc)}") from None
        _merge(data, layer, origin)
    for text in overrides:
        dotted, value = parse_override(text)
        _set(data, dotted, value, "--set")
    limits = data["limits"]
    for key in ("mem_mb", "procs", "cpu_percent", "runtime_s", "init_s"):
        if limits[key] > limits[f"max_{key}"]:
            raise ConfigError(
                f"limits.{key} ({limits[key]}) exceeds limits.max_{key} ({limits[f'max_{key}']})"
            )
    return Config(data)


def apply_overrides_to_text(text: str, overrides: Iterable[str]) -> str:
    """worker.yaml's ``text`` with each ``section.key=value`` written into it
    (``olactors init --set``), keeping its comments: the key's line in its
    section gets the new value (a trailing comment stays), a key the file lacks
    is added under its section, a missing section at the end. The result is
    validated (:class:`ConfigError` names the bad key, and nothing is to be
    written then)."""
    overrides = list(overrides)
    lines = text.splitlines()
    for override in overrides:
        dotted, value = parse_override(override)
        section, _, key = dotted.partition(".")
        rendered = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
        rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
        start = next((i for i, line in enumerate(lines) if line.rstrip() == f"{section}:"), None)
        if start is None:
            lines += ["", f"{section}:", f"  {key}: {rendered}"]
            continue
        end = next(
            (
                i
                for i in range(start + 1, len(lines))
                if lines[i] and not lines[i][0].isspace() and not lines[i].startswith("#")
            ),
            len(lines),
        )
        for i in range(start + 1, end):
            if lines[i].startswith(f"  {key}:"):
                _, _, rest = lines[i].partition(":")
                comment = ""
                if "#" in rest and not isinstance(value, str):
                    comment = "  #" + rest.split("#", 1)[1]
                lines[i] = f"  {key}: {rendered}{comment}"
                break
        else:
            lines.insert(start + 1, f"  {key}: {rendered}")
    new_text = "\n".join(lines) + "\n"
    if build_config(new_text).as_dict() != build_config(text, overrides).as_dict():
        raise ConfigError(
            "worker.yaml: cannot write the --set values into it (its layout is not the "
            "documented one: sections at column 0, keys indented by two spaces); edit it by hand"
        )
    return new_text


def load_worker_config(worker_dir: Path, overrides: Iterable[str] = ()) -> Config:
    path = worker_dir / "worker.yaml"
    text = None
    if path.exists():
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return build_config(text, overrides, origin=str(path))
