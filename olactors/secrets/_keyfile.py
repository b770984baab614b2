"""The secrets key file (``secrets.key_file``): 32 random bytes, base64 text, mode 0600.

It is made on first need (the first ``secret set`` when no secret was ever
stored), race-free between workers that share it: the key is written to a
private temporary file and ``link()``-ed into place, which fails if another
worker got there first (its key is then used).  It is never made when
secrets already exist: a new key could not read them.

A key file must be a regular file owned by the worker's user with no group or
other permission bits (0600 or 0400); anything else is refused with
:class:`SecretKeyUnusable` naming the path, rather than used.  The default
is ``<worker>/keys/secrets.key``; it may live outside the worker dir (a
mounted Kubernetes secret, say with ``defaultMode: 0400``), and a worker dir
or state dir copied without it reveals no secret.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from .._errors import SecretKeyUnusable
from ._crypto import KEY_BYTES, new_key

#: The key file when ``secrets.key_file`` is empty (relative to the worker dir).
DEFAULT_KEY_FILE = Path("keys") / "secrets.key"


def key_file_path(location: str, worker_dir: Path) -> Path:
    """The key file ``secrets.key_file`` names: ``""`` is ``<worker>/keys/secrets.key``;
    ``~`` is expanded; a relative path is relative to the worker dir."""
    return worker_dir / (Path(location).expanduser() if location else DEFAULT_KEY_FILE)


def read_key(path: Path) -> bytes | None:
    """The key in ``path``; None if there is no such file.  Raises
    :class:`SecretKeyUnusable` for a file that is not a private key file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretKeyUnusable(f"secrets key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SecretKeyUnusable(f"secrets key file {path}: not a regular file")
        if st.st_uid != os.geteuid():
            raise SecretKeyUnusable(
                f"secrets key file {path}: owned by uid {st.st_uid}, not the worker's "
                f"uid {os.geteuid()}"
            )
        if st.st_mode & 0o077:
            raise SecretKeyUnusable(
                f"secrets key file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others "
                "read it; make it 0600 (chmod 600)"
            )
        text = f.read(1024)
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretKeyUnusable(
            f"secrets key file {path}: not a key (base64 text of {KEY_BYTES} bytes)"
        )
    return key


def create_key(path: Path) -> bytes:
    """Make the key file (mode 0600; its directory 0700 if made here) unless
    another process just did; return the key in place."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SecretKeyUnusable(f"secrets key file {path}: {exc.strerror}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, base64.b64encode(new_key()) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another worker made it first: use theirs
    except OSError as exc:
        raise SecretKeyUnusable(f"secrets key file {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    key = read_key(path)
    if key is None:
        raise SecretKeyUnusable(f"secrets key file {path}: vanished as it was made")
    return key
