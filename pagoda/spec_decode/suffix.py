"""Suffix decoding (``method: suffix``): continue the text the way it most often continued before, as far as the
match earns.

The idea is Suffix Decoding's (Oliaro et al., arXiv 2411.04975; vLLM's ``method: "suffix"``), written here over
token buffers rather than suffix trees. Two sources, as there: the request's own tokens (prompt + output), and the
outputs of earlier finished requests (:class:`SuffixCorpus`, ``suffix_decoding_max_cached_requests`` of them, the
oldest dropped first; 0: none). From each source:

1. The longest suffix of the request's tokens that occurs in the source, up to ``max_depth`` tokens
   (:func:`~pagoda.spec_decode.ngram.longest_matches`): its length ``n`` and every occurrence of that length.
2. At most ``min(k, floor(max_spec_factor * n))`` tokens are proposed: a long match earns a long draft, a
   one-token match a short one.
3. The draft follows the occurrences' continuations token by token: the token that most of them continue with
   (a tie: the one of the most recent occurrence), keeping only the occurrences that agree. Each token's
   estimated probability is its share of the occurrences that still continue; their running product must stay
   at or above ``min_token_prob``, else the draft stops before that token. A draft's score is the sum of the
   running products (its expected accepted length); the source with the higher score proposes (a tie: the
   request's own).

Differences from Arctic Inference's trees, by design: the match indexes positions, so ``max_depth`` bounds the match
alone and a draft after a long match is not cut to ``max_depth - n`` tokens (``num_speculative_tokens`` caps it);
the corpus looks up at most :data:`SuffixCorpus.MAX_CANDIDATES` most recent occurrences of the last token.

Host work over numpy arrays, deterministic for given tokens and corpus. ``tests/test_spec_decode.py`` checks the
request's own drafts against a direct count over every occurrence.
"""

from __future__ import annotations

from array import array
from collections import deque

import numpy as np

from pagoda.spec_decode.ngram import longest_matches, suffix_matches


def _walk(hay: np.ndarray, nexts: np.ndarray, cap: int, min_prob: float) -> tuple[list[int], float]:
    """The draft along the continuations in ``hay`` that start at ``nexts`` (ascending; a continuation ends at a
    negative separator or the end of ``hay``): (tokens, expected accepted length). Step 3 of the module docstring."""
    out: list[int] = []
    prob, score, L = 1.0, 0.0, len(hay)
    while len(out) < cap:
        nexts = nexts[nexts < L]  # occurrences whose continuation is known
        toks = hay[nexts]
        if len(toks) and toks.min() < 0:
            nexts, toks = nexts[toks >= 0], toks[toks >= 0]
        if not len(nexts):
            break
        if len(nexts) == 1:  # one occurrence left: its share stays 1, copy the rest of the cap
            s = int(nexts[0])
            seg = hay[s : s + cap - len(out)]
            stop = np.flatnonzero(seg < 0)
            seg = seg[: stop[0]] if len(stop) else seg
            out += seg.tolist()
            score += prob * len(seg)
            break
        if (toks == toks[0]).all():  # every occurrence continues alike: its share is 1
            out.append(int(toks[0]))
            score += prob
            nexts = nexts + 1
            continue
        vals, inv, counts = np.unique(toks, return_inverse=True, return_counts=True)
        top = int(counts.max())
        prob *= top / len(nexts)
        if prob < min_prob:
            break
        best = int(inv[np.flatnonzero(counts[inv] == top)[-1]])  # a tie: the most recent occurrence's token
        tok = int(vals[best])
        out.append(tok)
        score += prob
        nexts = nexts[toks == tok] + 1
    return out, score


_SHORT_OUTPUT = 2048
"""Outputs up to this many tokens are indexed token by token, longer ones a distinct token at a time."""


class SuffixCorpus:
    """Outputs of finished requests, the global source of suffix decoding: at most ``max_requests`` and
    :data:`MAX_TOKENS` tokens (the oldest dropped first), each followed by a -1 separator, with each token's
    positions indexed.

    Positions are absolute (they count every token ever added), so nothing in the index moves when old outputs go:
    dropping an output trims only its own tokens' position lists (a prefix of each, the oldest positions), and the
    buffer keeps the positions from :attr:`_base` on, re-based by one copy of what is kept when dropped outputs fill
    half of it. Work per added output is proportional to that output and the one it drops, never to the corpus
    (a rebuild of a 2M-token index in Python took ~0.7 s, a step's pause)."""

    MAX_CANDIDATES = 256
    """Occurrences of a request's last token looked at, the most recent first (bounds a step's work on common
    tokens)."""
    MAX_TOKENS = 1 << 21
    """Tokens kept at most, whatever ``max_requests`` allows (oldest outputs dropped first): at most ~16 MB of index
    (8-byte positions) and ~16 MB of buffer (kept and not yet re-based positions)."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self._buf = np.full(4096, -1, dtype=np.int32)  # positions [_base, _end) of the corpus
        self._base = 0
        self._end = 0
        self._spans: deque[tuple[int, int]] = deque()  # each kept output's [start, end) (absolute)
        self._kept = 0  # tokens in the kept outputs
        self._index: dict[int, array] = {}  # token -> its kept positions (absolute, ascending)

    @property
    def floor(self) -> int:
        """The first position of the oldest kept output (absolute; earlier positions are dropped)."""
        return self._spans[0][0] if self._spans else self._end

    @property
    def num_requests(self) -> int:
        return len(self._spans)

    @property
    def held(self) -> int:
        """Positions the buffer holds (the kept outputs, and dropped ones not yet re-based away)."""
        return self._end - self._base

    @property
    def indexed(self) -> int:
        """Positions in the index (the kept outputs' tokens: dropped outputs leave none)."""
        return sum(len(lst) for lst in self._index.values())

    def add(self, tokens: list[int]) -> None:
        """Keep a finished request's output tokens (dropping the oldest outputs past ``max_requests`` or
        :data:`MAX_TOKENS`)."""
        if self.max_requests <= 0 or not tokens:
            return
        self._append(np.asarray(tokens[-self.MAX_TOKENS:], dtype=np.int32))
        while len(self._spans) > self.max_requests or self._kept > self.MAX_TOKENS:
            self._drop_oldest()
        if self.floor - self._base > max(4096, (self._end - self._base) // 2):
            self._rebase()

    def _append(self, tokens: np.ndarray) -> None:
        n, start = len(tokens), self._end
        if start - self._base + n + 1 > len(self._buf):
            if self.floor > self._base:  # the dropped outputs go before the buffer grows
                self._rebase()
            at = start - self._base
            if at + n + 1 > len(self._buf):
                grown = np.full(max(2 * len(self._buf), at + n + 1), -1, dtype=np.int32)
                grown[:at] = self._buf[:at]
                self._buf = grown
        at = start - self._base
        self._buf[at : at + n] = tokens
        self._buf[at + n] = -1
        index = self._index
        if n <= _SHORT_OUTPUT:  # one dict lookup a token: the cheapest in Python for a few hundred
            for p, t in enumerate(tokens.tolist(), start):
                lst = index.get(t)
                if lst is None:
                    lst = index[t] = array("q")
                lst.append(p)
        else:  # a long output: one pass a distinct token
            order = np.argsort(tokens, kind="stable")  # each token's positions, ascending
            toks = tokens[order]
            firsts = np.flatnonzero(np.r_[True, toks[1:] != toks[:-1]])
            pos = (order + start).astype(np.int64)
            for a, b in zip(firsts.tolist(), [*firsts[1:].tolist(), n], strict=True):
                t = int(toks[a])
                lst = index.get(t)
                if lst is None:
                    lst = index[t] = array("q")
                lst.frombytes(pos[a:b].tobytes())
        self._spans.append((start, start + n))
        self._kept += n
        self._end = start + n + 1

    def _drop_oldest(self) -> None:
        """The oldest output stops being a source: each of its tokens' lists loses its first entries, one for each
        time the token occurs in it (the oldest kept positions of every list are that output's)."""
        a, b = self._spans.popleft()
        self._kept -= b - a
        index = self._index
        toks, counts = np.unique(self._buf[a - self._base : b - self._base], return_counts=True)
        for t, c in zip(toks.tolist(), counts.tolist(), strict=True):
            lst = index[t]
            if c == len(lst):
                del index[t]
            else:
                del lst[:c]

    def _rebase(self) -> None:
        """The buffer from the floor on (positions and the index unchanged)."""
        floor = self.floor
        kept = self._buf[floor - self._base : self._end - self._base]
        self._buf = np.full(max(4096, 2 * len(kept)), -1, dtype=np.int32)
        self._buf[: len(kept)] = kept
        self._base = floor

    def draft(self, tail: np.ndarray, k: int, max_spec_factor: float, min_prob: float) -> tuple[list[int], float]:
        """The corpus's draft for a request whose last tokens are ``tail`` (nearest first): (tokens, score)."""
        pos = self._index.get(int(tail[0]))
        if pos is None:
            return [], 0.0
        base = self._base
        ends = np.frombuffer(pos, dtype=np.int64)[-self.MAX_CANDIDATES:] - base  # kept positions only (_drop_oldest)
        hay = self._buf[: self._end - base]
        n, at = longest_matches(hay, ends, tail, self.floor - base)
        cap = min(k, int(max_spec_factor * n + 1e-9))
        return _walk(hay, at + 1, cap, min_prob)


class SuffixProposer:
    def __init__(self, max_depth: int, max_spec_factor: float, min_token_prob: float,
                 corpus: SuffixCorpus | None = None) -> None:
        self.max_depth = max_depth
        self.max_spec_factor = max_spec_factor
        self.min_token_prob = min_token_prob
        self.corpus = corpus

    def propose_one(self, tokens: list[int] | np.ndarray, k: int, shared: bool = True) -> list[int]:
        """Up to ``k`` tokens continuing ``tokens``: the better-scored of the request's own draft and the corpus's
        (empty when neither source holds the last token, or the match earns no draft; ``shared`` False: the
        request's own draft alone)."""
        L = len(tokens)
        if k <= 0 or L < 1:
            return []
        arr = np.asarray(tokens, dtype=np.int64)
        own, score = self._own(arr, k)
        if shared and self.corpus is not None and self.corpus.num_requests:
            tail = arr[L - 1 - np.arange(min(self.max_depth, L))]
            other, other_score = self.corpus.draft(tail, k, self.max_spec_factor, self.min_token_prob)
            if other_score > score:
                return other
        return own

    def _own(self, arr: np.ndarray, k: int) -> tuple[list[int], float]:
        n, ends = suffix_matches(arr, self.max_depth)
        if not len(ends):
            return [], 0.0
        cap = min(k, int(self.max_spec_factor * n + 1e-9))  # floor, without 2.3 * 10 -> 22
        return _walk(arr, ends + 1, cap, self.min_token_prob)  # continuations, oldest first
