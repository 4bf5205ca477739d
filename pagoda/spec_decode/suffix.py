"""Suffix decoding (``method: suffix``): continue the text the way it most often continued before, as far as the
match earns.

The idea is Suffix Decoding's (Oliaro et al., arXiv 2411.04975; vLLM's ``method: "suffix"``), written here over
the request's own tokens (prompt + output) without a suffix tree:

1. The longest suffix of the request's tokens that occurred earlier in them, up to ``max_depth`` tokens
   (:func:`~pagoda.spec_decode.ngram.suffix_matches`): its length ``n`` and every earlier occurrence.
2. At most ``min(k, floor(max_spec_factor * n))`` tokens are proposed: a long match earns a long draft, a
   one-token match a short one.
3. The draft follows the occurrences' continuations token by token: the token that most of them continue with
   (a tie: the one of the most recent occurrence), keeping only the occurrences that agree. Each token's
   estimated probability is its share of the occurrences that still continue; their running product must stay
   at or above ``min_token_prob``, else the draft stops before that token.

Differences from vLLM with Arctic Inference, by design: pagoda keeps no global tree of earlier requests'
outputs (``suffix_decoding_max_cached_requests`` must be 0: :mod:`pagoda.spec_decode.config`), and the match
indexes positions rather than a depth-limited tree, so ``max_depth`` bounds the match alone and a draft after a
long match is not cut to ``max_depth - n`` tokens (``num_speculative_tokens`` caps it).

Pure host work over numpy arrays, no state between steps; deterministic for given tokens.
``tests/test_spec_decode.py`` checks it against a direct count over every occurrence.
"""

from __future__ import annotations

import numpy as np

from pagoda.spec_decode.ngram import suffix_matches


class SuffixProposer:
    def __init__(self, max_depth: int, max_spec_factor: float, min_token_prob: float) -> None:
        self.max_depth = max_depth
        self.max_spec_factor = max_spec_factor
        self.min_token_prob = min_token_prob

    def propose_one(self, tokens: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens continuing ``tokens`` (empty when the last token never occurred before, or the
        match earns no draft)."""
        L = len(tokens)
        if k <= 0 or L < 2:
            return []
        arr = np.asarray(tokens, dtype=np.int64)
        ends, length = suffix_matches(arr, self.max_depth)
        if not len(ends):
            return []
        n = int(length.max())
        cap = min(k, int(self.max_spec_factor * n + 1e-9))  # floor, without 2.3 * 10 -> 22
        nexts = ends[length >= n] + 1  # where each occurrence's continuation starts (ascending: oldest first)
        out: list[int] = []
        prob = 1.0
        while len(out) < cap:
            nexts = nexts[nexts < L]  # occurrences whose continuation is known
            if not len(nexts):
                break
            if len(nexts) == 1:  # one occurrence left: its share stays 1, copy the rest of the cap
                s = int(nexts[0])
                out += arr[s : s + cap - len(out)].tolist()
                break
            toks = arr[nexts]
            if (toks == toks[0]).all():  # every occurrence continues alike: its share is 1
                out.append(int(toks[0]))
                nexts = nexts + 1
                continue
            vals, inv, counts = np.unique(toks, return_inverse=True, return_counts=True)
            top = int(counts.max())
            prob *= top / len(nexts)
            if prob < self.min_token_prob:
                break
            best = int(inv[np.flatnonzero(counts[inv] == top)[-1]])  # a tie: the most recent occurrence's token
            tok = int(vals[best])
            out.append(tok)
            nexts = nexts[toks == tok] + 1
        return out
