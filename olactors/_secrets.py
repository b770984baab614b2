"""Secrets as the worker handles them in memory (pure: no trio, no I/O).

A secret is a named value of at most :data:`MAX_SECRET_BYTES`, stored
encrypted in the state directory (``olactors/secrets/``) and granted by the
admin to functions.  What a function's sandboxes get is a
:class:`GrantedSecrets`: the decrypted files of every secret granted to it,
each with its version, so a change of value (a new version) or of the grants
is a new :attr:`GrantedSecrets.fingerprint` and the function's instances
holding the old one are replaced.

:class:`Redactor` replaces a granted secret's value in what a sandbox wrote
(captured output, its log, the runtime's error bodies) by ``[secret NAME]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._errors import BadSecretName, SecretTooLarge

#: A secret's name: also its file name in ``/run/secrets``.
SECRET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: The largest value a secret may have.
MAX_SECRET_BYTES = 64 * 1024
#: Where a leaf finds its secrets, one read-only file per secret.
SECRETS_MOUNT = "/run/secrets"
#: Values shorter than this are not redacted from output: replacing every
#: occurrence of two or three bytes would mangle output and protect nothing.
MIN_REDACTED_BYTES = 4


def validate_secret_name(name: str) -> str:
    """``name`` if it is a valid secret name, else :class:`BadSecretName`."""
    if not SECRET_NAME.fullmatch(name) or name in (".", ".."):
        shown = name if len(name) <= 140 else name[:140] + "..."
        raise BadSecretName(
            f"bad secret name {shown!r}: 1 to 128 of A-Z a-z 0-9 _ . - (and not . or ..)"
        )
    return name


def validate_secret_value(value: bytes) -> bytes:
    """``value`` if it fits, else :class:`SecretTooLarge`."""
    if len(value) > MAX_SECRET_BYTES:
        raise SecretTooLarge(
            f"a secret's value is at most {MAX_SECRET_BYTES} bytes (64 KiB), not {len(value)}"
        )
    return value


@dataclass(frozen=True, slots=True)
class SecretFile:
    """One decrypted secret as a sandbox gets it.  The value is never part
    of the repr (logs, tracebacks, debuggers)."""

    name: str
    version: int
    value: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class GrantedSecrets:
    """Every secret granted to one function, sorted by name."""

    files: tuple[SecretFile, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.files)

    @property
    def fingerprint(self) -> tuple[tuple[str, int], ...]:
        """What identifies the set: names and versions (never values)."""
        return tuple((f.name, f.version) for f in self.files)

    def __bool__(self) -> bool:
        return bool(self.files)


NO_SECRETS = GrantedSecrets()


@dataclass(frozen=True, slots=True)
class SecretEntry:
    """One secret as stored: metadata in clear, the value encrypted.

    ``nonce`` and ``ciphertext`` are base64 text (AES-256-GCM; see
    ``olactors/secrets/_crypto.py``); dates are RFC 3339 UTC strings.
    """

    name: str
    version: int
    created_at: str
    updated_at: str
    grants: tuple[str, ...]
    nonce: str = field(repr=False)
    ciphertext: str = field(repr=False)

    def as_json(self) -> dict[str, Any]:
        """The stored form (the ``secrets`` document's value for ``name``)."""
        return {
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "grants": list(self.grants),
            "nonce": self.nonce,
            "ciphertext": self.ciphertext,
        }

    def describe(self) -> dict[str, Any]:
        """What ``secret list`` shows: never the value, not even encrypted."""
        return {
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "grants": list(self.grants),
        }


@dataclass(frozen=True, slots=True)
class SecretsDoc:
    """The ``secrets`` state document, parsed.

    ``key_id`` identifies the key every value is encrypted under (None:
    nothing was ever stored); ``invalid`` names entries that were malformed
    and are ignored (the store logs them).
    """

    key_id: str | None = None
    entries: dict[str, SecretEntry] = field(default_factory=dict)
    invalid: tuple[str, ...] = ()

    def granted_to(self, function: str) -> list[SecretEntry]:
        return [e for _, e in sorted(self.entries.items()) if function in e.grants]

    def as_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "secrets": {name: e.as_json() for name, e in sorted(self.entries.items())},
        }


def _entry(name: str, raw: Any) -> SecretEntry | None:
    if not isinstance(raw, dict) or not SECRET_NAME.fullmatch(name) or name in (".", ".."):
        return None
    version = raw.get("version")
    grants = raw.get("grants", [])
    texts = [raw.get(k) for k in ("created_at", "updated_at", "nonce", "ciphertext")]
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or version < 1
        or not isinstance(grants, list)
        or not all(isinstance(g, str) for g in grants)
        or not all(isinstance(t, str) for t in texts)
    ):
        return None
    created, updated, nonce, ciphertext = (str(t) for t in texts)
    return SecretEntry(
        name, version, created, updated, tuple(sorted(set(grants))), nonce, ciphertext
    )


def parse_secrets_doc(data: dict[str, Any]) -> SecretsDoc:
    """The typed view of the ``secrets`` document (``{}``: none stored yet).
    Malformed entries are skipped and named in ``invalid``; never raises for
    odd data."""
    key_id = data.get("key_id")
    raw = data.get("secrets")
    entries: dict[str, SecretEntry] = {}
    invalid: list[str] = []
    if isinstance(raw, dict):
        for name, value in raw.items():
            entry = _entry(str(name), value)
            if entry is None:
                invalid.append(str(name))
            else:
                entries[entry.name] = entry
    return SecretsDoc(key_id if isinstance(key_id, str) else None, entries, tuple(invalid))


# ----------------------------------------------------------------- redaction
def marker(name: str) -> bytes:
    """What replaces secret ``name``'s value in kept output."""
    return f"[secret {name}]".encode()


class Redactor:
    """Replaces the values of ``files`` in bytes or text by ``[secret NAME]``.

    Each value is looked for as it is and without trailing line breaks (a
    value set from ``echo`` ends with one that a function printing it after
    ``strip()`` does not).  Values shorter than :data:`MIN_REDACTED_BYTES`
    are left alone.  Longer values win where two overlap.
    """

    __slots__ = ("_names", "_pattern", "_text_names", "_text_pattern", "_needles")

    def __init__(self, files: Iterable[SecretFile]) -> None:
        needles: dict[bytes, str] = {}
        for f in sorted(files, key=lambda f: f.name):
            for variant in (f.value, f.value.rstrip(b"\r\n")):
                if len(variant) >= MIN_REDACTED_BYTES:
                    needles.setdefault(variant, f.name)
        self._names = needles
        self._needles = sorted(needles, key=len, reverse=True)
        self._pattern = (
            re.compile(b"|".join(re.escape(n) for n in self._needles)) if needles else None
        )
        text: dict[str, str] = {}
        for needle, name in needles.items():
            try:
                text.setdefault(needle.decode("utf-8"), name)
            except UnicodeDecodeError:
                continue
        self._text_names = text
        ordered = sorted(text, key=len, reverse=True)
        self._text_pattern = re.compile("|".join(re.escape(t) for t in ordered)) if text else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def redact(self, data: bytes) -> bytes:
        """``data`` with every value replaced."""
        if self._pattern is None or not data:
            return data
        return self._pattern.sub(lambda m: marker(self._names[m.group(0)]), data)

    def redact_text(self, text: str) -> str:
        if self._text_pattern is None or not text:
            return text
        return self._text_pattern.sub(lambda m: marker(self._text_names[m.group(0)]).decode(), text)

    def redact_json(self, value: Any) -> Any:
        """A JSON value with every string (keys too) redacted."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, list):
            return [self.redact_json(v) for v in value]
        if isinstance(value, dict):
            return {self.redact_text(str(k)): self.redact_json(v) for k, v in value.items()}
        return value

    def partial_tail(self, data: bytes) -> tuple[int, str | None]:
        """The length of the longest end of ``data`` that is the beginning of a
        value (output cut there may go on with the rest of it), and that
        secret's name; ``(0, None)`` if none."""
        best, best_name = 0, None
        for needle in self._needles:
            first = needle[:1]
            start = max(0, len(data) - len(needle) + 1)
            while True:
                at = data.find(first, start)
                if at < 0 or len(data) - at <= best:
                    break
                if needle.startswith(data[at:]):
                    best, best_name = len(data) - at, self._names[needle]
                    break
                start = at + 1
        return best, best_name

    def redact_cut(self, data: bytes) -> bytes:
        """``data`` redacted, for output that was cut after it: a beginning of a
        value at its very end is replaced too."""
        data = self.redact(data)
        n, name = self.partial_tail(data)
        if name is None or n < MIN_REDACTED_BYTES:
            return data
        return data[:-n] + marker(name)
