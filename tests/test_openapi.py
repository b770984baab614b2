"""The OpenAPI contract: both documents are valid OpenAPI 3.1, and they describe
exactly what the apps serve.

The apps route from the raw path (no URL map to introspect), so "what they
serve" is checked two ways: the admin app's dispatcher routes by
:data:`olactors.http.admin.ENDPOINTS`, which must equal admin.json's
operations; and a real worker is probed on both surfaces: every described
(path, method) reaches its endpoint (never 404 not_found nor 405), every other
method on a described path is 405 with Allow naming exactly the described
methods, and paths not described (including the admin ones on the public
port) are 404 not_found. Every answer carries X-Request-Id and every error body
validates against the documents' Error schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import trio
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from olactors.http.admin import ENDPOINTS
from olactors.http.openapi import HTTP_METHODS, SURFACES, load_spec, operations, spec_bytes

from .test_http_api import ECHO, is_request_id, serving, tar_gz, write_fn

SAMPLES = {"name": "echo", "path": "a/b", "function": "echo"}
#: Paths no surface serves, plus the admin paths (which the public port must not serve).
UNDESCRIBED = (
    "/",
    "/run",
    "/runs/echo",
    "/status/",
    "/statusx",
    "/STATUS",
    "/openapi",
    "/openapi/",
    "/openapi/admin.json",
    "/openapi.json/x",
    "/registryx",
    "/stats/",
    "/%73tatus",
    "//status",
)


def resolve(spec: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """``obj``, or what its local ``$ref`` points at."""
    while "$ref" in obj:
        node: Any = spec
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def error_schema(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["components"]["schemas"]["Error"]


@pytest.mark.parametrize("surface", SURFACES)
def test_spec_is_valid_openapi_31(surface: str) -> None:
    spec = load_spec(surface)  # type: ignore[arg-type]
    assert spec["openapi"].startswith("3.1.")
    validate(spec, cls=OpenAPIV31SpecValidator)
    jsonschema.Draft202012Validator.check_schema(error_schema(spec))
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method.upper() not in HTTP_METHODS:
                continue
            for status, reference in operation["responses"].items():
                response = resolve(spec, reference)
                where = f"{surface} {method.upper()} {path} {status}"
                assert "X-Request-Id" in response.get("headers", {}), where
                # /status and /healthz: a Status / Health body, by design
                health = path in ("/status", "/healthz") and status == "503"
                if status[0] in "45" and method != "head" and not health:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, where
                if status == "405":
                    assert "Allow" in response["headers"], where


#: Error codes only the command line reports (never an HTTP answer).
CLI_ONLY_CODES = {"already_running", "not_running", "bad_config"}


def test_every_error_code_is_documented() -> None:
    """Each OlactorsError's code is listed in the Error schema of both documents."""
    import importlib
    import pkgutil

    import olactors
    from olactors._errors import OlactorsError

    for module in pkgutil.walk_packages(olactors.__path__, "olactors."):
        if not any(part in module.name for part in ("runtime", "simulation", "bench", "examples")):
            importlib.import_module(module.name)

    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        return found.union(*(subclasses(sub) for sub in found))

    codes = {cls.code for cls in subclasses(OlactorsError)} - CLI_ONLY_CODES
    assert "queue_full" in codes and "registry_read_only" in codes
    for surface in SURFACES:
        description = error_schema(load_spec(surface))["properties"]["error"]["description"]
        documented = set(re.findall(r"[a-z][a-z0-9_]*", description))
        missing = sorted(codes - documented)
        assert not missing, f"{surface}.json does not document {missing}"


def test_admin_dispatch_table_is_the_spec() -> None:
    served = {(e.template, method) for e in ENDPOINTS for method in e.methods}
    assert served == operations(load_spec("admin"))


def test_specs_ship_as_package_data() -> None:
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"olactors.http" = ["openapi/*.json"]' in pyproject
    for surface in SURFACES:
        assert json.loads(spec_bytes(surface))["info"]["title"]


def concrete(template: str) -> str:
    for key, value in SAMPLES.items():
        template = template.replace("{" + key + "}", value)
    return template


async def request(
    client: httpx.AsyncClient, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    with trio.fail_after(60):
        return await client.request(method, path, **kwargs)


def check_answer(response: httpx.Response, spec: dict[str, Any], where: str) -> None:
    assert is_request_id(response.headers.get("x-request-id")), where
    if response.status_code >= 400 and response.request.method != "HEAD":
        body = response.json()
        jsonschema.validate(body, error_schema(spec))
        assert body["request_id"] == response.headers["x-request-id"], where


@pytest.mark.root
async def test_served_routes_are_exactly_the_described_ones(worker_dir: Path) -> None:
    write_fn(worker_dir / "registry", "echo", ECHO)
    specs = {surface: load_spec(surface) for surface in SURFACES}
    async with serving(worker_dir) as served:
        clients = {"public": served.client(), "admin": served.admin_client()}
        try:
            for surface, client in clients.items():
                spec = specs[surface]
                described = operations(spec)
                for template, item in spec["paths"].items():
                    path = concrete(template)
                    methods = {m for t, m in described if t == template}
                    for method in sorted(methods):
                        kwargs: dict[str, Any] = {}
                        if template == "/registry/{name}" and method == "POST":
                            kwargs["content"] = tar_gz({"f.py": "def f(e):\n    return e\n"})
                            path = "/registry/probe"
                        if template == "/registry/{name}" and method == "DELETE":
                            path = "/registry/probe"  # POST (sorted first) installed it
                        r = await request(client, method, path, **kwargs)
                        where = f"{surface} {method} {path}: {r.status_code} {r.text[:200]}"
                        check_answer(r, spec, where)
                        assert r.status_code not in (404, 405) or (
                            r.json()["error"] not in ("not_found", "method_not_allowed")
                        ), where
                        assert str(r.status_code) in item[method.lower()]["responses"], where
                    if template.startswith("/run/"):
                        continue  # any method goes to the function
                    for method in sorted(set(HTTP_METHODS) - methods - {"HEAD"}):
                        r = await request(client, method, path)
                        where = f"{surface} {method} {path}: {r.status_code} {r.text[:200]}"
                        check_answer(r, spec, where)
                        assert r.status_code == 405, where
                        allowed = {m.strip() for m in r.headers["allow"].split(",")}
                        assert allowed == methods, where
                others = [p for p in specs["admin"]["paths"] if surface == "public"]
                for path in [*UNDESCRIBED, *map(concrete, others)]:
                    if path in spec["paths"]:
                        continue
                    for method in ("GET", "POST"):
                        r = await request(client, method, path)
                        where = f"{surface} {method} {path}: {r.status_code} {r.text[:200]}"
                        check_answer(r, spec, where)
                        assert r.status_code == 404 and r.json()["error"] == "not_found", where
            r = await request(clients["admin"], "GET", "/openapi.json")
            assert r.json() == specs["admin"]
            r = await request(clients["admin"], "GET", "/openapi/public.json")
            assert r.json() == specs["public"]
            assert r.headers["content-type"].startswith("application/json")
        finally:
            for client in clients.values():
                await client.aclose()
