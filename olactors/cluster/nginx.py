"""A complete nginx.conf (nginx 1.22, Debian's ``nginx`` package) for the
shared code store.

``render_nginx_config(NginxSettings(...))`` returns what ``olactors cluster
nginx-config`` writes; ``nginx -c FILE`` runs it as it is, in the foreground
(``daemon off``: a supervisor or a container runs it).

* Workers read ``<root>/<name>.tar.gz`` (and ``index.json``) with plain GETs;
  nginx answers conditional GETs (``ETag``, ``If-Modified-Since``) by itself.
* The publisher writes with WebDAV ``PUT`` and ``DELETE`` (nginx's built-in
  ``dav_methods``: a PUT is written to a temporary file in the root and
  renamed over the old file, so a reader never sees half an archive), and
  locks the index with ``MKCOL index.lock/`` (:mod:`.publish`).  Only
  GET and HEAD are open to everyone; every other method needs the publisher:
  its address (``--allow CIDR``, default loopback only) and, with
  ``--auth-file`` (an htpasswd file), HTTP basic auth too; with both, both
  are required.
* Names starting with a dot (the temporary files, the pid file) are never
  served.  ``nginx`` runs its workers as the owner of the root directory, so
  they can write there.
"""

from __future__ import annotations

import ipaddress
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import OlactorsError
from ._address import Address

#: What nginx accepts in a PUT: a function archive (registry.max_code_mb is
#: checked by the workers when they unpack it).
DEFAULT_MAX_UPLOAD_MB = 256
LOOPBACK = ("127.0.0.1/32", "::1/128")
TEMP_DIR = ".nginx-tmp"
PID_FILE = ".nginx.pid"
#: A user name nginx's ``user`` directive takes (nothing it would read as more).
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True, slots=True)
class NginxSettings:
    listen: Address
    root: Path
    allow: list[str] = field(default_factory=lambda: list(LOOPBACK))
    auth_file: Path | None = None
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    user: str | None = None  # default: the owner of ``root``


def check_cidr(text: str) -> str:
    """A CIDR (or single address) as nginx's ``allow`` takes it, normalised."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise OlactorsError(f"--allow {text!r} is not an address or CIDR") from None


def _quote(path: Path) -> str:
    text = str(path)
    # ``$`` starts a variable in ``root``; the rest end or quote a word.
    if any(c in text for c in "\"';{}$\\\n\r\t ") or not text:
        raise OlactorsError(f"path {text!r} has characters nginx.conf cannot hold unquoted")
    return text


def _owner(root: Path) -> str:
    uid = root.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_paths(settings: NginxSettings) -> None:
    """The root and the auth file exist (when the config is made where nginx runs)."""
    if not settings.root.is_dir():
        raise OlactorsError(f"--root {settings.root} is not a directory")
    if settings.auth_file is not None and not settings.auth_file.is_file():
        raise OlactorsError(f"--auth-file {settings.auth_file} is not a file")


def render_nginx_config(settings: NginxSettings) -> str:
    """The nginx.conf for ``settings``; paths are used as given (absolute ones:
    nginx reads them where it runs), the user is ``settings.user`` or the
    owner of the root directory."""
    root = settings.root
    if not root.is_absolute():
        raise OlactorsError(f"--root {root} must be an absolute path")
    if settings.max_upload_mb < 1:
        raise OlactorsError("the upload limit must be at least 1 MB")
    allowed = [check_cidr(cidr) for cidr in settings.allow]
    user = settings.user or _owner(root)
    if not _USER.fullmatch(user):
        raise OlactorsError(f"--user {user!r} is not a user name")
    quoted_root = _quote(root)
    writers = [*(f"            allow {cidr};" for cidr in allowed), "            deny all;"]
    if settings.auth_file is not None:
        writers += [
            '            auth_basic "olactors code store";',
            f"            auth_basic_user_file {_quote(settings.auth_file)};",
        ]
    listen = str(settings.listen)
    lines = [
        "# nginx.conf for the olactors code store, written by `olactors cluster nginx-config`.",
        "# Run it as it is: nginx -c THIS_FILE   (in the foreground: daemon off)",
        "",
        "daemon off;",
        f"user {user};",
        "worker_processes 1;",
        f"pid {quoted_root}/{PID_FILE};",
        "error_log stderr warn;",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        "    access_log /dev/stdout;",
        "    default_type application/octet-stream;",
        "    types {",
        "        application/gzip gz;",
        "        application/json json;",
        "    }",
        "    sendfile on;",
        "    log_not_found off;",
        "    server_tokens off;",
        # Temporary files live in the root, so a PUT's rename into place is atomic.
        f"    client_body_temp_path {quoted_root}/{TEMP_DIR};",
        f"    proxy_temp_path {quoted_root}/{TEMP_DIR};",
        f"    fastcgi_temp_path {quoted_root}/{TEMP_DIR};",
        f"    uwsgi_temp_path {quoted_root}/{TEMP_DIR};",
        f"    scgi_temp_path {quoted_root}/{TEMP_DIR};",
        "",
        "    server {",
        f"        listen {listen};",
        f"        root {quoted_root};",
        "        autoindex off;",
        f"        client_max_body_size {settings.max_upload_mb}m;",
        "",
        "        # Hidden names (temporary files, the pid file) are never served.",
        "        location ~ (^|/)\\. {",
        "            return 404;",
        "        }",
        "",
        "        location / {",
        "            dav_methods PUT DELETE MKCOL;  # MKCOL: the publishers' index lock",
        "            create_full_put_path off;",
        "            dav_access user:rw group:r all:r;",
        "            # GET and HEAD for everyone (workers); the rest for the publisher only.",
        "            limit_except GET {",
        *writers,
        "            }",
        "        }",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)
