"""Streaming-under-load figures of ``pagoda bench serve`` (issue 21, item 3).

* ``ttft_p99_over_p50``, ``itl_p99_over_p50``: tail over median of the time to first token and of the
  inter-token latency (stream_timing.py defines both); ``ttft_p50_over_tpot_p50``: the median TTFT in
  units of the median time per output token (about one engine step as a streaming client sees it).
* **Burst chunks.** A token-carrying chunk after a request's first one arrived *in a burst* when its
  gap after that request's previous token-carrying chunk is below ``burst_fraction`` (default 0.25) x
  the request's own TPOT. Without speculative decoding an engine step gives a request at most one
  token, so such a chunk was held back and released with the one before it: the engine, output
  processing, detokenization or the HTTP stream fell behind. The request's TPOT (its mean token
  period) is the yardstick because bunching does not change it, where it drags a median gap down.
  ``burst_chunks`` counts them, ``token_chunks`` the chunks that could be (token-carrying, after the
  first), ``burst_chunk_share`` is their ratio.
* ``multi_token_chunks``: token-carrying chunks after a request's first that carry more than one token
  (tokens coalesced before sending; with speculative decoding also accepted proposals).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pagoda.benchmarks.stream_timing import percentile

DEFAULT_BURST_FRACTION = 0.25


class _Timed(Protocol):
    ok: bool
    ttft: float | None
    chunks: list[tuple[float, int]]

    @property
    def tpot(self) -> float | None: ...


def burst_chunks(chunks: Sequence[tuple[float, int]], tpot_s: float | None, fraction: float) -> int:
    """Chunks of one request whose gap is below ``fraction`` x its TPOT (0 when it has no TPOT)."""
    if tpot_s is None:
        return 0
    return sum(1 for gap, _ in chunks if gap < fraction * tpot_s)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def load_figures(results: Sequence[_Timed], itl: list[float], fraction: float) -> dict[str, Any]:
    """The figures of the module docstring over the successful requests (``itl``: every request's ITLs)."""
    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpots = [t for r in ok if (t := r.tpot) is not None]
    t50, t99 = percentile(ttft, 50), percentile(ttft, 99)
    i50, i99 = percentile(itl, 50), percentile(itl, 99)
    token_chunks = sum(len(r.chunks) for r in ok)
    bursts = sum(burst_chunks(r.chunks, r.tpot, fraction) for r in ok)
    return {
        "ttft_p50_ms": None if t50 is None else 1000 * t50,
        "ttft_p99_ms": None if t99 is None else 1000 * t99,
        "ttft_p99_over_p50": _ratio(t99, t50),
        "itl_p50_ms": None if i50 is None else 1000 * i50,
        "itl_p99_ms": None if i99 is None else 1000 * i99,
        "itl_p99_over_p50": _ratio(i99, i50),
        "ttft_p50_over_tpot_p50": _ratio(t50, percentile(tpots, 50)),
        "burst_fraction": fraction,
        "token_chunks": token_chunks,
        "burst_chunks": bursts,
        "burst_chunk_share": bursts / token_chunks if token_chunks else None,
        "multi_token_chunks": sum(1 for r in ok for _, k in r.chunks if k > 1),
    }
