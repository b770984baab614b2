"""AES-256-GCM for secret values (``cryptography``'s AEAD, nothing home-made).

Each value gets a fresh random 96-bit nonce; the associated data binds the
ciphertext to the secret's name and version, so a value moved to another
name, or an older version put back in place of a newer one, fails to
decrypt instead of being served.  The key's id (a hash of the key, never
the key) is stored beside the values, so a worker with a different key
file refuses to read or add to them with a clear error.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._errors import SecretKeyUnusable

KEY_BYTES = 32
NONCE_BYTES = 12


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (a domain-separated SHA-256 prefix)."""
    return hashlib.sha256(b"olactors secrets key id\0" + key).hexdigest()[:16]


def _associated(name: str, version: int) -> bytes:
    return f"olactors-secret\0{name}\0{version}".encode()


def encrypt(key: bytes, name: str, version: int, value: bytes) -> tuple[str, str]:
    """``(nonce, ciphertext)`` of ``value``, both base64 text."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, value, _associated(name, version))
    return base64.b64encode(nonce).decode(), base64.b64encode(sealed).decode()


def decrypt(key: bytes, name: str, version: int, nonce: str, ciphertext: str) -> bytes:
    """The value; :class:`SecretKeyUnusable` if ``key`` did not seal it (or it was altered)."""
    try:
        raw_nonce = base64.b64decode(nonce, validate=True)
        sealed = base64.b64decode(ciphertext, validate=True)
        return AESGCM(key).decrypt(raw_nonce, sealed, _associated(name, version))
    except (InvalidTag, ValueError) as exc:
        raise SecretKeyUnusable(
            f"secret {name!r} (version {version}) cannot be decrypted with this worker's key "
            f"(key id {key_id(key)}): a different key file, or the stored value was altered"
        ) from exc
