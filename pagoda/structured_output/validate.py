"""Admission check of a structured-output spec: it must build, within a time limit.

Runs in the front end, before anything is queued: the spec is turned into the backend's
tokenizer-free grammar (JSON schema / regex / EBNF / Lark parsing and conversion), where every
invalid schema, regex or grammar fails. A build that takes longer than
:data:`VALIDATE_TIMEOUT_S` is refused too (the worker thread is left to finish in the background;
at most :data:`_WORKERS` such builds run at once, and an identical spec is not built again).
Valid keys are remembered, so a repeated spec costs one dictionary lookup.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from pagoda.errors import ValidationError
from pagoda.structured_output.params import FIELD, GrammarKey, StructuredOutputsConfig, StructuredOutputsParams

VALIDATE_TIMEOUT_S = 5.0
"""Longest a spec may take to build at admission; longer is a 400."""
_WORKERS = 2
_CACHE_SIZE = 1024

_pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="pagoda-grammar-check")
_lock = threading.Lock()
_checked: OrderedDict[GrammarKey, Future[None]] = OrderedDict()
_started = False
_LIB_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")


def start_workers() -> None:
    """Start the pool's :data:`_WORKERS` threads now, once (a serving process at start-up). A pool spawns its threads
    on demand, so without this a server's thread count would depend on which requests it has seen, and with several
    API servers on which of them the first structured request reached."""
    global _started
    with _lock:
        if _started:
            return
        barrier = threading.Barrier(_WORKERS)
        for fut in [_pool.submit(barrier.wait, 30.0) for _ in range(_WORKERS)]:
            fut.result()  # each waits for the other: the pool had to start a thread for each
        _started = True


def _build(key: GrammarKey) -> None:
    from pagoda.structured_output.xgrammar_backend import build_grammar

    build_grammar(key)


def validate(params: StructuredOutputsParams, cfg: StructuredOutputsConfig,
             timeout_s: float = VALIDATE_TIMEOUT_S) -> None:
    """Raise :class:`ValidationError` (field ``structured_outputs``) unless ``params`` builds in time."""
    key = GrammarKey.of(params, cfg)
    with _lock:
        fut = _checked.get(key)
        if fut is None:
            fut = _checked[key] = _pool.submit(_build, key)
            while len(_checked) > _CACHE_SIZE:
                _checked.popitem(last=False)
        else:
            _checked.move_to_end(key)
    try:
        fut.result(timeout=timeout_s)
    except FutureTimeout:
        raise ValidationError(f"{{parameter}}: the {key.kind} constraint took longer than {timeout_s:g} s to "
                              f"compile; simplify it.", FIELD) from None
    except Exception as e:  # the library's parse error
        with _lock:
            _checked.pop(key, None)
        msg = _LIB_PREFIX.sub("", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise ValidationError(f"{{parameter}}: invalid {key.kind} constraint: {msg}", FIELD) from None
