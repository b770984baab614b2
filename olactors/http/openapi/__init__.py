"""The OpenAPI 3.1 descriptions of the worker's two HTTP surfaces.

``public.json`` describes the public app (TCP: ``/run``, ``/status``) and
``admin.json`` the admin app (UNIX socket). Both are package data, kept by
hand beside the code they describe; ``tests/test_openapi.py`` checks they are
valid OpenAPI 3.1 and that they list exactly the routes and methods the apps
serve. The admin socket serves them: ``GET /openapi.json`` (admin) and
``GET /openapi/public.json`` (public).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Literal

Surface = Literal["public", "admin"]
SURFACES: tuple[Surface, ...] = ("public", "admin")
#: The methods an OpenAPI path item may describe, upper-cased.
HTTP_METHODS = ("GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE")


def spec_bytes(surface: Surface) -> bytes:
    """The JSON document of ``surface``, as shipped."""
    return resources.files(__name__).joinpath(f"{surface}.json").read_bytes()


def load_spec(surface: Surface) -> dict[str, Any]:
    """The parsed document of ``surface``."""
    spec: dict[str, Any] = json.loads(spec_bytes(surface))
    return spec


def operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (path template, METHOD) the document describes."""
    return {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method.upper() in HTTP_METHODS
    }
