"""N-gram (prompt lookup) proposer: continue the text the way it continued before.

For ``n`` from ``prompt_lookup_max`` down to ``prompt_lookup_min``, the last ``n`` tokens of the
request (prompt + output) are searched for earlier in the same tokens; at the longest ``n`` that
matches, the tokens that followed the most recent earlier match are proposed (up to ``k``). Pure
host work over numpy arrays; no model, no state between steps.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


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
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            # Windows starting at 0 .. L-n-1: every earlier occurrence, never the suffix itself.
            windows = sliding_window_view(arr[:-1], n)
            hits = np.flatnonzero((windows == arr[L - n:]).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + n
                return arr[start : start + k].tolist()
        return []
