"""What a leaf's answer says about a failure (pure: no trio, no I/O).

The in-sandbox runtime marks the errors it generates with the
``x-olactors-error`` header (see runtime/server.py): the handler raised
(``handler_exception``), the function's code failed to import
(``handler_import_failed``), the result was not JSON-serialisable
(``bad_result``), or the request could not be read (``bad_json``,
``bad_request``).  :func:`runtime_error_cause` turns the first three into
their typed cause; the last two are the client's errors (4xx) and have none.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from .._causes import Cause, CauseCode
from .._secrets import Redactor
from ._api import InvocationResult

#: The header the runtime marks its own error answers with.
RUNTIME_ERROR_HEADER = "x-olactors-error"
#: How much of a traceback or message a cause keeps.
MAX_TEXT = 16384


def runtime_error_code(result: InvocationResult) -> str | None:
    """The runtime's error code of ``result`` (None: the function's own answer)."""
    for name, value in result.headers:
        if name.lower() == RUNTIME_ERROR_HEADER:
            return value
    return None


def runtime_error_body(result: InvocationResult) -> dict[str, Any] | None:
    """The JSON object of a runtime error answer (None if it is not one)."""
    try:
        parsed = json.loads(result.body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def runtime_error_cause(result: InvocationResult) -> Cause | None:
    """The cause of a runtime-marked failure of the function (see the module
    docstring); None for the function's own answers and the client's errors."""
    code = runtime_error_code(result)
    if code is None:
        return None
    body = runtime_error_body(result) or {}
    message = str(body.get("message", ""))[:MAX_TEXT]
    traceback = str(body.get("traceback", ""))[-MAX_TEXT:]
    if code == "handler_exception":
        kind = str(body.get("type", "Exception"))
        return Cause.of(
            CauseCode.HANDLER_EXCEPTION, type=kind, message=message, traceback=traceback
        )
    if code == "handler_import_failed":
        return Cause.of(CauseCode.IMPORT_ERROR, message=message, traceback=traceback)
    if code == "bad_result":
        return Cause.of(
            CauseCode.HANDLER_EXCEPTION, type="BadResult", message=message, traceback=""
        )
    return None


def redact_runtime_error(result: InvocationResult, redactor: Redactor | None) -> InvocationResult:
    """``result`` with the sandbox's secret values replaced in a runtime error
    answer (a handler's exception message and traceback reach the caller, the
    record and the cause).  The function's own answers are its own business
    and stay as they are."""
    if not redactor or runtime_error_code(result) is None:
        return result
    body = runtime_error_body(result)
    if body is None:
        return replace(result, body=redactor.redact(result.body))
    return replace(result, body=json.dumps(redactor.redact_json(body)).encode())
