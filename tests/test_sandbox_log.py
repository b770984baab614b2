"""Output outside any call lands in the sandbox's own log, readable on the
admin socket (``GET /sandboxes/<id>/log``), never in a call's record (root,
real worker)."""

from __future__ import annotations

import pytest
import trio

from .test_http_api import assert_json_error, serving, write_fn

pytestmark = pytest.mark.root

LOUD = """\
import sys, threading, time
print("printed at import time")
print("warned at import time", file=sys.stderr)

def f(event):
    print("printed in the call")
    return 1
"""


@pytest.mark.parametrize("cache", ["true", "false"])
async def test_import_time_output_is_in_the_sandbox_log_not_the_call(worker_dir, cache):
    with trio.fail_after(60):
        async with serving(worker_dir, f"import_cache.enabled={cache}") as served:
            write_fn(served, "loud", LOUD)
            async with served.client() as client:
                response = await client.post("/run/loud", json=1)
            assert response.status_code == 200, response.text
            request_id = response.headers["x-request-id"]
            async with served.admin_client() as admin:
                leaf = next(
                    sb
                    for sb in (await admin.get("/sandboxes")).json()
                    if sb["kind"] == "leaf" and sb["function"] == "loud"
                )
                log = await admin.get(f"/sandboxes/{leaf['id']}/log")
                assert log.status_code == 200
                assert log.headers["content-type"].startswith("text/plain")
                assert "printed at import time" in log.text
                assert "warned at import time" in log.text
                assert "printed in the call" not in log.text
                with trio.fail_after(10):  # the record is written off the request path
                    while (stdout := await admin.get(f"/debug/loud/{request_id}/stdout")).is_error:
                        await trio.sleep(0.05)
                assert stdout.text == "printed in the call\n"
                missing = await admin.get("/sandboxes/sb-no-such/log")
                assert_json_error(missing, 404, "sandbox_not_found")
