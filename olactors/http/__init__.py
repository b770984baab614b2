"""HTTP surfaces: the public app (TCP: /run and /status) and the admin app (UNIX socket).

Both are quart-trio apps; :func:`olactors.serve.serve` runs them with hypercorn.
"""

from .admin import create_admin_app
from .public import create_public_app

__all__ = ["create_admin_app", "create_public_app"]
