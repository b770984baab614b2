"""The secret store: the ``secrets`` document of the state directory.

One document holds every secret (name, version, dates, the functions it is
granted to, and the value encrypted with AES-256-GCM under the key file) and
the id of the key, so a set, a delete, a grant or a revoke is one atomic,
locked change that workers sharing the directory never half-see.  Names,
versions, dates and grants are in clear (``secret list`` shows them);
values are never in clear on disk, in a response or in a log.

Every worker reads the document through a :class:`~olactors.state.CachedDoc`
(``registry.cache_s``): a change made through any worker reaches the others'
new calls within that period, through this worker's at once.  Decrypted
values are kept in memory per (name, version) and dropped when the version
goes.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from .._errors import SecretKeyUnusable, SecretNotFound
from .._names import validate_function_name
from .._secrets import (
    NO_SECRETS,
    GrantedSecrets,
    SecretEntry,
    SecretFile,
    SecretsDoc,
    parse_secrets_doc,
    validate_secret_name,
    validate_secret_value,
)
from ..state import CachedDoc, StateDir
from ._crypto import decrypt, encrypt, key_id
from ._keyfile import create_key, read_key

log = logging.getLogger("olactors.secrets")

#: The state document the store keeps.
DOCUMENT = "secrets"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SecretStore:
    """Secrets and their grants in ``state``, values sealed with the key at ``key_path``."""

    def __init__(self, state: StateDir, key_path: Path, cache_s: float) -> None:
        self.state = state
        self.key_path = key_path
        self.doc = CachedDoc(state, DOCUMENT, cache_s, parse_secrets_doc)
        self._key: bytes | None = None
        #: Decrypted values by (name, version, nonce).
        self._values: dict[tuple[str, int, str], bytes] = {}
        #: Each function's granted secrets as of the document object ``_for_doc``.
        self._granted: dict[str, GrantedSecrets] = {}
        self._for_doc: SecretsDoc | None = None

    # ------------------------------------------------------------ the key
    def _load_key(self, doc: SecretsDoc, *, may_create: bool) -> bytes:
        """The key (a blocking read: call in a thread), checked against the key
        id the document names.  Made only when ``may_create`` and no secret was
        ever stored."""
        key = self._key
        if key is None:
            key = read_key(self.key_path)
            if key is None:
                if doc.key_id is not None or not may_create:
                    raise SecretKeyUnusable(
                        f"secrets key file {self.key_path} does not exist"
                        + (
                            f"; the stored secrets were encrypted under key id {doc.key_id}: "
                            "give this worker that key file (secrets.key_file)"
                            if doc.key_id is not None
                            else ""
                        )
                    )
                key = create_key(self.key_path)
                log.info("secrets: made the key file %s (key id %s)", self.key_path, key_id(key))
        if doc.key_id is not None and key_id(key) != doc.key_id:
            self._key = None  # read it again next time: it may be replaced by the right one
            raise SecretKeyUnusable(
                f"secrets key file {self.key_path} holds key id {key_id(key)}, but the stored "
                f"secrets were encrypted under key id {doc.key_id}: workers sharing a state "
                "dir must share one key file"
            )
        self._key = key
        return key

    # ------------------------------------------------------------ admin
    async def set(self, name: str, value: bytes) -> dict[str, Any]:
        """Store ``value`` as the next version of ``name``; its description."""
        validate_secret_name(name)
        validate_secret_value(value)

        def change(data: dict[str, Any]) -> dict[str, Any]:
            doc = parse_secrets_doc(data)
            key = self._load_key(doc, may_create=True)
            old = doc.entries.get(name)
            version = 1 if old is None else old.version + 1
            nonce, ciphertext = encrypt(key, name, version, value)
            now = _now()
            entry = SecretEntry(
                name,
                version,
                now if old is None else old.created_at,
                now,
                () if old is None else old.grants,
                nonce,
                ciphertext,
            )
            return _with_entry(data, key_id(key), name, entry.as_json())

        doc = await self._update(change)
        return {**doc.entries[name].describe(), "created": doc.entries[name].version == 1}

    async def list(self) -> list[dict[str, Any]]:
        """Every secret's description (name, version, dates, grants), by name."""
        doc = await self.doc.current()
        return [e.describe() for _, e in sorted(doc.entries.items())]

    async def delete(self, name: str) -> None:
        """Remove ``name`` and its grants (SecretNotFound if absent)."""
        validate_secret_name(name)

        def change(data: dict[str, Any]) -> dict[str, Any]:
            if name not in parse_secrets_doc(data).entries:
                raise SecretNotFound(f"no secret {name!r}")
            secrets = dict(data.get("secrets") or {})
            del secrets[name]
            return {**data, "secrets": secrets}

        await self._update(change)

    async def grant(self, name: str, function: str) -> dict[str, Any]:
        """Grant ``name`` to ``function`` (idempotent); the secret's description
        with ``changed``."""
        return await self._change_grant(name, function, add=True)

    async def revoke(self, name: str, function: str) -> dict[str, Any]:
        """Take ``name`` back from ``function`` (idempotent); as :meth:`grant`."""
        return await self._change_grant(name, function, add=False)

    async def _change_grant(self, name: str, function: str, *, add: bool) -> dict[str, Any]:
        validate_secret_name(name)
        validate_function_name(function)
        changed = False

        def change(data: dict[str, Any]) -> dict[str, Any]:
            nonlocal changed
            entry = parse_secrets_doc(data).entries.get(name)
            if entry is None:
                raise SecretNotFound(f"no secret {name!r}")
            grants = set(entry.grants)
            changed = (function not in grants) if add else (function in grants)
            if add:
                grants.add(function)
            else:
                grants.discard(function)
            raw = {**data["secrets"][name], "grants": sorted(grants)}
            return _with_entry(data, data.get("key_id"), name, raw)

        doc = await self._update(change)
        return {**doc.entries[name].describe(), "changed": changed}

    async def _update(self, change: Any) -> SecretsDoc:
        """Apply ``change`` to the document under its lock (in a thread) and
        take the result as this worker's current view at once."""
        with trio.CancelScope(shield=True):  # a started write is seen through
            stored = await trio.to_thread.run_sync(self.state.update, DOCUMENT, change)
        return self.doc.accept(stored)

    # ------------------------------------------------------------ calls
    def cached(self, function: str, now: float) -> GrantedSecrets | None:
        """The warm path: ``function``'s secrets if the document was looked at
        less than ``registry.cache_s`` before trio time ``now`` and they were
        worked out since (no I/O, no await); else None (then await
        :meth:`for_function`)."""
        doc = self.doc.fresh(now)
        if doc is None or doc is not self._for_doc:
            return None
        return self._granted.get(function)

    async def for_function(self, function: str) -> GrantedSecrets:
        """The secrets granted to ``function``, decrypted, as of at most
        ``registry.cache_s`` ago.  :class:`SecretKeyUnusable` when a granted
        value cannot be decrypted; ``StateUnavailable`` when the document was
        never readable."""
        doc = await self.doc.current()
        if doc is not self._for_doc:
            self._forget_old(doc)
        granted = self._granted.get(function)
        if granted is None:
            entries = doc.granted_to(function)
            if not entries:
                granted = NO_SECRETS
            else:
                if self._key is None:
                    await trio.to_thread.run_sync(lambda: self._load_key(doc, may_create=False))
                granted = GrantedSecrets(tuple(self._file(doc, e) for e in entries))
            self._granted[function] = granted
        return granted

    def _file(self, doc: SecretsDoc, entry: SecretEntry) -> SecretFile:
        cache_key = (entry.name, entry.version, entry.nonce)
        value = self._values.get(cache_key)
        if value is None:
            key = self._key
            if key is None or (doc.key_id is not None and key_id(key) != doc.key_id):
                raise SecretKeyUnusable(
                    f"secrets key file {self.key_path} does not hold the key of the stored "
                    f"secrets (key id {doc.key_id})"
                )
            value = decrypt(key, entry.name, entry.version, entry.nonce, entry.ciphertext)
            self._values[cache_key] = value
        return SecretFile(entry.name, entry.version, value)

    def _forget_old(self, doc: SecretsDoc) -> None:
        """A new document: recompute grants, drop values no longer stored."""
        if doc.invalid:
            log.warning(
                "secrets: ignoring malformed entries in %s: %s",
                self.state.path,
                ", ".join(doc.invalid),
            )
        current = {(e.name, e.version, e.nonce) for e in doc.entries.values()}
        self._values = {k: v for k, v in self._values.items() if k in current}
        self._granted = {}
        self._for_doc = doc

    def describe(self) -> dict[str, Any]:
        """For /stats: counts only (never names of values, never values)."""
        doc = self.doc.peek()
        return {
            "stored": 0 if doc is None else len(doc.entries),
            "reads": self.doc.reads,
            "read_errors": self.doc.read_errors,
        }


def _with_entry(
    data: dict[str, Any], key: str | None, name: str, entry: dict[str, Any]
) -> dict[str, Any]:
    """``data`` with ``name``'s entry replaced (other entries kept as they are,
    malformed ones too: this worker does not decide they are garbage)."""
    secrets = dict(data.get("secrets") or {})
    secrets[name] = entry
    return {**data, "key_id": key, "secrets": secrets}
