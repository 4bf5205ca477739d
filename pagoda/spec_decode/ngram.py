"""N-gram (prompt lookup) proposer: continue the text the way it continued before.

For ``n`` from ``prompt_lookup_max`` down to ``prompt_lookup_min``, the last ``n`` tokens of the
request (prompt + output) are searched for earlier in the same tokens; at the longest ``n`` that
matches, the tokens that followed the most recent earlier match are proposed (up to ``k``). Pure
host work over numpy arrays; no model, no state between steps.

Search: the earlier positions holding the last token are the only places a match can end; each
one's match length (up to ``prompt_lookup_max``) is extended backwards over those candidates alone,
a few vectorized compares of a short array instead of one scan of every window per ``n`` (it runs on
the critical path between two verify steps). ``tests/test_spec_decode.py`` checks it against that scan.
"""

from __future__ import annotations

import numpy as np


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n

    def propose_one(self, tokens: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens continuing ``tokens`` (empty when no n-gram in range recurs)."""
        L = len(tokens)
        if k <= 0 or L < self.min_n + 1:
            return []
        arr = np.asarray(tokens, dtype=np.int64)
        max_n = min(self.max_n, L - 1)
        # ends: earlier positions e (e <= L - 2) where a match of the suffix can end (arr[e] == the last token)
        ends = np.flatnonzero(arr[: L - 1] == arr[L - 1])
        if not len(ends):
            return []
        length = np.ones(len(ends), dtype=np.int64)  # each end's match length, capped at max_n
        alive = np.ones(len(ends), dtype=bool)
        for i in range(1, max_n):
            alive &= ends >= i
            if not alive.any():
                break
            alive[alive] = arr[ends[alive] - i] == arr[L - 1 - i]
            length += alive
        n = int(length.max())
        if n < self.min_n:
            return []
        start = int(ends[length >= n].max()) + 1  # the most recent match of the longest n
        return arr[start : start + k].tolist()
