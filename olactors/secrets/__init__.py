"""Secrets: encrypted at rest in the state directory, granted per function by
the admin, delivered only into granted leaves at ``/run/secrets/<NAME>``.

:class:`SecretStore` keeps them (the ``secrets`` state document, values sealed
with AES-256-GCM under the key file ``secrets.key_file``); the sandbox layer
mounts them (``olactors/sock/_secretfs.py``); :mod:`olactors._secrets` holds
the pure parts (names, limits, the granted set, redaction)."""

from ._keyfile import DEFAULT_KEY_FILE, key_file_path, read_key
from ._store import SecretStore

__all__ = ["DEFAULT_KEY_FILE", "SecretStore", "key_file_path", "read_key"]
