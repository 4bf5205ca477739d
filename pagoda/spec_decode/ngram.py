"""N-gram (prompt lookup) proposer: continue the text the way it continued before.

For ``n`` from ``prompt_lookup_max`` down to ``prompt_lookup_min``, the last ``n`` tokens of the
request (prompt + output) are searched for earlier in the same tokens; at the longest ``n`` that
matches, the tokens that followed the most recent earlier match are proposed (up to ``k``). Pure
host work over numpy arrays; no model, no state between steps.

Search (:func:`suffix_matches`, shared with suffix decoding): the earlier positions holding the last token
are the only places a match can end; they are narrowed one token further back at a time to those that still
match (:func:`longest_matches`), a few vectorized compares of ever shorter arrays instead of one scan of
every window per ``n`` (it runs on the critical path between two verify steps). ``tests/test_spec_decode.py``
checks it against that scan.
"""

from __future__ import annotations

import numpy as np


def longest_matches(hay: np.ndarray, ends: np.ndarray, tail: np.ndarray, lo: int = 0) -> tuple[int, np.ndarray]:
    """Among the positions ``ends`` (ascending, each with ``hay[e] == tail[0]``; ``tail``: a request's last tokens,
    nearest first), the longest run ``hay[e], hay[e - 1], ... == tail[0], tail[1], ...`` not reaching below ``lo``
    (at most ``len(tail)``), and the ends that reach it, ascending: ``(0, empty)`` for no ends. The candidates are
    narrowed one token further back at a time, so the work is the candidates that still match at each depth, not
    ``len(ends) x len(tail)`` (a common last token has thousands of ends in a long context, nearly all gone after a
    token or two)."""
    if not len(ends):
        return 0, ends
    n, cur = 1, ends
    for d in range(1, len(tail)):
        idx = cur - d
        keep = cur[(idx >= lo) & (hay[np.maximum(idx, lo)] == tail[d])]
        if not len(keep):
            break
        n, cur = d + 1, keep
    return n, cur


def suffix_matches(arr: np.ndarray, max_n: int) -> tuple[int, np.ndarray]:
    """Where the end of ``arr`` recurs earlier: the longest match of its last tokens (at most ``max_n``) that ends at
    some ``e <= len - 2``, and every such ``e`` (:func:`longest_matches`); ``(0, empty)`` when the last token does not
    occur earlier."""
    L = len(arr)
    ends = np.flatnonzero(arr[: L - 1] == arr[L - 1]) if L >= 2 else np.zeros(0, dtype=np.int64)
    depth = max(1, min(max_n, L - 1))
    return longest_matches(arr, ends, arr[L - 1 - np.arange(depth)])


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n

    def propose_one(self, tokens: list[int] | np.ndarray, k: int, shared: bool = True) -> list[int]:
        """Up to ``k`` tokens continuing ``tokens`` (empty when no n-gram in range recurs; ``tokens`` are the only
        source, whatever ``shared``)."""
        L = len(tokens)
        if k <= 0 or L < self.min_n + 1:
            return []
        arr = np.asarray(tokens, dtype=np.int64)
        n, ends = suffix_matches(arr, self.max_n)
        if n < self.min_n:
            return []
        start = int(ends[-1]) + 1  # the most recent match of the longest n
        return arr[start : start + k].tolist()
