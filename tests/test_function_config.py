"""ol.yaml parsing and limit resolution (pure)."""

from __future__ import annotations

import pytest

from olactors._config import build_config
from olactors._errors import BadFunction, BadFunctionName
from olactors._function_config import (
    FunctionConfig,
    ResolvedLimits,
    parse_function_config,
    resolve_limits,
)
from olactors._names import validate_function_name
from olactors.sock._api import SandboxLimits

FULL = """
triggers:
  http:
    - method: get
    - method: POST
    - method: GET
environment:
  GREETING: hello
  COUNT: 3
  RATIO: 0.5
  DEBUG: true
  _OFF: false
reuse_sandbox: false
limits:
  mem_mb: 256
  procs: 16
  cpu_percent: 50
  runtime_s: 2
  init_s: 90
network: egress
entry: "pkg.handlers:main"
"""


def test_defaults_for_absent_or_empty_text():
    assert parse_function_config(None) == FunctionConfig()
    assert parse_function_config("") == FunctionConfig()
    assert parse_function_config("  \n# only a comment\n") == FunctionConfig()
    fc = FunctionConfig()
    assert (fc.methods, fc.environment, fc.reuse_sandbox, fc.entry) == ((), (), True, None)


def test_full_config():
    fc = parse_function_config(FULL)
    assert fc.methods == ("GET", "POST")
    assert fc.environment == (
        ("GREETING", "hello"),
        ("COUNT", "3"),
        ("RATIO", "0.5"),
        ("DEBUG", "true"),
        ("_OFF", "false"),
    )
    assert fc.reuse_sandbox is False
    assert (fc.mem_mb, fc.procs, fc.cpu_percent) == (256, 16, 50)
    assert fc.runtime_s == 2.0 and isinstance(fc.runtime_s, float)
    assert fc.init_s == 90.0 and isinstance(fc.init_s, float)
    assert fc.network == "egress"
    assert fc.entry == "pkg.handlers:main"


def test_empty_sections_count_as_absent():
    fc = parse_function_config("triggers:\nenvironment:\nlimits:\n")
    assert fc == FunctionConfig()
    assert parse_function_config("triggers:\n  http: []\n").methods == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1, 2", "ol.yaml: not valid YAML"),
        ("- 1\n- 2\n", "ol.yaml: top level must be a mapping, got a list"),
        ("handler: f\n", "ol.yaml: unknown key 'handler'"),
        ("limits:\n  memory: 5\n", "ol.yaml: unknown key 'limits.memory'"),
        ("triggers:\n  cron: []\n", "ol.yaml: unknown key 'triggers.cron'"),
        (
            "triggers:\n  http:\n    - {method: GET, path: /x}\n",
            "ol.yaml: unknown key 'triggers.http[0].path'",
        ),
        ("triggers: [http]\n", "ol.yaml: triggers must be a mapping, got a list"),
        ("triggers:\n  http: GET\n", "ol.yaml: triggers.http must be a list, got a string"),
        ("triggers:\n  http: [GET]\n", "ol.yaml: triggers.http[0] must be a mapping"),
        ("triggers:\n  http: [{}]\n", "ol.yaml: triggers.http[0] has no method"),
        (
            "triggers:\n  http:\n    - method: GET\n    - method: FETCH\n",
            "ol.yaml: triggers.http[1].method must be one of GET HEAD POST PUT PATCH DELETE "
            "OPTIONS, got 'FETCH'",
        ),
        ("triggers:\n  http: [{method: 1}]\n", "ol.yaml: triggers.http[0].method must be one of"),
        ("environment: [A]\n", "ol.yaml: environment must be a mapping, got a list"),
        ("environment:\n  1BAD: x\n", "ol.yaml: environment key '1BAD' is not a valid variable"),
        ("environment:\n  A-B: x\n", "ol.yaml: environment key 'A-B' is not a valid variable"),
        ("environment:\n  A: [1]\n", "ol.yaml: environment.A must be a string, number or bool"),
        ("environment:\n  A: null\n", "ol.yaml: environment.A must be a string, number or bool"),
        ("reuse_sandbox: yes please\n", "ol.yaml: reuse_sandbox must be true or false"),
        ("limits: 5\n", "ol.yaml: limits must be a mapping, got int"),
        ("limits:\n  mem_mb: 1.5\n", "ol.yaml: limits.mem_mb must be an integer, got 1.5"),
        ("limits:\n  procs: true\n", "ol.yaml: limits.procs must be an integer, got True"),
        ("limits:\n  mem_mb: 0\n", "ol.yaml: limits.mem_mb must be positive, got 0"),
        ("limits:\n  procs: -3\n", "ol.yaml: limits.procs must be positive, got -3"),
        ("limits:\n  cpu_percent: 0\n", "ol.yaml: limits.cpu_percent must be positive, got 0"),
        ("limits:\n  runtime_s: 0\n", "ol.yaml: limits.runtime_s must be positive, got 0"),
        ("limits:\n  runtime_s: soon\n", "ol.yaml: limits.runtime_s must be a number"),
        ("limits:\n  init_s: 0\n", "ol.yaml: limits.init_s must be positive, got 0"),
        ("limits:\n  init_s: 0.05\n", "ol.yaml: limits.init_s must be at least 0.1"),
        ("limits:\n  init_s: [1]\n", "ol.yaml: limits.init_s must be a number"),
        ("limits:\n  mem_mb: 8\n", "ol.yaml: limits.mem_mb must be at least 16, got 8"),
        ("network: bridge\n", "ol.yaml: network must be one of none, egress, got 'bridge'"),
        ("entry: 5\n", "ol.yaml: entry must be a string like 'module:function', got 5"),
        ("entry: handler\n", "ol.yaml: entry 'handler' is not 'module:function'"),
        ("entry: 'a..b:f'\n", "ol.yaml: entry 'a..b:f' is not 'module:function'"),
        ("entry: 'a.b:'\n", "ol.yaml: entry 'a.b:' is not 'module:function'"),
        ("entry: 'a-b:f'\n", "ol.yaml: entry 'a-b:f' is not 'module:function'"),
        ("entry: 'mod:f.g'\n", "ol.yaml: entry 'mod:f.g' is not 'module:function'"),
        ("entry: 'class:f'\n", "ol.yaml: entry 'class:f' is not 'module:function'"),
    ],
)
def test_rejected(text, message):
    with pytest.raises(BadFunction) as info:
        parse_function_config(text)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.status == 500
    assert info.value.code == "bad_function"


def test_packages():
    fc = parse_function_config(
        "packages:\n  - ' alpha>=1,<2 '\n  - beta[fast]\n  - 'delta; python_version >= \"3\"'\n"
    )
    assert fc.packages == ("alpha>=1,<2", "beta[fast]", 'delta; python_version >= "3"')
    assert parse_function_config("packages:\n").packages == ()
    assert parse_function_config("packages: []\n").packages == ()
    assert FunctionConfig().packages == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("packages: alpha\n", "ol.yaml: packages must be a list of requirement strings, got a "),
        ("packages: {alpha: 1}\n", "ol.yaml: packages must be a list of requirement strings"),
        ("packages: [alpha, 2]\n", "ol.yaml: packages[1] must be a string like 'name>=1.0', got 2"),
        ("packages: [null]\n", "ol.yaml: packages[0] must be a string like 'name>=1.0', got None"),
        ("packages: ['']\n", "ol.yaml: packages[0]: empty requirement"),
        ("packages: ['alpha >> 1']\n", "ol.yaml: packages[0]: 'alpha >> 1' is not a valid"),
        ("packages: ['-r req.txt']\n", "ol.yaml: packages[0]: pip option '-r' is not supported"),
        (
            "packages: ['alpha @ https://example.org/a.whl']\n",
            "ol.yaml: packages[0]: 'alpha @ https://example.org/a.whl' is a URL or a path",
        ),
        ("packages: ['./alpha']\n", "ol.yaml: packages[0]: './alpha' is a URL or a path"),
    ],
)
def test_packages_rejected(text, message):
    with pytest.raises(BadFunction) as info:
        parse_function_config(text)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.status == 500


def test_origin_names_the_file():
    with pytest.raises(BadFunction, match=r"^fn/ol\.yaml: unknown key 'limits\.x'"):
        parse_function_config("limits:\n  x: 1\n", origin="fn/ol.yaml")


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(BadFunction) as info:
        parse_function_config("limits:\n  memory: 5\n")
    assert "(known: mem_mb, procs, cpu_percent, runtime_s, init_s)" in info.value.message


def _config(*overrides: str):
    return build_config(None, list(overrides))


def test_resolve_defaults_come_from_the_worker():
    config = _config(
        "limits.mem_mb=100",
        "limits.procs=10",
        "limits.cpu_percent=70",
        "limits.runtime_s=3",
        "limits.init_s=20",
        "sandbox.tmp_mb=8",
        "sandbox.network=egress",
    )
    resolved = resolve_limits(FunctionConfig(), config)
    assert resolved == ResolvedLimits(
        sandbox=SandboxLimits(mem_mb=100, procs=10, cpu_percent=70, tmp_mb=8, init_s=20.0),
        runtime_s=3.0,
        network="egress",
    )


def test_resolve_uses_the_function_requests():
    fc = parse_function_config(FULL)
    resolved = resolve_limits(fc, _config("sandbox.network=egress"))
    assert resolved.sandbox == SandboxLimits(
        mem_mb=256, procs=16, cpu_percent=50, tmp_mb=64, init_s=90.0
    )
    assert resolved.runtime_s == 2.0
    assert resolved.network == "egress"
    assert resolve_limits(parse_function_config("network: none"), _config()).network == "none"
    assert (
        resolve_limits(parse_function_config("network: none"), _config("sandbox.network=egress"))
    ).network == "none"


def test_function_network_needs_the_workers_consent():
    with pytest.raises(BadFunction, match="network: egress is not allowed on this worker"):
        resolve_limits(parse_function_config("network: egress"), _config())


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (
            "mem_mb: 4096",
            "ol.yaml limits.mem_mb 4096 exceeds the worker maximum 2048 (limits.max_mem_mb)",
        ),
        (
            "procs: 600",
            "ol.yaml limits.procs 600 exceeds the worker maximum 512 (limits.max_procs)",
        ),
        (
            "cpu_percent: 250",
            "ol.yaml limits.cpu_percent 250 exceeds the worker maximum 200 "
            "(limits.max_cpu_percent)",
        ),
        (
            "runtime_s: 301",
            "ol.yaml limits.runtime_s 301.0 exceeds the worker maximum 300.0 "
            "(limits.max_runtime_s)",
        ),
        (
            "init_s: 601",
            "ol.yaml limits.init_s 601.0 exceeds the worker maximum 600.0 (limits.max_init_s)",
        ),
    ],
)
def test_resolve_refuses_more_than_the_maximum(limits, message):
    fc = parse_function_config(f"limits:\n  {limits}\n")
    with pytest.raises(BadFunction) as info:
        resolve_limits(fc, _config())
    assert info.value.message == message


def test_resolve_at_the_maximum_is_fine():
    fc = parse_function_config("limits:\n  mem_mb: 256\n")
    config = _config("limits.max_mem_mb=256")
    assert resolve_limits(fc, config).sandbox.mem_mb == 256
    with pytest.raises(BadFunction, match="exceeds the worker maximum 200 "):
        resolve_limits(
            parse_function_config("limits:\n  mem_mb: 201\n"), _config("limits.max_mem_mb=200")
        )


def test_cpu_maximum_zero_means_unlimited():
    config = _config("limits.cpu_percent=0", "limits.max_cpu_percent=0")
    fc = parse_function_config("limits:\n  cpu_percent: 400\n")
    assert resolve_limits(fc, config).sandbox.cpu_percent == 400
    assert resolve_limits(FunctionConfig(), config).sandbox.cpu_percent == 0


@pytest.mark.parametrize("name", ["f", "hello-world", "a.b_c-9", "X" * 128, "v1.2"])
def test_valid_function_names(name):
    assert validate_function_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "function name is empty"),
        (".hidden", "function name '.hidden' starts with a dot"),
        ("..", "function name '..' starts with a dot"),
        ("a/b", "function name 'a/b' contains '/'"),
        ("a b", "function name 'a b' contains ' '"),
        ("caf\u00e9", "function name 'caf\u00e9' contains '\u00e9'"),
        ("x\n", "function name 'x\\n' contains '\\n'"),
        ("x" * 129, "function name is 129 characters long (at most 128)"),
    ],
)
def test_invalid_function_names(name, message):
    with pytest.raises(BadFunctionName) as info:
        validate_function_name(name)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.status == 400


@pytest.mark.parametrize(
    "key", ["max_response_bytes", "max_response_headers", "max_response_header_bytes"]
)
def test_response_bounds_are_the_workers_alone(key):
    """A function cannot raise what its sandbox may send back."""
    assert getattr(build_config(None, []).limits, key) > 0
    with pytest.raises(BadFunction, match=rf"unknown key 'limits\.{key}'"):
        parse_function_config(f"limits:\n  {key}: 1000000000\n")
