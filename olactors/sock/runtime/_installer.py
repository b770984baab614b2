"""The installer sandbox's handler: run pip in this process (stdlib + pip only).

A leaf started with entry ``_installer:f`` and pip's package dir mounted
among its packages.  The event is ``{"args": [...]}``, pip's command line;
the answer is ``{"returncode": int, "output": str}`` (the tail of what pip
printed).  One install per sandbox: the worker destroys it afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os

OUTPUT_TAIL_CHARS = 8000


def f(event):
    os.makedirs("/host/tmp", exist_ok=True)
    os.environ["TMPDIR"] = "/host/tmp"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            from pip._internal.cli.main import main

            code = main(list(event["args"]))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - reported to the worker
            print(f"pip crashed: {type(exc).__name__}: {exc}")
            code = 1
    return {"returncode": code, "output": out.getvalue()[-OUTPUT_TAIL_CHARS:]}
