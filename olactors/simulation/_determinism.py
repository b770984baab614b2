"""What makes a simulation reproducible: trio's scheduler, seeded.

trio shuffles each batch of runnable tasks with a module-level
``random.Random``; under Hypothesis it first sorts the batch by task
creation order, which makes the shuffle a pure function of the seed.
:func:`deterministic_scheduler` switches that mode on and seeds the shuffle
for the duration of a ``trio.run`` (and restores both afterwards).  With
``MockClock`` (no wall clock), no threads and no I/O, the same seed then
replays the same interleaving, event for event.  The attributes are trio
internals, checked at entry so a trio upgrade that moves them fails loudly
instead of silently losing determinism.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import trio
import trio._core._run as trio_run


@contextmanager
def deterministic_scheduler(seed: int) -> Iterator[None]:
    """Seed trio's scheduler with ``seed`` for the ``trio.run`` inside this block."""
    if not hasattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING") or not isinstance(
        getattr(trio_run, "_r", None), random.Random
    ):
        raise RuntimeError(
            f"trio {trio.__version__} has no seedable scheduler "
            "(trio._core._run._r / _ALLOW_DETERMINISTIC_SCHEDULING)"
        )
    saved_flag = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = trio_run._r.getstate()
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio_run._r.seed(f"olactors-scheduler:{seed}")
    try:
        yield
    finally:
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag  # type: ignore[misc]
        trio_run._r.setstate(saved_state)
