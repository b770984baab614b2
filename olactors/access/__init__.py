"""Private functions, invoke tokens and owners, kept in the shared state dir.

* :class:`AccessState` (:mod:`._state`): the ``tokens`` and ``owners``
  documents of the state directory (see :mod:`olactors.state`), cached per
  ``registry.cache_s``, and the admin operations that change them.
* :class:`AccessGate` (:mod:`._gate`): the per-call check, before any
  queueing: the function's access (its ol.yaml, through the code puller,
  cached like the code), its owner, and the caller's bearer token (the
  decision itself is :func:`olactors._access.check_access`).

The gate lives on the invocation API (:meth:`olactors.worker.Worker.invoke`,
``caller=``): the HTTP edge passes the ``Authorization`` header it received
(:class:`~olactors._access.HttpCaller`); the worker's own triggers pass a
:class:`~olactors._access.TrustedCaller` and need no token.
"""

from ._gate import AccessGate, Admission
from ._state import OWNERS_DOC, TOKENS_DOC, AccessState

__all__ = ["OWNERS_DOC", "TOKENS_DOC", "AccessGate", "AccessState", "Admission"]
