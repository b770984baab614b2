"""A plain WSGI app (stdlib only): says hello and echoes the request line back as JSON.

curl 'http://127.0.0.1:5000/run/hello-wsgi/some/path?x=1'
"""

import json


def app(environ, start_response):
    body = json.dumps(
        {
            "hello": "world",
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", "") or "/",
            "query": environ.get("QUERY_STRING", ""),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
