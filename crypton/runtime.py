"""Process settings of a long-running exchange process: the cyclic garbage collector.

The dataflow holds every live wallet and book as Python objects (resting orders,
holds, levels), long-lived and almost free of reference cycles: what it allocates
per message is freed by reference counting the moment it is dropped. CPython's
default collector (a young collection every 700 container allocations, an old one
whenever a quarter of the old generation is new) walks that state again and again
for nothing: on a pre-filled inbox of 200,000 orders, 13% of the flow's thread was
``gc_collect_main`` (``py-spy --native``), and the flow carried 31,900 orders/s with
the default thresholds against 39,200 with ``LONG_LIVED`` (the pre-filled phase of
``python -m loadtest.bench_pipeline``).

A young collection still runs every ``LONG_LIVED[0]`` allocations, over what was
allocated since the last one and is still alive (a few milliseconds); cycles are
still collected, only later.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["LONG_LIVED", "tune_gc"]

LONG_LIVED: Final = (100_000, 50, 100)
"""``gc.set_threshold`` for a process whose state is large, long-lived and acyclic."""


def tune_gc() -> None:
    """Collect cyclic garbage as a long-running exchange process should (``LONG_LIVED``).

    >>> tune_gc(); gc.get_threshold() == LONG_LIVED
    True
    >>> gc.set_threshold(700, 10, 10)  # the default again, for the tests that follow
    """
    gc.set_threshold(*LONG_LIVED)
