"""A function's own configuration, its optional ``ol.yaml`` (pure: no trio, no I/O).

Schema (every key optional; any other key is rejected, naming its path)::

    triggers:
      http:                       # methods the function accepts; absent or [] = any
        - method: GET             # GET HEAD POST PUT PATCH DELETE OPTIONS (any case)
    environment:                  # extra environment variables of the handler
      NAME: value                 # str, int, float or bool (bools become "true"/"false")
    reuse_sandbox: true           # false: a fresh sandbox per request
    limits:                       # each at most the worker's limits.max_*
      mem_mb: 256
      procs: 32
      cpu_percent: 50
      runtime_s: 5.0
      init_s: 120                 # the handler's import (see below)
    network: none                 # none | egress (default: the worker's sandbox.network)
    access: private               # public | private (default: functions.default_access);
                                  # private: callers need Authorization: Bearer <token>
    entry: "pkg.mod:handler"      # default: f.py's f
    packages:                     # requirements from the worker's package index
      - "requests>=2,<3"          # pip syntax: name, [extras], range, ; marker
      - 'numpy; python_version >= "3.11"'
    secrets: [DB_PASSWORD]        # secrets it needs (granted by the admin; see below)

``limits.init_s`` bounds the function's import when a sandbox starts (the
*init phase*, after the runtime itself started): beyond it the call gets 504
``init_timeout`` and the sandbox is destroyed (worker default ``limits.init_s``,
at most ``limits.max_init_s``).

``packages`` holds the requirement strings as written (stripped); each is
validated with :func:`olactors.packages.parse_requirement` (no pip options,
URLs or paths). A function declares packages in ol.yaml, requirements.txt or
f.py's ``# ol-install:``, never two of them (see :mod:`olactors.packages`).

A mapping section left empty (``limits:``) counts as absent. Every error is a
:class:`BadFunction` whose message starts with the ``origin`` (``ol.yaml``) and
names the key.

``secrets`` names secrets the function needs (``[A-Za-z0-9_.-]{1,128}``, no
duplicates).  Declaring grants nothing: the admin grants (``olactors secret
grant``), and a call of a function whose declared secret is not granted is
424 ``secret_not_granted`` before any of its code runs.  A granted secret is
delivered whether or not it is declared.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from ._access import Access
from ._config import MINIMUMS, NUMBER_MAX, Config, describe_yaml_error, load_yaml
from ._errors import BadFunction, BadSecretName
from ._network import Network, network_problem
from ._secrets import validate_secret_name

if TYPE_CHECKING:
    from .packages import FunctionPackages

    # imported when resolving: the sock package is heavy for a pure parser
    from .sock._api import SandboxLimits

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_TOP_KEYS = (
    "triggers",
    "environment",
    "reuse_sandbox",
    "limits",
    "network",
    "entry",
    "packages",
    "secrets",
    "access",
)
_TRIGGER_KINDS = ("http",)
_TRIGGER_KEYS = ("method",)
_INT_LIMITS = ("mem_mb", "procs", "cpu_percent")
_FLOAT_LIMITS = ("runtime_s", "init_s")
_LIMIT_KEYS = (*_INT_LIMITS, *_FLOAT_LIMITS)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    """A parsed ``ol.yaml``; the defaults stand for an absent file.

    ``methods`` is upper-cased, without duplicates; ``()`` accepts any method.
    Limits left ``None`` take the worker defaults (see :func:`resolve_limits`).
    ``entry`` is ``"module:attr"`` or ``None`` for ``f.py``'s ``f``.
    ``packages`` are the requirement strings of ``packages:`` as written.
    ``dependencies`` is what the whole function dir declares and locks (see
    :func:`olactors.registry.validate_function_dir`); ``None``: not read, no packages.
    ``access`` ``None`` takes the worker's ``functions.default_access``
    (see :func:`effective_access`).
    """

    methods: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    reuse_sandbox: bool = True
    mem_mb: int | None = None
    procs: int | None = None
    cpu_percent: int | None = None
    runtime_s: float | None = None
    init_s: float | None = None
    network: Network | None = None
    entry: str | None = None
    packages: tuple[str, ...] = ()
    dependencies: FunctionPackages | None = None
    secrets: tuple[str, ...] = ()
    access: Access | None = None


def effective_access(fc: FunctionConfig, config: Config) -> Access:
    """Who may call the function: its ol.yaml ``access``, else the worker's
    ``functions.default_access``."""
    if fc.access is not None:
        return fc.access
    return Access(config.functions.default_access)


@dataclass(frozen=True, slots=True)
class ResolvedLimits:
    """What a function's sandboxes get: its requests, or the worker defaults."""

    sandbox: SandboxLimits
    runtime_s: float
    network: Network


def parse_function_config(text: str | None, origin: str = "ol.yaml") -> FunctionConfig:
    """Parse and validate the text of an ``ol.yaml``; ``None`` or empty text gives defaults.

    Raises :class:`BadFunction` (500; callers handling an upload re-raise it
    as 400) naming ``origin`` and the offending key.
    """
    if text is None or not text.strip():
        return FunctionConfig()
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise BadFunction(f"{origin}: not valid YAML: {describe_yaml_error(exc)}") from None
    if data is None:
        return FunctionConfig()
    if not isinstance(data, Mapping):
        raise BadFunction(f"{origin}: top level must be a mapping, got {_kind(data)}")
    _reject_unknown(data, _TOP_KEYS, "", origin)
    fields: dict[str, Any] = {}
    fields["methods"] = _parse_triggers(data.get("triggers"), origin)
    fields["environment"] = _parse_environment(data.get("environment"), origin)
    if "reuse_sandbox" in data:
        value = data["reuse_sandbox"]
        if not isinstance(value, bool):
            raise BadFunction(f"{origin}: reuse_sandbox must be true or false, got {value!r}")
        fields["reuse_sandbox"] = value
    fields.update(_parse_limits(data.get("limits"), origin))
    if "network" in data:
        value = data["network"]
        problem = network_problem(value)
        if problem is not None:
            raise BadFunction(f"{origin}: network {problem}")
        fields["network"] = Network(value)
    if "entry" in data:
        fields["entry"] = _parse_entry(data["entry"], origin)
    if "access" in data:
        value = data["access"]
        choices = [a.value for a in Access]
        if value not in choices:
            raise BadFunction(
                f"{origin}: access must be one of {', '.join(choices)}, got {value!r}"
            )
        fields["access"] = Access(value)
    fields["packages"] = _parse_packages(data.get("packages"), origin)
    fields["secrets"] = _parse_secrets(data.get("secrets"), origin)
    return FunctionConfig(**fields)


def resolve_limits(fc: FunctionConfig, config: Config) -> ResolvedLimits:
    """The limits and network of ``fc``'s sandboxes under the worker ``config``.

    Unset values take the worker defaults (``limits.*``, ``sandbox.tmp_mb``,
    ``sandbox.tmp_inodes``, ``sandbox.network``). A requested value above the worker maximum
    (``limits.max_*``; for the network, ``sandbox.network``: ``egress`` only
    where the worker allows it) raises :class:`BadFunction` (500); a maximum
    of 0 for ``cpu_percent`` means no maximum.
    """
    from .sock._api import SandboxLimits

    limits = config.limits
    requested = {key: getattr(fc, key) for key in _LIMIT_KEYS}
    for key, value in requested.items():
        maximum = getattr(limits, f"max_{key}")
        if value is None or (key == "cpu_percent" and maximum == 0):
            continue
        if value > maximum:
            raise BadFunction(
                f"ol.yaml limits.{key} {value} exceeds the worker maximum {maximum} "
                f"(limits.max_{key})"
            )
    if fc.network is Network.EGRESS and config.sandbox.network != Network.EGRESS:
        # Functions reach the outside only where the operator opts in.
        raise BadFunction(
            "ol.yaml network: egress is not allowed on this worker "
            "(its sandbox.network is none; set it to egress to allow it)"
        )
    chosen = {
        key: getattr(limits, key) if value is None else value for key, value in requested.items()
    }
    return ResolvedLimits(
        sandbox=SandboxLimits(
            mem_mb=chosen["mem_mb"],
            procs=chosen["procs"],
            cpu_percent=chosen["cpu_percent"],
            tmp_mb=config.sandbox.tmp_mb,
            tmp_inodes=config.sandbox.tmp_inodes,
            init_s=float(chosen["init_s"]),
        ),
        runtime_s=float(chosen["runtime_s"]),
        network=fc.network if fc.network is not None else Network(config.sandbox.network),
    )


# ------------------------------------------------------------------ sections
def _parse_triggers(value: Any, origin: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise BadFunction(f"{origin}: triggers must be a mapping, got {_kind(value)}")
    _reject_unknown(value, _TRIGGER_KINDS, "triggers.", origin)
    http = value.get("http")
    if http is None:
        return ()
    if not isinstance(http, list):
        raise BadFunction(f"{origin}: triggers.http must be a list, got {_kind(http)}")
    methods: list[str] = []
    for index, trigger in enumerate(http):
        path = f"triggers.http[{index}]"
        if not isinstance(trigger, Mapping):
            raise BadFunction(
                f"{origin}: {path} must be a mapping like {{method: GET}}, got {_kind(trigger)}"
            )
        _reject_unknown(trigger, _TRIGGER_KEYS, f"{path}.", origin)
        if "method" not in trigger:
            raise BadFunction(f"{origin}: {path} has no method")
        method = trigger["method"]
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            raise BadFunction(
                f"{origin}: {path}.method must be one of {' '.join(HTTP_METHODS)}, got {method!r}"
            )
        if method.upper() not in methods:
            methods.append(method.upper())
    return tuple(methods)


def _parse_environment(value: Any, origin: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise BadFunction(f"{origin}: environment must be a mapping, got {_kind(value)}")
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise BadFunction(
                f"{origin}: environment key {key!r} is not a valid variable name "
                "(letters, digits, '_', not starting with a digit)"
            )
        if isinstance(item, bool):
            text = "true" if item else "false"
        elif isinstance(item, (str, int, float)):
            text = str(item)
        else:
            raise BadFunction(
                f"{origin}: environment.{key} must be a string, number or bool, got {_kind(item)}"
            )
        if "\0" in text:
            raise BadFunction(f"{origin}: environment.{key} contains a NUL character")
        pairs.append((key, text))
    return tuple(pairs)


def _parse_limits(value: Any, origin: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadFunction(f"{origin}: limits must be a mapping, got {_kind(value)}")
    _reject_unknown(value, _LIMIT_KEYS, "limits.", origin)
    parsed: dict[str, Any] = {}
    for key, item in value.items():
        path = f"limits.{key}"
        if key in _INT_LIMITS:
            if not isinstance(item, int) or isinstance(item, bool):
                raise BadFunction(f"{origin}: {path} must be an integer, got {item!r}")
        elif not isinstance(item, (int, float)) or isinstance(item, bool):
            raise BadFunction(f"{origin}: {path} must be a number, got {item!r}")
        if item <= 0:
            raise BadFunction(f"{origin}: {path} must be positive, got {item!r}")
        if not item <= NUMBER_MAX:  # also NaN
            raise BadFunction(f"{origin}: {path} must be a finite number up to 2**53, got {item!r}")
        minimum = MINIMUMS.get(path, 0)
        if item < minimum:
            raise BadFunction(f"{origin}: {path} must be at least {minimum}, got {item!r}")
        parsed[key] = float(item) if key in _FLOAT_LIMITS else item
    return parsed


def _parse_entry(value: Any, origin: str) -> str:
    if not isinstance(value, str):
        raise BadFunction(f"{origin}: entry must be a string like 'module:function', got {value!r}")
    module, sep, attr = value.partition(":")
    parts = module.split(".")
    if not sep or not all(_identifier(p) for p in parts) or not _identifier(attr):
        raise BadFunction(
            f"{origin}: entry {value!r} is not 'module:function' "
            "(a dotted module name, a colon, an identifier)"
        )
    return value


def _parse_packages(value: Any, origin: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadFunction(
            f"{origin}: packages must be a list of requirement strings, got {_kind(value)}"
        )
    # Imported here: olactors.packages reads ol.yaml with this module.
    from .packages._requirement import parse_requirement

    texts = []
    for index, item in enumerate(value):
        where = f"{origin}: packages[{index}]"
        if not isinstance(item, str):
            raise BadFunction(f"{where} must be a string like 'name>=1.0', got {item!r}")
        parse_requirement(item, where)
        texts.append(item.strip())
    return tuple(texts)


def _parse_secrets(value: Any, origin: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadFunction(f"{origin}: secrets must be a list of secret names, got {_kind(value)}")
    names: list[str] = []
    for index, item in enumerate(value):
        where = f"{origin}: secrets[{index}]"
        if not isinstance(item, str):
            raise BadFunction(f"{where} must be a secret name, got {_kind(item)}")
        try:
            validate_secret_name(item)
        except BadSecretName as exc:
            raise BadFunction(f"{where}: {exc.message}") from None
        if item in names:
            raise BadFunction(f"{where}: {item!r} is listed twice")
        names.append(item)
    return tuple(names)


# ------------------------------------------------------------------ helpers
def _identifier(text: str) -> bool:
    return text.isidentifier() and text.isascii() and not keyword.iskeyword(text)


def _reject_unknown(
    mapping: Mapping[Any, Any], known: tuple[str, ...], prefix: str, origin: str
) -> None:
    for key in mapping:
        if key not in known:
            raise BadFunction(f"{origin}: unknown key '{prefix}{key}' (known: {', '.join(known)})")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a bool"}.get(
        type(value), type(value).__name__
    )
