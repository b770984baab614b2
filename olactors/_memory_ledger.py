"""The memory pool's book-keeping and wait order (pure).

Every sandbox reserves its memory limit before it is created.  A
reservation that does not fit waits in a strict FIFO queue: a release grants
waiters from the head while the head fits, and a later, smaller request never
overtakes the head.  That makes the order starvation-free — a large
reservation cannot be passed over forever by a stream of small ones — at the
price of head-of-line blocking, which the evictor resolves by freeing memory
for the head (it sees ``waiting_mb``).  A request larger than the whole pool
can never be granted and is refused at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class MemoryLedger:
    __slots__ = ("total_mb", "used_mb", "peak_used_mb", "_waiting")

    def __init__(self, total_mb: int) -> None:
        self.total_mb = total_mb
        self.used_mb = 0
        self.peak_used_mb = 0  # the most ever reserved at once (never above total_mb)
        self._waiting: OrderedDict[Hashable, int] = OrderedDict()

    @property
    def free_mb(self) -> int:
        return self.total_mb - self.used_mb

    @property
    def waiting_mb(self) -> int:
        return sum(self._waiting.values())

    @property
    def waiters(self) -> int:
        return len(self._waiting)

    def head_need_mb(self) -> int:
        """Memory the head waiter still lacks (0 when nobody waits)."""
        for mb in self._waiting.values():
            return max(0, mb - self.free_mb)
        return 0

    def reserve(self, token: Hashable, mb: int) -> bool:
        """Grant now (True) or queue ``token`` behind earlier waiters (False)."""
        if mb > self.total_mb:
            raise ValueError(f"{mb} MB exceeds the whole memory pool ({self.total_mb} MB)")
        if not self._waiting and mb <= self.free_mb:
            self._take(mb)
            return True
        self._waiting[token] = mb
        return False

    def withdraw(self, token: Hashable) -> bool:
        """Remove a waiter (e.g. cancelled); True if it was waiting.  May unblock others:
        call ``grant_waiters`` afterwards."""
        return self._waiting.pop(token, None) is not None

    def release(self, mb: int) -> None:
        if mb > self.used_mb:
            raise ValueError(f"releasing {mb} MB but only {self.used_mb} MB are reserved")
        self.used_mb -= mb

    def grant_waiters(self) -> list[Hashable]:
        """Grant waiters from the head while the head fits; the granted tokens, in order."""
        granted = []
        while self._waiting:
            token, mb = next(iter(self._waiting.items()))
            if mb > self.free_mb:
                break
            del self._waiting[token]
            self._take(mb)
            granted.append(token)
        return granted

    def _take(self, mb: int) -> None:
        self.used_mb += mb
        if self.used_mb > self.total_mb:  # unreachable by construction; checked all the same
            raise AssertionError(f"memory pool over-committed: {self.used_mb} > {self.total_mb} MB")
        self.peak_used_mb = max(self.peak_used_mb, self.used_mb)
