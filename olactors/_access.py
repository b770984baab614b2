"""Private functions and invoke tokens: the decision, free of I/O (pure).

A function is ``public`` (anyone who reaches the port may call it) or
``private`` (ol.yaml ``access: private``, or the worker's
``functions.default_access``): calling it needs ``Authorization: Bearer
<token>`` with a token the admin issued for that function, or for the
function's owner.

**Tokens.**  ``olt_<id>_<secret>``: ``id`` is 16 hex digits (64 random bits,
not secret: it names the token in ``token list`` and ``token revoke``), the
secret 32 random bytes (``secrets.token_urlsafe``).  Only
``sha256(token)`` is stored.  A slow password hash (bcrypt, scrypt, argon2)
exists to make guessing *low-entropy* secrets from a stolen hash expensive;
a 256-bit random secret cannot be guessed whatever the hash, and a slow hash
would cost tens of milliseconds on every call.  The check looks the token up
by its id and compares the hashes with :func:`hmac.compare_digest`
(constant time); an unknown id is compared against a dummy hash, so both
paths cost the same.

**Decisions** (:func:`check_access`): a public function admits everyone; a
private one answers :class:`Unauthorized` (401, ``WWW-Authenticate: Bearer``)
when no bearer token was presented, and :class:`Forbidden` (403) for a token
that is malformed, unknown, expired, revoked, or for another function or
owner.  The worker's own triggers (:class:`TrustedCaller`) need no token.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ._errors import OlactorsError

TOKEN_PREFIX = "olt_"
_ID_HEX = 16
_TOKEN = re.compile(rf"{TOKEN_PREFIX}([0-9a-f]{{{_ID_HEX}}})_([A-Za-z0-9_-]{{43}})")
TOKEN_ID = re.compile(rf"[0-9a-f]{{{_ID_HEX}}}")
#: Owner names: like secret names, letters, digits, ``_.-``, 1 to 128 characters.
OWNER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
HASH_PREFIX = "sha256:"
_DUMMY_HASH = HASH_PREFIX + hashlib.sha256(b"no such token").hexdigest()
#: The longest ``--expires`` (about 100 years).
MAX_EXPIRES_S = 100 * 365 * 86400
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Access(enum.StrEnum):
    """Who may call a function (ol.yaml ``access``)."""

    PUBLIC = "public"
    PRIVATE = "private"


class Unauthorized(OlactorsError):
    """A private function was called without a bearer token (401, with
    ``WWW-Authenticate: Bearer``)."""

    code = "unauthorized"
    status = 401


class Forbidden(OlactorsError):
    """The bearer token does not grant this call: malformed, unknown, expired,
    revoked, or issued for another function or owner (403)."""

    code = "forbidden"
    status = 403


class AccessChanged(Unauthorized):
    """A call admitted while its function was public reached the function
    actor when the code it would run is private (ol.yaml changed while the
    call waited past ``registry.cache_s``).  The worker judges the call again
    (:meth:`olactors.worker.Worker.invoke`); should it escape anyway, it
    answers like any call without a valid token: 401, fail closed."""


class TokenNotFound(OlactorsError):
    """No token has that id (admin API)."""

    code = "token_not_found"
    status = 404


@dataclass(frozen=True, slots=True)
class HttpCaller:
    """A caller from the public port and the ``Authorization`` header it sent
    (None: none).  The header is never logged or recorded."""

    authorization: str | None = None

    def __repr__(self) -> str:  # never show the credential, even in a traceback
        return f"HttpCaller(authorization={'<set>' if self.authorization else None})"


@dataclass(frozen=True, slots=True)
class TrustedCaller:
    """The worker's own trigger (a cron schedule, a queue consumer): it needs no
    token; ``trigger`` names it."""

    trigger: str


Caller = HttpCaller | TrustedCaller
ANONYMOUS = HttpCaller()


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One issued token as stored (never the token itself, only its hash).

    Exactly one of ``function`` and ``owner`` is set: the token invokes that
    private function, or every private function that owner owns.  Times are
    seconds since the epoch; ``expires_at`` None never expires.
    """

    id: str
    hash: str
    function: str | None
    owner: str | None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def state(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def stored(self) -> dict[str, Any]:
        """The entry as kept in the ``tokens`` state document."""
        return {
            "hash": self.hash,
            "function": self.function,
            "owner": self.owner,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_stored(cls, token_id: str, data: Mapping[str, Any]) -> TokenEntry:
        """The inverse of :meth:`stored`; ValueError/TypeError/KeyError for a bad entry."""
        if not TOKEN_ID.fullmatch(token_id):
            raise ValueError(f"bad token id {token_id!r}")
        hashed = data["hash"]
        if not isinstance(hashed, str) or not hashed.startswith(HASH_PREFIX):
            raise ValueError("bad hash")
        function, owner = data.get("function"), data.get("owner")
        if (function is None) == (owner is None):
            raise ValueError("exactly one of function and owner must be set")
        if not isinstance(function or owner, str):
            raise TypeError("function/owner must be a string")

        def when(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        created = when("created_at")
        if created is None:
            raise ValueError("no created_at")
        return cls(
            token_id,
            hashed,
            function,
            owner,
            created,
            when("expires_at"),
            when("revoked_at"),
        )

    def public(self, now: float) -> dict[str, Any]:
        """What ``token list`` shows (never the hash)."""
        return {
            "id": self.id,
            "function": self.function,
            "owner": self.owner,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "revoked_at": rfc3339(self.revoked_at),
            "state": self.state(now),
        }


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token: ``text`` is shown once and never stored."""

    entry: TokenEntry
    text: str

    def __repr__(self) -> str:
        return f"IssuedToken(id={self.entry.id!r})"


def token_hash(text: str) -> str:
    return HASH_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def issue_token(
    *, function: str | None, owner: str | None, now: float, expires_in_s: float | None
) -> IssuedToken:
    """A fresh token for ``function`` or ``owner`` (exactly one), created at ``now``."""
    if (function is None) == (owner is None):
        raise ValueError("a token is for a function or for an owner, not both or neither")
    token_id = secrets.token_hex(_ID_HEX // 2)
    text = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    expires = None if expires_in_s is None else now + expires_in_s
    entry = TokenEntry(token_id, token_hash(text), function, owner, now, expires)
    return IssuedToken(entry, text)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (the scheme in
    any case, RFC 9110), or None when no bearer credential was sent."""
    if authorization is None:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None


def check_access(
    access: Access,
    caller: Caller,
    function: str,
    owner: str | None,
    tokens: Mapping[str, TokenEntry],
    now: float,
) -> None:
    """Admit the call of ``function`` (owned by ``owner``, or None) or raise
    :class:`Unauthorized` / :class:`Forbidden` (see the module docstring).
    ``now`` is the wall clock (seconds since the epoch): expiry is a date
    every worker must agree on."""
    if access is Access.PUBLIC or isinstance(caller, TrustedCaller):
        return
    text = bearer_token(caller.authorization)
    if text is None:
        raise Unauthorized(
            f"function {function!r} is private: send Authorization: Bearer <token> "
            "(tokens are issued with `olactors token create`)"
        )
    match = _TOKEN.fullmatch(text)
    entry = tokens.get(match.group(1)) if match is not None else None
    presented = token_hash(text)
    same = hmac.compare_digest(presented, entry.hash if entry is not None else _DUMMY_HASH)
    if entry is None or not same:
        raise Forbidden(f"the token is not valid for function {function!r}")
    state = entry.state(now)
    if state != "active":
        raise Forbidden(f"the token {entry.id} is {state}")
    if entry.function is not None and entry.function != function:
        raise Forbidden(f"the token {entry.id} does not grant function {function!r}")
    if entry.owner is not None and entry.owner != owner:
        raise Forbidden(
            f"the token {entry.id} is an owner's token, and function {function!r} "
            "is not that owner's"
        )


def parse_duration(text: str) -> float:
    """Seconds of ``30d``, ``12h``, ``15m``, ``90s``, ``2w`` or a plain number of
    seconds; ValueError for anything else, zero, or more than about 100 years."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"bad duration {text!r}: a number with an optional unit s, m, h, d or w (e.g. 30d)"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_EXPIRES_S:
        raise ValueError(f"bad duration {text!r}: must be more than 0 and at most 100 years")
    return seconds


def valid_owner(name: object) -> bool:
    return isinstance(name, str) and OWNER_NAME.fullmatch(name) is not None


def rfc3339(epoch: float | None) -> str | None:
    """``2026-12-01T16:20:41.123Z`` (None stays None)."""
    if epoch is None:
        return None
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
