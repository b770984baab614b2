"""The worker's own state that must hold alike on every worker: secrets, grants,
tokens, owners (kept in a state directory several workers may share).

:class:`StateDir` changes documents atomically under a lock; :class:`CachedDoc`
is one document as this worker last saw it, re-checked at most once per period
(``registry.cache_s``), so a change made through any worker sharing the
directory is seen by every other within that period."""

from ._cache import CachedDoc, StateUnavailable
from ._dir import Stamp, StateDir, StateDoc, state_path

__all__ = ["CachedDoc", "Stamp", "StateDir", "StateDoc", "StateUnavailable", "state_path"]
