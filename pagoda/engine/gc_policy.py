"""The garbage collector's view of a started process: everything built at start-up is frozen.

A serving process allocates millions of long-lived objects while it starts (torch's and transformers' modules,
the model, the tokenizer, the CUDA graphs' bookkeeping) and then runs a loop of short-lived ones. Python's
oldest-generation collections walk every tracked object, so each one costs time in proportion to the start-up
heap and lands on whichever step or request happens to allocate at that moment. ``gc.freeze()`` moves the heap
that exists when start-up ends into a permanent generation that collections skip (vLLM does the same in its
engine core and API server). Objects made later are collected as before; the frozen ones are never freed, which
is what start-up objects of a serving process are anyway. ``PAGODA_GC_FREEZE=0`` leaves the collector as it is
(an A/B switch).
"""

from __future__ import annotations

import gc
import logging
import time

from pagoda import envs

logger = logging.getLogger("pagoda")


def freeze_startup_heap(where: str) -> None:
    """Collect once, then freeze every object left (called once a process has started; ``where`` names it in the
    debug log line)."""
    if not envs.gc_freeze_enabled():
        return
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    logger.debug("%s: froze %d start-up objects out of garbage collection in %.2f s", where, gc.get_freeze_count(),
                 time.perf_counter() - t0)
