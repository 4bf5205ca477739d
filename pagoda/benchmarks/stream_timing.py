"""Per-token timing of one streamed completion, as ``pagoda bench serve`` measures it.

A stream's chunks do not map one to one onto tokens: a server may send a chunk with no
token (the chat role announcement, the final usage report), hold back a token whose text
is empty or could start a stop string and send it with a later one, or send several
tokens at once (speculative decoding, a slow reader). So each chunk is first counted in
tokens (``chunk_tokens``), then timed (``TokenTimeline``):

* TTFT is the time to the first chunk that carries at least one token;
* a later chunk that carries ``k`` tokens, ``g`` seconds after the previous token-carrying
  chunk, adds ``k`` inter-token latencies of ``g / k`` (so the ITLs of a request sum to
  its last-token time minus its TTFT, and their mean is its time per output token when
  the first chunk held one token; tokens delivered with the first one have no gap of
  their own);
* a request's latency (E2EL) is the time to its last token-carrying chunk; its TPOT is
  ``(latency - TTFT) / (output tokens - 1)``, as vLLM's benchmark computes it;
* a request that received no token has no TTFT, ITL or TPOT (``None``), and one whose
  tokens all came in one chunk has no TPOT: neither is ever reported as a zero latency.

Token counts per chunk come, in this order of preference, from the cumulative
``usage.completion_tokens`` the server adds to every chunk when asked
(``stream_options.continuous_usage_stats``, pagoda and vLLM), from the chunk's logprobs
(one entry per token), or, as vLLM's benchmark does, one token per chunk with a choice
(a chat chunk that only announces the role counts none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class UsageCursor:
    """Cumulative completion tokens reported so far by ``continuous_usage_stats`` chunks."""

    completion_tokens: int = 0
    continuous: bool = False  # True once a chunk with choices carried usage


def chunk_tokens(obj: dict[str, Any], chat: bool, cursor: UsageCursor) -> int:
    """Tokens the SSE chunk ``obj`` delivers (see the module docstring); updates ``cursor``."""
    choices = obj.get("choices") or []
    usage = obj.get("usage") or {}
    total = usage.get("completion_tokens")
    if choices and isinstance(total, int):
        cursor.continuous = True
        new = max(0, total - cursor.completion_tokens)
        cursor.completion_tokens = max(total, cursor.completion_tokens)
        return new
    if not choices or cursor.continuous:  # a usage-only chunk, or a server that reports usage per chunk
        return 0
    return sum(_choice_tokens(ch, chat) for ch in choices)


def _choice_tokens(choice: dict[str, Any], chat: bool) -> int:
    logprobs = choice.get("logprobs") or {}
    entries = logprobs.get("content") if chat else logprobs.get("tokens")
    if entries:
        return len(entries)
    if chat:
        delta = choice.get("delta") or {}
        if "role" in delta and not delta.get("content"):
            return 0  # the role announcement carries no token
    return 1


def chunk_text(obj: dict[str, Any], chat: bool) -> str:
    """The text the chunk adds (all choices)."""
    parts = []
    for ch in obj.get("choices") or []:
        text = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
        parts.append(text or "")
    return "".join(parts)


@dataclass
class TokenTimeline:
    """Arrival times of one request's tokens, relative to when it was sent.

    Invariants: ``ttft`` is None exactly when no token arrived; ``len(itl)`` equals the
    tokens that arrived after the first token-carrying chunk; ``sum(itl) == last - ttft``
    (up to rounding); every entry is the gap of a chunk divided by its token count.
    """

    start: float
    tokens: int = 0
    ttft: float | None = None
    last: float | None = None  # time (since start) of the last token-carrying chunk
    itl: list[float] = field(default_factory=list)
    # (gap since the previous token-carrying chunk, tokens) of each token-carrying chunk after the first
    chunks: list[tuple[float, int]] = field(default_factory=list)

    def add(self, now: float, k: int) -> None:
        """A chunk that arrived at ``now`` (same clock as ``start``) and carried ``k`` tokens."""
        if k <= 0:
            return
        t = now - self.start
        if self.ttft is None:
            self.ttft = t
        else:
            assert self.last is not None
            gap = t - self.last
            self.itl.extend([gap / k] * k)
            self.chunks.append((gap, k))
        self.last = t
        self.tokens += k

    @property
    def latency(self) -> float | None:
        """Time to the last token (E2EL), None when no token arrived."""
        return self.last


def tpot(ttft: float | None, latency: float | None, output_tokens: int) -> float | None:
    """vLLM's time per output token after the first; None when it cannot be measured (fewer
    than 2 tokens, or all of them in the first chunk, which would read as zero)."""
    if ttft is None or latency is None or output_tokens < 2 or latency <= ttft:
        return None
    return (latency - ttft) / (output_tokens - 1)


def percentile(xs: list[float], q: float) -> float | None:
    """The ``q``-th percentile of ``xs`` with linear interpolation (numpy's default); None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)
