"""``olactors token ...`` and ``olactors owner ...``: the admin API of tokens and
owners (:mod:`olactors.http._admin_access`) from the command line.

Like every command that talks to a running worker, these use its admin
socket (``--path DIR``) and print one JSON object with ``--json``.
``token create`` prints the token alone on standard output (what it is for
goes to standard error), so ``TOKEN=$(olactors token create f)`` works; the
token is shown this once.  An error answer is printed as the worker's JSON
error on standard error, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._access import TOKEN_ID, parse_duration, valid_owner
from ._errors import OlactorsError
from ._names import validate_function_name
from .cli import _admin_client, _admin_request, _print_error


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """The answer's JSON, or None after printing the worker's error."""
    with _admin_client(args.path) as client:
        kwargs = {} if body is None else {"json": body}
        response = _admin_request(client, args.path, method, path, **kwargs)
    if not response.is_success:
        _print_error(response)
        return None
    return response.json()


def _print_json(obj: Any) -> None:
    print(json.dumps(obj))


def _target(token: dict[str, Any]) -> str:
    if token.get("function") is not None:
        return f"function {token['function']}"
    return f"owner {token.get('owner')}"


def _describe(token: dict[str, Any]) -> str:
    what = _target(token)
    expires = token.get("expires_at") or "never"
    revoked = f"  revoked {token['revoked_at']}" if token.get("revoked_at") else ""
    created = token["created_at"]
    return (
        f"{token['id']}  {token['state']:8}  {what}  created {created}  expires {expires}{revoked}"
    )


def token_command(args: argparse.Namespace) -> int:
    if args.action == "create":
        if (args.function is None) == (args.owner is None):
            raise OlactorsError("give a FUNCTION or --owner NAME (exactly one)")
        body: dict[str, Any] = {}
        if args.function is not None:
            body["function"] = validate_function_name(args.function)
        else:
            body["owner"] = check_owner(args.owner)
        if args.expires is not None:
            try:
                body["expires_in_s"] = parse_duration(args.expires)
            except ValueError as exc:
                raise OlactorsError(f"--expires: {exc}") from None
        created = _call(args, "POST", "/tokens", body)
        if created is None:
            return 1
        if args.json:
            _print_json(created)
            return 0
        print(created["token"])
        expires = created["expires_at"] or "never"
        print(
            f"token {created['id']} for {_target(created)}, expires {expires}; "
            "shown only now: keep it",
            file=sys.stderr,
        )
        return 0
    if args.action == "list":
        listed = _call(args, "GET", "/tokens")
        if listed is None:
            return 1
        if args.json:
            _print_json(listed)
        else:
            for token in listed["tokens"]:
                print(_describe(token))
        return 0
    if TOKEN_ID.fullmatch(args.id) is None:
        raise OlactorsError(
            f"bad token id {args.id!r}: an id is 16 hex digits (token list shows them; "
            "a token olt_<id>_... begins with its id)"
        )
    revoked = _call(args, "DELETE", f"/tokens/{args.id}")
    if revoked is None:
        return 1
    if args.json:
        _print_json(revoked)
    else:
        print(f"revoked {revoked['id']} (at {revoked['revoked_at']})")
    return 0


def check_owner(name: str) -> str:
    """``name`` if it is an owner name, else the usage error every command gives."""
    if not valid_owner(name):
        raise OlactorsError(f"bad owner name {name!r}: 1 to 128 letters, digits, '_', '.' or '-'")
    return name


def owner_command(args: argparse.Namespace) -> int:
    if args.action == "list":
        listed = _call(args, "GET", "/owners")
        if listed is None:
            return 1
        if args.json:
            _print_json(listed)
        else:
            for entry in listed["owners"]:
                print(f"{entry['function']}  {entry['owner']}")
        return 0
    validate_function_name(args.function)
    if args.action == "set":
        answer = _call(args, "PUT", f"/owners/{args.function}", {"owner": check_owner(args.name)})
        if answer is None:
            return 1
        text = f"{answer['function']} is owned by {answer['owner']}"
    else:
        answer = _call(args, "DELETE", f"/owners/{args.function}")
        if answer is None:
            return 1
        previous = answer.get("previous")
        text = f"{answer['function']} has no owner" + (f" (was {previous})" if previous else "")
    if args.json:
        _print_json(answer)
    else:
        print(text)
    return 0
