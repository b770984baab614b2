"""Declaring packages (requirements.txt, ol.yaml, f.py) and the lock file (pure, no pip)."""

from __future__ import annotations

import os
import textwrap

import pytest

from olactors._errors import BadFunction
from olactors.packages import (
    LOCK_FILE,
    Declaration,
    Lock,
    Pin,
    check_lock,
    format_lock,
    parse_lock,
    parse_ol_install,
    parse_requirements_txt,
    read_declaration,
    read_function_packages,
    read_lock,
    write_lock,
)
from olactors.packages._requirement import split_requirement_list

HASH_A = "a" * 64
HASH_B = "0123456789abcdef" * 4


def _fn(tmp_path, **files: str | bytes):
    """A function dir holding ``files`` (``requirements_txt`` names requirements.txt)."""
    fn = tmp_path / "fn"
    fn.mkdir(exist_ok=True)
    for name, content in files.items():
        path = fn / {"requirements_txt": "requirements.txt", "f_py": "f.py"}.get(name, name)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
    return fn


def _reject(call, message: str) -> BadFunction:
    with pytest.raises(BadFunction) as info:
        call()
    assert info.value.message.startswith(message), info.value.message
    assert info.value.code == "bad_function" and info.value.status == 500
    return info.value


# ------------------------------------------------------------ requirements.txt
def test_requirements_txt_syntax():
    text = textwrap.dedent(
        """\
        # a comment line

        alpha>=1,<2   # trailing comment
        Beta_Pkg[Fast,extra_Two] >= 1.0 ; python_version >= "3"
        delta \\
            ==1.0
        gamma~=1.0; sys_platform == "win32"
        alpha!=1.5
        """
    )
    declaration = parse_requirements_txt(text)
    assert declaration.source == "requirements.txt"
    assert declaration.texts() == (
        "alpha<2,>=1",
        'beta-pkg[extra-two,fast]>=1.0; python_version >= "3"',
        "delta==1.0",
        'gamma~=1.0; sys_platform == "win32"',
        "alpha!=1.5",
    )
    origins = [item.origin for item in declaration.requirements]
    assert origins == [f"requirements.txt line {n}" for n in (3, 4, 5, 7, 8)]
    assert [item.name for item in declaration.requirements][:2] == ["alpha", "beta-pkg"]


def test_requirements_txt_empty_or_comments_only():
    assert parse_requirements_txt("").requirements == ()
    assert parse_requirements_txt("# nothing\n\n   \n").requirements == ()


def test_continuation_at_end_of_file():
    assert parse_requirements_txt("alpha\\\n").texts() == ("alpha",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("-r other.txt", "requirements.txt line 2: pip option '-r' is not supported"),
        ("-e .", "requirements.txt line 2: pip option '-e' is not supported"),
        (
            "--index-url https://example.org/simple",
            "requirements.txt line 2: pip option '--index-url' is not supported",
        ),
        ("--no-binary=:all:", "requirements.txt line 2: pip option '--no-binary' is not"),
        (
            "alpha==1.0 --hash=sha256:abc",
            "requirements.txt line 2: pip option '--hash' is not supported",
        ),
        (
            "https://example.org/alpha-1.0-py3-none-any.whl",
            "requirements.txt line 2: 'https://example.org/alpha-1.0-py3-none-any.whl' is a "
            "URL or a path",
        ),
        ("./vendored/alpha", "requirements.txt line 2: './vendored/alpha' is a URL or a path"),
        ("/srv/alpha", "requirements.txt line 2: '/srv/alpha' is a URL or a path"),
        ("alpha-1.0.tar.gz", "requirements.txt line 2: 'alpha-1.0.tar.gz' is a URL or a path"),
        (
            "git+https://example.org/alpha.git",
            "requirements.txt line 2: 'git+https://example.org/alpha.git' is a URL or a path",
        ),
        ("hg+ssh:example.org/alpha", "requirements.txt line 2: 'hg+ssh:example.org/alpha' is a"),
        (
            "alpha @ https://example.org/alpha.whl",
            "requirements.txt line 2: 'alpha @ https://example.org/alpha.whl' is a URL",
        ),
        (
            "alpha @ file:alpha.whl",
            "requirements.txt line 2: 'alpha @ file:alpha.whl' is a direct reference",
        ),
        (
            "alpha>>1",
            "requirements.txt line 2: 'alpha>>1' is not a valid requirement: Expected "
            "semicolon (after name with no version specifier) or end (at column 6)",
        ),
        ("alpha[fast", "requirements.txt line 2: 'alpha[fast' is not a valid requirement"),
        ("alpha; os_nam == 'x'", "requirements.txt line 2: \"alpha; os_nam == 'x'\" is not a"),
        ("${ALPHA}", "requirements.txt line 2: '${ALPHA}' is not a valid requirement"),
    ],
)
def test_requirements_txt_rejections_name_the_line(line, message):
    _reject(lambda: parse_requirements_txt(f"# deps\n{line}\nbeta\n"), message)


def test_continued_line_error_names_its_first_line():
    _reject(
        lambda: parse_requirements_txt("alpha\nbeta \\\n  >>2\n"),
        "requirements.txt line 2: 'beta   >>2' is not a valid requirement",
    )


def test_requirements_txt_must_be_utf8(tmp_path):
    fn = _fn(tmp_path, requirements_txt=b"alpha\n\xff\xfe\n")
    _reject(lambda: read_declaration(fn), "requirements.txt is not UTF-8 text (byte 6)")


# ------------------------------------------------------------------- sources
def test_no_declaration_means_no_requirements(tmp_path):
    fn = _fn(tmp_path, f_py="def f(event):\n    return event\n")
    assert read_declaration(fn) == Declaration()
    packages = read_function_packages(fn)
    assert packages.declaration.requirements == () and packages.lock is None
    assert read_declaration(tmp_path / "missing") == Declaration()


def test_requirements_txt_source(tmp_path):
    fn = _fn(tmp_path, requirements_txt="alpha<2\n", f_py="def f(e):\n    return e\n")
    declaration = read_declaration(fn)
    assert declaration.source == "requirements.txt"
    assert declaration.texts() == ("alpha<2",)


def test_ol_yaml_source(tmp_path):
    fn = _fn(tmp_path, **{"ol.yaml": "packages:\n  - Alpha >=1\n  - 'beta[fast]'\n"})
    declaration = read_declaration(fn)
    assert declaration.source == "ol.yaml"
    assert declaration.texts() == ("alpha>=1", "beta[fast]")
    assert [item.origin for item in declaration.requirements] == [
        "ol.yaml packages[0]",
        "ol.yaml packages[1]",
    ]


def test_ol_yaml_errors_name_the_item(tmp_path):
    fn = _fn(tmp_path, **{"ol.yaml": "packages:\n  - alpha\n  - -r x.txt\n"})
    _reject(lambda: read_declaration(fn), "ol.yaml: packages[1]: pip option '-r' is not supported")


def test_f_py_source(tmp_path):
    source = """\
        #!/usr/bin/env python3
        # -*- coding: utf-8 -*-
        # ol-install: alpha>=1,<2, Beta[fast,x] , delta
        #ol-install:epsilon; sys_platform != "win32" and os_name != "a,b"

        '''The docstring is code: what follows is not read.'''
        # ol-install: gamma
        def f(event):
            return event
        """
    fn = _fn(tmp_path, f_py=source)
    declaration = read_declaration(fn)
    assert declaration.source == "f.py"
    assert declaration.texts() == (
        "alpha<2,>=1",
        "beta[fast,x]",
        "delta",
        'epsilon; sys_platform != "win32" and os_name != "a,b"',
    )
    origins = [item.origin for item in declaration.requirements]
    assert origins == ["f.py line 3"] * 3 + ["f.py line 4"]


def test_f_py_header_ends_at_the_first_code_line():
    assert parse_ol_install("import os\n# ol-install: alpha\n").requirements == ()
    assert parse_ol_install("").requirements == ()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("# ol-install:", "f.py line 2: '# ol-install:' lists no packages"),
        ("# ol-install:   ", "f.py line 2: '# ol-install:' lists no packages"),
        ("# ol-install: alpha,,beta", "f.py line 2: item 2 of '# ol-install:' is empty"),
        ("# ol-install: alpha,", "f.py line 2: item 2 of '# ol-install:' is empty"),
        ("# ol-install: alpha beta", "f.py line 2: 'alpha beta' is not a valid requirement"),
        ("# ol-install: -e .", "f.py line 2: pip option '-e' is not supported"),
        ("# ol-install: ./alpha", "f.py line 2: './alpha' is a URL or a path"),
    ],
)
def test_f_py_rejections(header, message):
    _reject(lambda: parse_ol_install(f"# handler\n{header}\ndef f(e):\n    return e\n"), message)


def test_f_py_need_not_be_utf8_after_its_header(tmp_path):
    fn = _fn(tmp_path, f_py=b"# ol-install: alpha\nNAME = '\xe9'\n")
    assert read_declaration(fn).texts() == ("alpha",)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"requirements_txt": "alpha\n", "ol.yaml": "packages: [beta]\n"},
            "packages are declared in both requirements.txt and ol.yaml (packages:); "
            "declare them in one place only",
        ),
        (
            {"requirements_txt": "alpha\n", "f_py": "# ol-install: beta\n"},
            "packages are declared in both requirements.txt and f.py (# ol-install:)",
        ),
        (
            {"ol.yaml": "packages: [alpha]\n", "f_py": "# ol-install: alpha\n"},
            "packages are declared in both ol.yaml (packages:) and f.py (# ol-install:)",
        ),
        (
            {
                "requirements_txt": "alpha\n",
                "ol.yaml": "packages: [beta]\n",
                "f_py": "# ol-install: alpha\n",
            },
            "packages are declared in both requirements.txt and ol.yaml (packages:) and f.py",
        ),
    ],
)
def test_more_than_one_source_is_refused(tmp_path, files, message):
    _reject(lambda: read_declaration(_fn(tmp_path, **files)), message)


def test_a_source_declaring_nothing_does_not_count(tmp_path):
    fn = _fn(
        tmp_path,
        requirements_txt="# none yet\n",
        **{"ol.yaml": "packages: []\n"},
        f_py="# ol-install: alpha\n",
    )
    assert read_declaration(fn).source == "f.py"


def test_other_ol_yaml_errors_surface(tmp_path):
    fn = _fn(tmp_path, **{"ol.yaml": "packges: [alpha]\n"})
    _reject(lambda: read_declaration(fn), "ol.yaml: unknown key 'packges'")


def test_a_directory_in_place_of_a_file(tmp_path):
    fn = _fn(tmp_path)
    (fn / "requirements.txt").mkdir()
    _reject(lambda: read_declaration(fn), "requirements.txt is a directory, not a file")


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("a, b>=2", ["a", "b>=2"]),
        ("a, b>=2,<3, c", ["a", "b>=2,<3", "c"]),
        ("b >= 2 , != 2.5", ["b >= 2,!= 2.5"]),
        ("c[x,y]>=1, d (>=1,<2)", ["c[x,y]>=1", "d (>=1,<2)"]),
        ("e; os_name == 'a,b', f", ["e; os_name == 'a,b'", "f"]),
        ("a,,b", ["a", "", "b"]),
    ],
)
def test_split_requirement_list(text, pieces):
    assert split_requirement_list(text) == pieces


# ------------------------------------------------------------------ lock file
def test_lock_round_trip_is_sorted_and_deterministic():
    pins = [Pin("gamma", "1.0"), Pin("alpha", "2.0", HASH_A), Pin("conflict-a", "1.0rc1", HASH_B)]
    text = format_lock(pins)
    lines = text.splitlines()
    assert lines[0].startswith("# olactors lock v1")
    assert lines[2:] == [
        f"alpha==2.0 --hash=sha256:{HASH_A}",
        f"conflict-a==1.0rc1 --hash=sha256:{HASH_B}",
        "gamma==1.0",
    ]
    assert text.endswith("\n") and format_lock(reversed(pins)) == text
    lock = parse_lock(text)
    assert lock == Lock(tuple(sorted(pins, key=lambda pin: pin.name)))
    assert lock.get("Conflict_A") == Pin("conflict-a", "1.0rc1", HASH_B)
    assert lock.get("zeta") is None
    assert format_lock(lock.pins) == text


def test_lock_with_no_pins():
    assert parse_lock(format_lock([])) == Lock()


def test_lock_accepts_comments_blank_lines_and_any_order():
    text = f"# olactors lock v1\n\n# note\ngamma==1.0\n  alpha==1.0 --hash=sha256:{HASH_A}  \n"
    assert [pin.name for pin in parse_lock(text).pins] == ["alpha", "gamma"]


def test_format_refuses_a_name_pinned_twice():
    with pytest.raises(ValueError, match="alpha is pinned twice"):
        format_lock([Pin("alpha", "1.0"), Pin("alpha", "2.0")])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "ol.lock line 1: not an olactors lock file"),
        ("alpha==1.0\n", "ol.lock line 1: not an olactors lock file"),
        ("# olactors lock v1\nalpha\n", "ol.lock line 2: expected 'name==version'"),
        ("# olactors lock v1\nalpha>=1.0\n", "ol.lock line 2: expected 'name==version'"),
        ("# olactors lock v1\nalpha===1.0\n", "ol.lock line 2: '=1.0' is not a valid version"),
        ("# olactors lock v1\nAlpha==1.0\n", "ol.lock line 2: project name 'Alpha' is not "),
        (
            "# olactors lock v1\nconflict_a==1.0\n",
            "ol.lock line 2: project name 'conflict_a' is not canonical (write 'conflict-a')",
        ),
        ("# olactors lock v1\n-alpha==1.0\n", "ol.lock line 2: '-alpha' is not a valid project"),
        ("# olactors lock v1\nalpha==one\n", "ol.lock line 2: 'one' is not a valid version"),
        (
            "# olactors lock v1\nalpha==1.0.0-rc1\n",
            "ol.lock line 2: version '1.0.0-rc1' is not normalised (write '1.0.0rc1')",
        ),
        (
            "# olactors lock v1\nalpha==1.0 --hash=sha256:abc\n",
            "ol.lock line 2: after the version only '--hash=sha256:<64 lowercase hex digits>'",
        ),
        (
            f"# olactors lock v1\nalpha==1.0 --hash=sha256:{HASH_A.upper()}\n",
            "ol.lock line 2: after the version only",
        ),
        (
            f"# olactors lock v1\nalpha==1.0 --hash=md5:{HASH_A[:32]}\n",
            "ol.lock line 2: after the version only",
        ),
        ("# olactors lock v1\nalpha==1.0 # note\n", "ol.lock line 2: after the version only"),
        (
            "# olactors lock v1\nalpha==1.0\n\nalpha==2.0\n",
            "ol.lock line 4: alpha is already pinned on line 2",
        ),
    ],
)
def test_lock_rejections_name_the_line(text, message):
    _reject(lambda: parse_lock(text), message)


def test_read_lock(tmp_path):
    fn = _fn(tmp_path)
    assert read_lock(fn) is None
    write_lock(fn, [Pin("alpha", "1.0")])
    assert read_lock(fn) == Lock((Pin("alpha", "1.0"),))
    (fn / LOCK_FILE).write_bytes(b"# olactors lock v1\n\xff\n")
    _reject(lambda: read_lock(fn), "ol.lock is not UTF-8 text")


def test_write_lock_replaces_atomically_or_not_at_all(tmp_path, monkeypatch):
    fn = _fn(tmp_path)
    path = write_lock(fn, [Pin("alpha", "1.0")])
    assert path == fn / LOCK_FILE
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_lock(fn, [Pin("alpha", "1.0"), Pin("alpha", "2.0")])

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_lock(fn, [Pin("alpha", "2.0")])
    assert path.read_bytes() == before
    assert sorted(p.name for p in fn.iterdir()) == [LOCK_FILE]


def _declared(text: str):
    return parse_requirements_txt(text).requirements


def test_check_lock_accepts_pins_in_range():
    lock = Lock((Pin("alpha", "1.0"), Pin("beta", "2.0rc1"), Pin("gamma", "1.0")))
    check_lock(lock, _declared("alpha<2\nBeta>=2.0rc1\nzeta; sys_platform == 'win32'\n"))
    check_lock(lock, ())


@pytest.mark.parametrize(
    ("requirements", "message"),
    [
        (
            "alpha>=2\n",
            "ol.lock pins alpha==1.0, which does not satisfy alpha>=2 (requirements.txt line 1)",
        ),
        (
            "gamma\nzeta; sys_platform != 'win32'\n",
            "ol.lock does not pin zeta, which requirements.txt line 2 requires "
            '(zeta; sys_platform != "win32")',
        ),
    ],
)
def test_check_lock_names_the_unsatisfied_package(requirements, message):
    lock = Lock((Pin("alpha", "1.0"), Pin("gamma", "1.0")))
    _reject(lambda: check_lock(lock, _declared(requirements)), message)


def test_function_with_lock_uses_it_and_checks_it(tmp_path):
    fn = _fn(tmp_path, f_py="# ol-install: alpha<2, gamma\ndef f(e):\n    return e\n")
    write_lock(fn, [Pin("alpha", "1.0", HASH_A), Pin("gamma", "1.0"), Pin("zeta", "3.0")])
    packages = read_function_packages(fn)
    assert packages.declaration.texts() == ("alpha<2", "gamma")
    assert packages.lock is not None and [p.name for p in packages.lock.pins] == [
        "alpha",
        "gamma",
        "zeta",
    ]
    (fn / "f.py").write_text("# ol-install: alpha>=2\n")
    _reject(
        lambda: read_function_packages(fn),
        "ol.lock pins alpha==1.0, which does not satisfy alpha>=2 (f.py line 1); "
        "run `olactors lock` again",
    )


def test_lock_without_declaration_is_used_as_is(tmp_path):
    fn = _fn(tmp_path)
    write_lock(fn, [Pin("alpha", "2.0")])
    packages = read_function_packages(fn)
    assert packages.declaration == Declaration()
    assert packages.lock == Lock((Pin("alpha", "2.0"),))
