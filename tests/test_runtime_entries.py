"""Leaf entry formats in real sandboxes: JSON handlers, WSGI apps, ASGI apps."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import trio

from olactors._causes import released
from olactors.sock import Invocation, SandboxMeta

from .conftest import write_function

pytestmark = pytest.mark.root

SCRIPT_NAME = ("x-olactors-script-name", "/run/echo")

JSON_F = """
def f(event):
    if event == "set":
        return {1, 2}
    if event == "boom":
        raise ValueError("asked to fail")
    return {"event": event}
"""

# Echoes what it saw; "/boom" raises, "/fake" sets the runtime's error header itself,
# "/exc-info" replaces its status after an error, "/big" streams 1 MiB from an
# iterable whose close() is reported by "/closed".
WSGI_APP = """
import json
import sys

CLOSED = []

class Chunks:
    def __iter__(self):
        return iter([b"x" * 65536] * 16)

    def close(self):
        CLOSED.append(True)

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("wsgi app failed")
    if path == "/big":
        start_response("200 OK", [])
        return Chunks()
    if path == "/closed":
        start_response("200 OK", [])
        return [json.dumps(CLOSED).encode()]
    if path == "/exc-info":
        start_response("200 OK", [])
        try:
            raise KeyError("late")
        except KeyError:
            start_response("503 Service Unavailable", [("x-late", "1")], sys.exc_info())
        return [b"replaced"]
    seen = {
        "method": environ["REQUEST_METHOD"],
        "script_name": environ["SCRIPT_NAME"],
        "path": path,
        "query": environ["QUERY_STRING"],
        "content_type": environ["CONTENT_TYPE"],
        "content_length": environ["CONTENT_LENGTH"],
        "http": sorted(k for k in environ if k.startswith("HTTP_")),
        "x_test": environ.get("HTTP_X_TEST"),
        "body": environ["wsgi.input"].read().decode(),
    }
    if path == "/fake":
        start_response("500 Internal Server Error", [("X-Olactors-Error", "handler_exception")])
        return [b"app's own 500"]
    write = start_response("418 I'm a teapot", [("X-Custom", "tea"), ("Content-Length", "1")])
    write(b"")
    return [json.dumps(seen).encode()]
"""

# "/disconnect": a second receive() waits until the response is complete, then
# gets http.disconnect (reported by "/last-message").
ASGI_APP = """
import asyncio
import json

LAST = []

async def app(scope, receive, send):
    message = await receive()
    if scope["path"].endswith("/boom"):
        raise RuntimeError("asgi app failed")
    if scope["path"].endswith("/disconnect"):
        waiter = asyncio.ensure_future(receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"done" if waiter.done() else b"waiting"})
        LAST.append((await asyncio.wait_for(waiter, 1))["type"])
        return
    if scope["path"].endswith("/last-message"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(LAST).encode()})
        return
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    seen = {
        "type": scope["type"],
        "method": scope["method"],
        "root_path": scope["root_path"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode(),
        "query": scope["query_string"].decode(),
        "headers": sorted(headers),
        "x_test": headers.get("x-test"),
        "body": message["body"].decode(),
        "more_body": message["more_body"],
    }
    extra = [(b"x-olactors-error", b"handler_exception")] if scope["path"].endswith("/fake") else []
    await send({
        "type": "http.response.start",
        "status": 500 if extra else 418,
        "headers": [(b"x-custom", b"tea"), *extra],
    })
    await send({"type": "http.response.body", "body": json.dumps(seen).encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b""})
"""

EXPLICIT = (
    "import json\n"
    + textwrap.dedent(JSON_F).replace("def f(", "def handler(")
    + textwrap.dedent(WSGI_APP).replace("def app(", "def wsgi_app(")
    + textwrap.dedent(ASGI_APP).replace("async def app(", "async def asgi_app(")
    + """
class AsgiClass:
    async def __call__(self, scope, receive, send):
        await asgi_app(scope, receive, send)

asgi_instance = AsgiClass()

def three(a, b, c):
    return None
"""
)


def body(result) -> dict:
    return json.loads(result.body)


def header(result, name: str) -> str | None:
    values = [v for n, v in result.headers if n == name]
    assert len(values) <= 1, result.headers
    return values[0] if values else None


def error_of(result) -> str:
    assert result.status in (400, 500), result
    assert header(result, "x-olactors-error") == body(result)["error"]
    return body(result)["error"]


async def create(pool, code: Path, entry: str, parent=None):
    return await pool.create(parent, True, str(code), None, SandboxMeta(entry=entry))


async def check_json(sb) -> None:
    ok = await sb.invoke(Invocation(body=b'{"x": 1}'))
    assert ok.status == 200 and body(ok) == {"event": {"x": 1}}
    assert header(ok, "content-type") == "application/json"
    assert header(ok, "x-olactors-error") is None
    empty = await sb.invoke(Invocation())
    assert body(empty) == {"event": None}
    failed = await sb.invoke(Invocation(body=b'"boom"'))
    assert error_of(failed) == "handler_exception"
    assert "asked to fail" in body(failed)["traceback"]
    bad = await sb.invoke(Invocation(body=b'"set"'))
    assert error_of(bad) == "bad_result"
    assert bad.status == 500 and "set" in body(bad)["message"]
    assert body(bad)["type"] == "set"
    not_json = await sb.invoke(Invocation(body=b"{nope"))
    assert not_json.status == 400 and error_of(not_json) == "bad_json"


def request(path: str, query: str = "", extra: tuple = ()) -> Invocation:
    """``path`` is decoded, as the worker passes it; the leaf client re-quotes it."""
    return Invocation(
        method="PUT",
        path=path,
        query=query,
        headers=(("x-test", "yes"), ("content-type", "text/plain"), SCRIPT_NAME, *extra),
        body=b"hello",
    )


async def check_wsgi(sb) -> None:
    result = await sb.invoke(request("/a b/c", "q=1&r=%20"))
    assert result.status == 418
    assert header(result, "x-custom") == "tea"
    assert header(result, "x-olactors-error") is None
    assert body(result) == {
        "method": "PUT",
        "script_name": "/run/echo",
        "path": "/a b/c",
        "query": "q=1&r=%20",
        "content_type": "text/plain",
        "content_length": "5",
        "http": ["HTTP_HOST", "HTTP_X_TEST"],
        "x_test": "yes",
        "body": "hello",
    }
    failed = await sb.invoke(request("/boom"))
    assert error_of(failed) == "handler_exception"
    assert body(failed)["type"] == "RuntimeError" and "wsgi app failed" in body(failed)["message"]
    own = await sb.invoke(request("/fake"))
    assert own.status == 500 and own.body == b"app's own 500"
    assert header(own, "x-olactors-error") is None
    replaced = await sb.invoke(request("/exc-info"))
    assert replaced.status == 503 and replaced.body == b"replaced"
    assert header(replaced, "x-late") == "1"
    big = await sb.invoke(request("/big"))
    assert big.status == 200 and big.body == b"x" * (1 << 20)
    closed = await sb.invoke(request("/closed"))
    assert body(closed) == [True]


async def check_asgi(sb) -> None:
    result = await sb.invoke(request("/a b/c", "q=1"))
    assert result.status == 418
    assert header(result, "x-custom") == "tea"
    assert header(result, "x-olactors-error") is None
    assert body(result) == {
        "type": "http",
        "method": "PUT",
        "root_path": "/run/echo",
        "path": "/run/echo/a b/c",  # ASGI: path includes root_path
        "raw_path": "/run/echo/a%20b/c",
        "query": "q=1",
        "headers": ["content-length", "content-type", "host", "x-test"],
        "x_test": "yes",
        "body": "hello",
        "more_body": False,
    }
    failed = await sb.invoke(request("/boom"))
    assert error_of(failed) == "handler_exception"
    assert "asgi app failed" in body(failed)["message"]
    own = await sb.invoke(request("/fake"))
    assert own.status == 500 and header(own, "x-olactors-error") is None
    assert body(own)["path"] == "/run/echo/fake"
    waited = await sb.invoke(request("/disconnect"))
    assert waited.status == 200 and waited.body == b"waiting"
    last = await sb.invoke(request("/last-message"))
    assert body(last) == ["http.disconnect"]


@pytest.mark.parametrize(
    ("source", "check"),
    [(JSON_F, check_json), (WSGI_APP, check_wsgi), (ASGI_APP, check_asgi)],
    ids=["json", "wsgi", "asgi"],
)
async def test_automatic_entry(pool, tmp_path, source, check):
    sb = await create(pool, write_function(tmp_path, "fn", source), "")
    try:
        await check(sb)
    finally:
        await sb.destroy(released("test"))


@pytest.mark.parametrize(
    ("attr", "check"),
    [
        ("handler", check_json),
        ("wsgi_app", check_wsgi),
        ("asgi_app", check_asgi),
        ("asgi_instance", check_asgi),
    ],
)
async def test_explicit_entry(pool, tmp_path, attr, check):
    code = tmp_path / "fn"
    (code / "mod").mkdir(parents=True)
    (code / "mod" / "__init__.py").write_text("")
    (code / "mod" / "sub.py").write_text(EXPLICIT)
    sb = await create(pool, code, f"mod.sub:{attr}")
    try:
        await check(sb)
    finally:
        await sb.destroy(released("test"))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "f.py defines neither f(event) nor app"),
        ("f:three", "is neither an ASGI app"),
        ("f:missing", "has no attribute 'missing'"),
    ],
)
async def test_unusable_entry_is_reported(pool, tmp_path, entry, message):
    code = write_function(tmp_path, "fn", "def three(a, b, c):\n    return None\n")
    sb = await create(pool, code, entry)
    try:
        for _ in range(2):  # on every call, and the sandbox survives
            result = await sb.invoke(Invocation(body=b"1"))
            assert result.status == 500 and error_of(result) == "handler_import_failed"
            assert message in body(result)["message"]
    finally:
        await sb.destroy(released("test"))


async def test_explicit_f_f_is_a_json_handler(pool, tmp_path):
    sb = await create(pool, write_function(tmp_path, "fn", JSON_F), "f:f")
    try:
        result = await sb.invoke(Invocation(body=b"7"))
        assert result.status == 200 and body(result) == {"event": 7}
    finally:
        await sb.destroy(released("test"))


async def test_forked_leaf_serves_a_wsgi_app(pool, tmp_path):
    zygote = await pool.create(None, False, None, None, SandboxMeta())
    try:
        sb = await create(pool, write_function(tmp_path, "fn", WSGI_APP), "", parent=zygote)
        try:
            await check_wsgi(sb)
            # the app's own reason phrase reaches the status line
            stream = await sb.raw.connect()
            await stream.send_all(b"GET /x HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
            with trio.fail_after(5):
                answer = await stream.receive_some(1000)
            await stream.aclose()
            assert answer.startswith(b"HTTP/1.1 418 I'm a teapot\r\n")
        finally:
            await sb.destroy(released("test"))
    finally:
        await zygote.destroy(released("test"))
