"""schemathesis against a real worker (``olactors serve`` in a subprocess, real
sandboxes), on both surfaces: the public port over TCP and the admin API over
its UNIX socket (a requests adapter that connects to the socket).

Every operation of each document gets a bounded, derandomized run of
schemathesis-generated requests, positive (conforming) and negative
(violating the document). For every answer: it arrives within the timeout;
it carries X-Request-Id; its status, headers and body conform to the
document; an error body has the documented shape; and no 5xx comes from the
worker itself. The only 500 allowed is ``handler_exception`` from calling
``boom``, a function that raises.

Scope, so that the run is meaningful and deterministic: ``/run/{name}`` is
aimed at ``echo`` and ``boom`` most of the time (else a generated name, which
is 404 ``function_not_found``); the admin registry writes never touch those
two (a generated name that equals one is renamed), so uploads and deletes
cannot remove the functions the public run calls.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from olactors.http.openapi import SURFACES, load_spec

from .conftest import REPO, write_function
from .test_http_api import wait_for_file

pytestmark = pytest.mark.root

EXAMPLES = 20  # per operation and generation mode: CI-sized
CALL_TIMEOUT_S = 30
FUNCTIONS = {
    "echo": "def f(event):\n    return event\n",
    "boom": "def f(event):\n    raise ValueError('boom')\n",
}
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


# ------------------------------------------------------------ a UNIX socket for requests
class _UnixConnection(HTTPConnection):
    def __init__(self, socket_path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__("admin", *args, **kwargs)
        self._socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CALL_TIMEOUT_S)
        sock.connect(self._socket_path)
        return sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, socket_path: str) -> None:
        super().__init__("admin", timeout=CALL_TIMEOUT_S)
        self._socket_path = socket_path

    def _new_conn(self) -> _UnixConnection:
        return _UnixConnection(self._socket_path, timeout=CALL_TIMEOUT_S)


class UnixAdapter(HTTPAdapter):
    """Sends every request of a session to one UNIX socket."""

    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self._pool = _UnixPool(socket_path)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> _UnixPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


# --------------------------------------------------------------------------- the worker
@dataclass
class Worker:
    public_url: str
    admin_socket: str
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    base = tmp_path_factory.mktemp("fuzz")
    path = base / "w"
    for name, source in FUNCTIONS.items():
        write_function(path / "registry", name, source)
    log = base / "serve.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "olactors.cli", "serve", "--path", str(path)]
            + ["--set", "server.port=0", "--set", "sandbox.cgroup_pool_size=2"]
            + ["--set", "limits.runtime_s=10", "--set", "functions.pause_after_s=5"],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_file(path / "run" / "endpoints.json", proc)
        endpoints = json.loads((path / "run" / "endpoints.json").read_text())
        yield Worker(endpoints["public"], str(path / "admin.sock"), proc, log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise
    text = log.read_text()
    assert code == 0, text[-5000:]
    # An unexpected exception in the worker is logged with its traceback (answered 500 internal).
    assert "Traceback" not in text, text[-5000:]


@pytest.fixture(scope="module")
def sessions(worker: Worker) -> Iterator[dict[str, tuple[requests.Session, str]]]:
    public = requests.Session()
    admin = requests.Session()
    admin.mount("http://admin/", UnixAdapter(worker.admin_socket))
    yield {"public": (public, worker.public_url), "admin": (admin, "http://admin")}
    public.close()
    admin.close()


# ----------------------------------------------------------------------- the fuzzing
SPECS = {surface: load_spec(surface) for surface in SURFACES}
SCHEMAS = {surface: schemathesis.openapi.from_dict(spec) for surface, spec in SPECS.items()}
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE


def _has_input(surface: str, path: str, method: str) -> bool:
    """Whether the operation takes parameters or a body (else no request can violate it)."""
    return "{" in path or "requestBody" in SPECS[surface]["paths"][path][method.lower()]


OPERATIONS = [
    pytest.param(surface, operation.label, mode, id=f"{surface}-{operation.label}-{mode.value}")
    for surface, schema in SCHEMAS.items()
    for operation in (result.ok() for result in schema.get_all_operations())
    for mode in (POSITIVE, NEGATIVE)
    if mode is POSITIVE or _has_input(surface, operation.path, operation.method)
]
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def aim(case: schemathesis.Case, surface: str, target: str | None) -> None:
    """Point /run at a test function when asked; keep registry writes off them."""
    params = case.path_parameters
    if params is None or not isinstance(params.get("name"), str):
        return
    if surface == "public" and target is not None:
        params["name"] = target
    elif surface == "admin" and params["name"] in FUNCTIONS:
        params["name"] = params["name"] + "-fuzz"


def check_answer(case: schemathesis.Case, response: schemathesis.Response, surface: str) -> None:
    """The contract beyond what the document's schemas say (see the module doc)."""
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    request_id = (response.headers.get("x-request-id") or [""])[0]
    assert len(request_id) == 32, where
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return
    body = response.json()
    jsonschema.validate(body, SPECS[surface]["components"]["schemas"]["Error"])
    assert body["request_id"] == request_id, where
    if response.status_code >= 500:
        raised = case.path_parameters.get("name") == "boom" if case.path_parameters else False
        assert raised and body["error"] == "handler_exception", where


@pytest.mark.parametrize("surface, label, mode", OPERATIONS)
def test_operation(
    sessions: dict[str, tuple[requests.Session, str]],
    surface: str,
    label: str,
    mode: schemathesis.GenerationMode,
) -> None:
    operation = SCHEMAS[surface].find_operation_by_label(label)
    assert operation is not None, label
    session, base_url = sessions[surface]
    targets = st.sampled_from(["echo", "echo", "boom", None])

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode), target=targets)
    def run(case: schemathesis.Case, target: str | None) -> None:
        aim(case, surface, target)
        response = case.call(base_url=base_url, session=session, timeout=CALL_TIMEOUT_S)
        check_answer(case, response, surface)
        if mode is POSITIVE:
            case.validate_response(response, checks=CHECKS)

    run()
