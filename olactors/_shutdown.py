"""The one deadline of a worker's shutdown."""

from __future__ import annotations

import math


class ShutdownDeadline:
    """When everything left of a shutdown must be done, in trio time.

    Unset (``math.inf``) until shutdown is requested; then set once, to
    ``server.shutdown_timeout_s`` after the request, and afterwards only ever
    brought forward (a cancelled serve skips what is left of the grace).
    Every stage of a shutdown waits until this same deadline at most: the
    in-flight HTTP requests, the queued calls, the instances' stop.  None adds
    a timeout of its own; past the deadline what is left is cancelled (and
    sandboxes destroyed, which is cleanup and bounded by itself).
    """

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = math.inf

    @property
    def requested(self) -> bool:
        return self.at != math.inf

    def set(self, at: float) -> None:
        """Shut down by ``at`` (or by the earlier deadline already set)."""
        self.at = min(self.at, at)
