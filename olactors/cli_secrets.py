"""`olactors secret set|list|delete|grant|revoke`: a running worker's secrets.

Each command talks to the worker's admin socket (``--path DIR``) and prints
one line, or with ``--json`` the worker's JSON answer as one object.  A value
is read from ``--from-file F`` or standard input (without echo when it is a
terminal), never from the command line, where ``ps`` and shell history would
keep it.  Errors the worker answers go to stderr as its JSON error, with exit
status 1.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from ._errors import OlactorsError
from ._names import validate_function_name
from ._secrets import MAX_SECRET_BYTES, validate_secret_name


def add_secret_parser(sub: argparse._SubParsersAction, add_path: Any) -> None:
    """Add ``secret`` and its subcommands to the ``olactors`` parser."""
    p = sub.add_parser("secret", help="set, list, delete, grant and revoke a worker's secrets")
    cmds = p.add_subparsers(dest="secret_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = cmds.add_parser(name, help=help)
        add_path(c, overrides=False)
        c.add_argument("--json", action="store_true", help="print the answer as one JSON object")
        return c

    c = command("set", "set a secret's value (from --from-file, else standard input)")
    c.add_argument("name", help="the secret's name ([A-Za-z0-9_.-]{1,128})")
    c.add_argument("--from-file", type=Path, metavar="F", help="read the value from this file")
    command("list", "the secrets: names, versions, dates, grants (never values)")
    c = command("delete", "delete a secret and its grants")
    c.add_argument("name")
    c = command("grant", "grant a secret to a function (its leaves get /run/secrets/NAME)")
    c.add_argument("name")
    c.add_argument("function")
    c = command("revoke", "take a secret back from a function")
    c.add_argument("name")
    c.add_argument("function")


def read_value(from_file: Path | None) -> bytes:
    """The value: the file's bytes, a terminal's line (no echo), or standard
    input to its end.  At most one byte more than a secret may hold is read:
    the worker then refuses it (413 secret_too_large)."""
    if from_file is not None:
        with open(from_file, "rb") as f:
            return f.read(MAX_SECRET_BYTES + 1)
    if sys.stdin.isatty():
        return getpass.getpass("secret value (not echoed): ").encode()
    return sys.stdin.buffer.read(MAX_SECRET_BYTES + 1)


def cmd_secret(args: argparse.Namespace) -> int:
    from .cli import _admin_client, _admin_request, _print_error

    sub = args.secret_command
    name = validate_secret_name(args.name) if sub != "list" else ""
    if sub in ("grant", "revoke"):
        validate_function_name(args.function)
    if sub == "set":
        method, path, body = "PUT", f"/secrets/{name}", read_value(args.from_file)
    elif sub == "list":
        method, path, body = "GET", "/secrets", b""
    elif sub == "delete":
        method, path, body = "DELETE", f"/secrets/{name}", b""
    else:
        method = "PUT" if sub == "grant" else "DELETE"
        path, body = f"/secrets/{name}/grants/{args.function}", b""
    headers = {"content-type": "application/octet-stream"} if method == "PUT" else {}
    with _admin_client(args.path) as client:
        response = _admin_request(client, args.path, method, path, content=body, headers=headers)
    if not response.is_success:
        _print_error(response)
        return 1
    try:
        answer = response.json()
    except ValueError:
        raise OlactorsError(f"{method} {path}: the worker's answer is not JSON") from None
    if args.json:
        print(json.dumps(answer))
    else:
        for line in describe(sub, answer):
            print(line)
    return 0


def describe(sub: str, answer: dict[str, Any]) -> list[str]:
    """What a person reads after ``secret <sub>``."""
    if sub == "list":
        rows = answer.get("secrets", [])
        if not rows:
            return ["no secrets"]
        width = max(4, *(len(r["name"]) for r in rows))
        lines = [f"{'NAME':<{width}}  VERSION  UPDATED               GRANTS"]
        for r in rows:
            grants = ", ".join(r["grants"]) or "-"
            lines.append(
                f"{r['name']:<{width}}  {r['version']:>7}  {r['updated_at']:<20}  {grants}"
            )
        return lines
    name = answer.get("name", "")
    if sub == "set":
        verb = "created" if answer.get("created") else "updated"
        return [f"{verb} secret {name} (version {answer['version']})"]
    if sub == "delete":
        return [f"deleted secret {name}"]
    grants = ", ".join(answer.get("grants", [])) or "no function"
    if sub == "grant":
        note = "" if answer.get("changed") else " (it already was)"
        return [f"granted secret {name}{note}; granted to: {grants}"]
    note = "" if answer.get("changed") else " (it was not granted to it)"
    return [f"revoked secret {name}{note}; granted to: {grants}"]
