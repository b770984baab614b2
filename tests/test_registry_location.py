"""Where the local registry is: one answer for admin uploads and calls.

A relative ``registry.location`` is relative to the worker dir, whatever the
current directory of the process; an upload through the admin socket must
land where the code puller later looks (issue 11, defect 3).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from olactors.registry import registry_path

from .test_http_api import assert_json_error, serving, tar_gz


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("", "/w/registry"),
        ("myreg", "/w/myreg"),
        ("sub/../reg", "/w/sub/../reg"),
        ("/srv/functions", "/srv/functions"),
        ("~/functions", os.path.expanduser("~/functions")),
        ("http://registry.example:8080", None),
        ("https://registry.example/base/", None),
    ],
)
def test_registry_path(location: str, expected: str | None) -> None:
    found = registry_path(location, Path("/w"))
    assert found == (None if expected is None else Path(expected))


@pytest.mark.root
async def test_relative_location_upload_then_call(
    worker_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    source = {"f.py": "def f(event):\n    return {'uploaded': event}\n"}
    async with serving(worker_dir, "registry.location=myreg", "registry.cache_s=0") as served:
        async with served.admin_client() as admin, served.client() as client:
            response = await admin.post("/registry/up", content=tar_gz(source))
            assert response.status_code == 201, response.text
            response = await client.post("/run/up", json=[1, 2])
            assert response.status_code == 200, response.text
            assert response.json() == {"uploaded": [1, 2]}

            assert (worker_dir / "myreg" / "up.tar.gz").is_file()
            assert not (elsewhere / "myreg").exists()
            listed = await admin.get("/registry")
            assert [entry["name"] for entry in listed.json()] == ["up"]

            assert (await admin.delete("/registry/up")).status_code == 200
            assert_json_error(await client.post("/run/up", json=1), 404, "function_not_found")
