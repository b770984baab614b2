"""Property tests of the parsers a user feeds: worker.yaml, ol.yaml, requirements.

Whatever the input, each parser either accepts it or raises the error type of
its input, naming the key or line: :class:`ConfigError` for worker.yaml and
``--set``, :class:`BadFunction` for ol.yaml, requirements.txt and
``# ol-install:``; never another exception (KeyError, TypeError,
RecursionError, UnicodeDecodeError, OverflowError, ValueError...). Inputs are
structured-but-wrong YAML (wrong types, unknown keys, nested junk, huge and
negative numbers, NaN, booleans for numbers), raw text and bytes, and
hand-made hostile documents (deep nesting, alias bombs, pathological lines),
the latter parsed in a subprocess with a memory and time cap so a regression
fails instead of eating the machine.

Hypothesis runs derandomized (the same examples on every run) and bounded.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olactors._config import build_config, load_defaults, load_worker_config, parse_override
from olactors._errors import BadFunction, ConfigError
from olactors._function_config import parse_function_config
from olactors.packages import parse_ol_install, parse_requirements_txt, read_declaration

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DEFAULTS = load_defaults()
SECTIONS = sorted(DEFAULTS)
OL_KEYS = ("triggers", "environment", "reuse_sandbox", "limits", "network", "entry", "packages")

# ----------------------------------------------------------------- strategies
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**53 + 1, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "\0", "none", "host", "GET", "a:b", "x" * 300, "é", "1e400"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers(), st.booleans()), inner, max_size=4
        ),
    ),
    max_leaves=12,
)


def names(message: str, path: str) -> bool:
    """``message`` names ``path`` (as written or as its repr shows it)."""
    return path in message or repr(path)[1:-1] in message


def dump(document: Any) -> str:
    """YAML for ``document`` (NaN and infinities as YAML's .nan/.inf)."""
    return yaml.safe_dump(document, allow_unicode=True)


@st.composite
def worker_documents(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A worker.yaml with one key (known or not) set to junk, and that key's path."""
    section = draw(st.one_of(st.sampled_from(SECTIONS), st.text(min_size=1, max_size=8)))
    known_keys = sorted(DEFAULTS.get(section, {}))
    key = draw(
        st.one_of(st.sampled_from(known_keys), st.text(min_size=1, max_size=8))
        if known_keys
        else st.text(min_size=1, max_size=8)
    )
    return {section: {key: draw(junk)}}, f"{section}.{key}" if section in DEFAULTS else section


@st.composite
def ol_documents(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """An ol.yaml with one top-level key set to junk (or a nested junk section)."""
    key = draw(st.one_of(st.sampled_from(OL_KEYS), st.text(min_size=1, max_size=8)))
    if key == "limits":
        sub = draw(st.sampled_from(["mem_mb", "procs", "cpu_percent", "runtime_s", "bogus"]))
        return {key: {sub: draw(junk)}}, f"limits.{sub}"
    if key == "triggers":
        value = draw(
            st.one_of(
                junk,
                st.fixed_dictionaries({"http": junk}),
                st.fixed_dictionaries({"http": st.lists(st.fixed_dictionaries({"method": junk}))}),
            )
        )
        return {key: value}, "triggers"
    return {key: draw(junk)}, key


# ------------------------------------------------------------------ worker.yaml
@FUZZ
@given(worker_documents())
def test_worker_yaml_structured(case: tuple[dict[str, Any], str]) -> None:
    document, path = case
    try:
        build_config(dump(document))
    except ConfigError as exc:
        assert names(exc.message, path) or "exceeds limits.max_" in exc.message, exc.message


@FUZZ
@given(st.text(max_size=200))
def test_worker_yaml_raw_text(text: str) -> None:
    try:
        build_config(text)
    except ConfigError:
        pass


@FUZZ
@given(st.sampled_from(SECTIONS), st.text(max_size=10), st.text(max_size=40))
def test_set_override(section: str, key: str, raw: str) -> None:
    try:
        build_config(None, [f"{section}.{key}={raw}"])
    except ConfigError as exc:
        assert "--set" in exc.message, exc.message


@FUZZ
@given(st.binary(max_size=200))
def test_worker_yaml_file_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    worker = tmp_path_factory.mktemp("w")
    (worker / "worker.yaml").write_bytes(data)
    try:
        load_worker_config(worker)
    except ConfigError as exc:
        assert "worker.yaml" in exc.message, exc.message


@pytest.mark.parametrize(
    "text, named",
    [
        ("limits:\n  runtime_s: .nan\n", "limits.runtime_s"),
        ("limits:\n  max_runtime_s: .inf\n", "limits.max_runtime_s"),
        ("limits:\n  runtime_s: " + "9" * 400 + "\n", "limits.runtime_s"),
        ("limits:\n  max_mem_mb: " + "9" * 30 + "\n", "limits.max_mem_mb"),
        ('registry:\n  location: "a\\0b"\n', "registry.location"),
        ("sandbox:\n  tmp_mb: " + "1" * 5000 + "\n", "line 2"),
        ("sandbox:\n  tmp_mb: 2001-02-30\n", "line 2"),
        ("sandbox:\n  tmp_mb: !!float x\n", "line 2"),
        ("sandbox: " + "[" * 5000 + "\n", "deeper than"),
        ("sandbox: &a [*a]\n", "own anchor"),
    ],
    ids=lambda value: value[:24] if isinstance(value, str) else None,
)
def test_worker_yaml_hostile_values(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        build_config(text)
    assert named in caught.value.message, caught.value.message


def test_override_hostile_value() -> None:
    with pytest.raises(ConfigError, match="limits.runtime_s"):
        build_config(None, ["limits.runtime_s=.nan"])
    with pytest.raises(ConfigError, match="--set"):
        parse_override("sandbox.tmp_mb=" + "[" * 5000)


# ---------------------------------------------------------------------- ol.yaml
@FUZZ
@given(ol_documents())
def test_ol_yaml_structured(case: tuple[dict[str, Any], str]) -> None:
    document, path = case
    try:
        parse_function_config(dump(document))
    except BadFunction as exc:
        assert exc.message.startswith("ol.yaml"), exc.message
        assert names(exc.message, path.split(".")[0]), exc.message


@FUZZ
@given(st.text(max_size=200))
def test_ol_yaml_raw_text(text: str) -> None:
    try:
        parse_function_config(text)
    except BadFunction as exc:
        assert exc.message.startswith("ol.yaml"), exc.message


@pytest.mark.parametrize(
    "text, named",
    [
        ("limits:\n  runtime_s: .nan\n", "limits.runtime_s"),
        ("limits:\n  runtime_s: .inf\n", "limits.runtime_s"),
        ("limits:\n  runtime_s: " + "9" * 400 + "\n", "limits.runtime_s"),
        ("environment:\n  A: " + "1" * 5000 + "\n", "line 2"),
        ("environment:\n  A: 2001-02-30\n", "line 2"),
        ("triggers: " + "{a: " * 3000 + "\n", "deeper than"),
        ("environment: &a {A: *a}\n", "own anchor"),
    ],
    ids=lambda value: value[:24] if isinstance(value, str) else None,
)
def test_ol_yaml_hostile_values(text: str, named: str) -> None:
    with pytest.raises(BadFunction) as caught:
        parse_function_config(text)
    assert named in caught.value.message, caught.value.message


@pytest.mark.parametrize(
    "data",
    [b"limits: " + b"[" * 5000, b"limits: &a [*a]\n", b"\xff\xfe", b"limits: {runtime_s: .nan}\n"],
    ids=["deep", "recursive", "not-utf8", "nan"],
)
def test_function_dir_with_hostile_ol_yaml(tmp_path: Path, data: bytes) -> None:
    """What an upload (admin POST /registry/<name>) validates: a BadFunction, so a 400."""
    from olactors.registry import validate_function_dir

    (tmp_path / "f.py").write_text("def f(event):\n    return event\n")
    (tmp_path / "ol.yaml").write_bytes(data)
    with pytest.raises(BadFunction, match="ol.yaml"):
        validate_function_dir(tmp_path)


def test_ol_yaml_huge_float_is_not_truncated_to_inf() -> None:
    """runtime_s is stored as a float: an int too big for one is refused, not an OverflowError."""
    config = parse_function_config("limits:\n  runtime_s: 12\n")
    assert config.runtime_s == 12.0 and math.isfinite(config.runtime_s)


# -------------------------------------------------------------------- requirements
requirement_lines = st.one_of(
    st.text(max_size=60),
    st.from_regex(
        r"[A-Za-z][A-Za-z0-9._-]{0,10}(\[[a-z,]{0,8}\])?([<>=!~]{1,3}[0-9.*a-z]{0,6})?",
        fullmatch=True,
    ),
    st.sampled_from(
        [
            "-r other.txt",
            "--hash=sha256:00",
            "https://x/y.whl",
            "./pkg",
            "a @ file:///x",
            "a; (",
            "a\\",
        ]
    ),
)


@FUZZ
@given(st.lists(requirement_lines, max_size=8))
def test_requirements_txt(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        parse_requirements_txt(text)
    except BadFunction as exc:
        assert "requirements.txt line " in exc.message, exc.message


@FUZZ
@given(st.lists(requirement_lines, max_size=4))
def test_ol_install(items: list[str]) -> None:
    text = "".join(f"# ol-install: {item}\n" for item in items) + "def f(e):\n    return e\n"
    try:
        parse_ol_install(text)
    except BadFunction as exc:
        assert "f.py line " in exc.message, exc.message


@FUZZ
@given(st.lists(junk, max_size=4))
def test_ol_yaml_packages(items: list[Any]) -> None:
    try:
        parse_function_config(dump({"packages": items}))
    except BadFunction as exc:
        assert "packages" in exc.message, exc.message


@FUZZ
@given(st.sampled_from(["requirements.txt", "ol.yaml", "f.py"]), st.binary(max_size=120))
def test_declaration_files_bytes(
    tmp_path_factory: pytest.TempPathFactory, name: str, data: bytes
) -> None:
    function_dir = tmp_path_factory.mktemp("fn")
    (function_dir / name).write_bytes(data)
    try:
        read_declaration(function_dir)
    except BadFunction as exc:
        assert name in exc.message, exc.message


def test_requirement_nesting_is_bounded() -> None:
    with pytest.raises(BadFunction, match="requirements.txt line 1: .*nest deeper"):
        parse_requirements_txt("a; " + "(" * 3000 + 'python_version > "3"' + ")" * 3000)


# ------------------------------------------------- hostile inputs, memory and time capped
HOSTILE = textwrap.dedent(
    """
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from olactors._config import build_config
    from olactors._errors import BadFunction, ConfigError
    from olactors._function_config import parse_function_config
    from olactors.packages import parse_ol_install, parse_requirements_txt

    laughs = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\\n" for i in range(1, 10)
    )
    cases = [
        ("worker bomb", ConfigError, lambda: build_config("x:\\n" + laughs)),
        ("worker bomb value", ConfigError,
         lambda: build_config(laughs.replace("a9: &a9", "sandbox: {tmp_mb: *a8}\\na9: &a9"))),
        ("ol.yaml bomb", BadFunction, lambda: parse_function_config(laughs)),
        ("ol.yaml bomb value", BadFunction,
         lambda: parse_function_config(laughs + "limits: {mem_mb: *a9}\\n")),
        ("comment line", BadFunction, lambda: parse_requirements_txt("a" + " " * 1_000_000 + "x")),
        ("archive name", BadFunction, lambda: parse_requirements_txt("a" + "-1" * 500000)),
        ("version list", BadFunction, lambda: parse_ol_install("# ol-install: a" + ",>1" * 300000)),
    ]
    for label, error, call in cases:
        started = time.monotonic()
        try:
            call()
        except Exception as exc:
            if not isinstance(exc, error):
                raise
        elapsed = time.monotonic() - started
        assert elapsed < 10, (label, elapsed)
        print(label, f"{elapsed:.2f}s", flush=True)
    """
)


def test_hostile_documents_fail_fast_in_bounded_memory() -> None:
    """Alias bombs and pathological lines: refused (or parsed) in seconds under 1 GiB."""
    result = subprocess.run(
        [sys.executable, "-c", HOSTILE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("\n") == 7, result.stdout
