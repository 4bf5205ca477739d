"""N-gram (prompt lookup) proposer: continue the text the way it continued before.

For ``n`` from ``prompt_lookup_max`` down to ``prompt_lookup_min``, the last ``n`` tokens of the
request (prompt + output) are searched for earlier in the same tokens; at the longest ``n`` that
matches, the tokens that followed the most recent earlier match are proposed (up to ``k``). Pure
host work over numpy arrays; no model, no state between steps.

Search (:func:`suffix_matches`, shared with suffix decoding): the earlier positions holding the last token
are the only places a match can end; each one's match length (up to the longest asked for) is extended
backwards over those candidates alone, a few vectorized compares of a short array instead of one scan of
every window per ``n`` (it runs on the critical path between two verify steps). ``tests/test_spec_decode.py``
checks it against that scan.
"""

from __future__ import annotations

import numpy as np


def match_lengths(hay: np.ndarray, ends: np.ndarray, tail: np.ndarray, lo: int = 0) -> np.ndarray:
    """For each position ``e`` of ``ends`` (where ``hay[e] == tail[0]``), how many of ``hay[e], hay[e - 1], ...``
    equal ``tail[0], tail[1], ...`` (``tail``: the last tokens of a request, nearest first), not reaching below
    ``lo``. One gather of ``len(ends) x len(tail)`` tokens and the first mismatch of each, however long the matches
    run."""
    offs = np.arange(len(tail))
    idx = ends[:, None] - offs
    same = (hay[np.maximum(idx, lo)] == tail) & (idx >= lo)
    return np.where(same.all(axis=1), len(tail), same.argmin(axis=1))  # the leading run of equal tokens


def suffix_matches(arr: np.ndarray, max_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the end of ``arr`` recurs earlier: ``(ends, lengths)``, ``ends`` every position ``e <= len - 2``
    with ``arr[e] == arr[-1]`` (ascending) and ``lengths[i]`` how many tokens up to ``ends[i]`` equal the
    last ones, capped at ``max_n`` (:func:`match_lengths`). Empty arrays when the last token does not occur earlier."""
    L = len(arr)
    ends = np.flatnonzero(arr[: L - 1] == arr[L - 1]) if L >= 2 else np.zeros(0, dtype=np.int64)
    depth = min(max_n, L - 1)
    if not len(ends) or depth <= 1:
        return ends, np.ones(len(ends), dtype=np.int64)
    return ends, match_lengths(arr, ends, arr[L - 1 - np.arange(depth)])


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n

    def propose_one(self, tokens: list[int], k: int, shared: bool = True) -> list[int]:
        """Up to ``k`` tokens continuing ``tokens`` (empty when no n-gram in range recurs; ``tokens`` are the only
        source, whatever ``shared``)."""
        L = len(tokens)
        if k <= 0 or L < self.min_n + 1:
            return []
        arr = np.asarray(tokens, dtype=np.int64)
        ends, length = suffix_matches(arr, self.max_n)
        if not len(ends):
            return []
        n = int(length.max())
        if n < self.min_n:
            return []
        start = int(ends[length >= n].max()) + 1  # the most recent match of the longest n
        return arr[start : start + k].tolist()
