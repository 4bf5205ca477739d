"""CUDA graphs for mixed steps: prompt chunks of several requests, with or without decodes beside
them, up to the largest token bucket (:func:`mixed_buckets`: 512 tokens, or up to 2,048 with a larger step
budget); one graph per token bucket, static buffers, padded replay.

Why: at 64 streaming clients a new request's prompt joins the running decodes in one step. Run
eagerly such a step is bound by its host launches (RESULTS.md, H200, 8B shape: ~400 tokens took
22 ms eager against 5.6 ms for a decode-graph step), and those steps are the inter-token latency's
p99 (issue 21 item 3).

How: the graph of bucket ``N`` takes ``T <= N`` tokens of ``r <= R = min(N, max_num_seqs)``
requests, in any mix of query lengths. Everything the kernels need lives on the device:
``query_start_loc`` (``R + 1``), ``seq_lens`` (``R``), block tables (``R`` rows). Real requests come
first; the padding requests have no query rows (``query_start_loc`` repeats ``T``) and ``seq_len = 0``,
so the unified attention kernel's programs for them find no tile and exit without reading their block
table row (those rows are therefore not copied). Padding token rows ``T..N`` have ``slot = -1``
(nothing written to the KV cache), position 0 and id 0; they belong to no request, no layer mixes rows,
so they cannot reach a real row. Host-side values the attention backend reads are fixed at capture:
``max_query_len = N`` (tile sizes), ``max_seq_len = max_model_len`` (a KV-split choice is the same at
every replay), ``is_decode_only = False``. The graph ends at the hidden states: the runner computes
the logits of the rows it samples eagerly (three launches), so sampling, prompt logprobs and
speculative verify rows work as on the eager path.

Single-request chunks keep their own graphs (:mod:`pagoda.worker.chunk_graphs`: one request only,
so the graph can split a long cached context's KV range and take the logits inside).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.worker.cuda_graphs import PinnedStaging, stage_tokens
from pagoda.worker.graph_capture import capture_graph

logger = logging.getLogger("pagoda")

MIXED_BUCKETS = (64, 128, 256, 384, 512)
"""Token buckets captured whatever the budget."""
LARGE_MIXED_BUCKETS = (768, 1024, 1536, 2048)
"""More buckets for budgets above 512 tokens (:func:`mixed_buckets`). Run eagerly, such a step beside 256 decodes
spent ~19 ms of host time launching (H200, 8B shape, RESULTS.md session 21), as long as its device time, so the
engine core's loop never held for new requests (launch pacing) and a new request waited for the step in flight.
Steps above the largest bucket still run eagerly."""


def mixed_buckets(max_num_batched_tokens: int) -> tuple[int, ...]:
    """The buckets for a step budget: :data:`MIXED_BUCKETS`, the large buckets below the budget, and the budget
    itself when it lies between 512 and the largest large bucket (no large bucket beyond what a step can hold)."""
    large = [b for b in LARGE_MIXED_BUCKETS if b < max_num_batched_tokens]
    if MIXED_BUCKETS[-1] < max_num_batched_tokens <= LARGE_MIXED_BUCKETS[-1]:
        large.append(max_num_batched_tokens)
    return MIXED_BUCKETS + tuple(large)


class MixedGraphs:
    def __init__(self, model, backend, kv_caches, block_size: int, max_model_len: int, max_num_seqs: int,
                 device: torch.device, buckets: tuple[int, ...] = MIXED_BUCKETS, use_graphs: bool = True) -> None:
        """``use_graphs=False`` (CPU tests): "replay" reruns the forward on the static buffers."""
        self.use_graphs = use_graphs
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.buckets = tuple(sorted(buckets))
        self.requests = {n: max(1, min(n, max_num_seqs)) for n in self.buckets}
        self.max_n = self.buckets[-1]
        self.max_r = max(self.requests.values())
        self.max_blocks = -(-max_model_len // block_size)
        self.max_model_len = max_model_len
        n, r, mb = self.max_n, self.max_r, self.max_blocks
        # int64: ids | positions | slots (n rows each); int32: query_start_loc (r + 1) | seq_lens (r) | tables (r x mb)
        self._i64 = torch.zeros(3 * n, dtype=torch.int64, device=device)
        self._i32 = torch.zeros(2 * r + 1 + r * mb, dtype=torch.int32, device=device)
        self._staging = PinnedStaging(3 * n, 2 * r + 1 + r * mb, pin=use_graphs)
        self.graphs: dict[int, Any] = {}  # torch.cuda.CUDAGraph, or _EagerReplay without graphs
        self.outputs: dict[int, torch.Tensor] = {}
        self.last_bucket = 0
        self.last_rows = 0
        self.replays = 0
        self.capture_seconds = 0.0

    def _views(self, n: int):
        big_n, big_r, mb = self.max_n, self.max_r, self.max_blocks
        r = self.requests[n]
        ids, pos, slots = self._i64[:n], self._i64[big_n : big_n + n], self._i64[2 * big_n : 2 * big_n + n]
        qsl = self._i32[: r + 1]
        seq_lens = self._i32[big_r + 1 : big_r + 1 + r]
        tables = self._i32[2 * big_r + 1 :].view(big_r, mb)[:r]
        return ids, pos, slots, qsl, seq_lens, tables

    def _forward(self, n: int) -> None:
        """The step on the static buffers of bucket ``n``; its hidden states (under capture: the graph's) kept."""
        ids, pos, slots, qsl, seq_lens, tables = self._views(n)
        r = self.requests[n]
        meta = AttentionMetadata(
            query_start_loc=qsl, seq_lens=seq_lens, block_tables=tables, slot_mapping=slots,
            max_query_len=n, max_seq_len=self.max_model_len, query_lens_cpu=[n] + [0] * (r - 1),
            seq_lens_cpu=[self.max_model_len] * r, is_decode_only=False, split_kv_len=self.max_model_len,
        )
        self.outputs[n] = self.model(ids, pos, self.kv_caches, meta, self.backend)

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        for n in reversed(self.buckets):
            # A valid step for the warm-up runs: one request of n tokens at positions 0..n-1 in null-block slots
            # (slot -1: nothing written, block 0 read), the others padding.
            r = self.requests[n]
            self._stage_meta(np.zeros(self._i32.numel(), dtype=np.int32), [n], [n], np.zeros((1, 1), np.int32), r)
            self._i64.zero_()
            self._i64[2 * self.max_n :].fill_(-1)
            if not self.use_graphs:
                self.graphs[n] = _EagerReplay(self, n)
                continue
            def body(n: int = n) -> None:
                self._forward(n)

            g = capture_graph(body, pool)
            if g is not None:  # None: a dry pass (graph_capture.py)
                self.graphs[n] = g
        if self.use_graphs:
            torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        logger.info("Captured CUDA graphs for mixed steps (several requests' prompt chunks and decodes; %s tokens) "
                    "in %.1f s", "/".join(map(str, self.buckets)), self.capture_seconds)

    def _stage_meta(self, h32: np.ndarray, query_lens: list[int], seq_lens: list[int], block_rows, r_cap: int,
                    to_device: bool = True) -> int:
        """Write query_start_loc, seq_lens and the real requests' block-table rows into ``h32`` (a host view of the
        int32 buffer's layout); copies them to the device unless ``to_device`` is False. Returns the int32 count
        used (the padding requests' table rows are left as they are: they are never read)."""
        big_r, mb = self.max_r, self.max_blocks
        r = len(query_lens)
        qsl = h32[: r_cap + 1]
        qsl[0] = 0
        np.cumsum(query_lens, out=qsl[1 : r + 1])
        qsl[r + 1 :] = qsl[r]
        h32[big_r + 1 : big_r + 1 + r] = seq_lens
        h32[big_r + 1 + r : big_r + 1 + r_cap] = 0
        tables = h32[2 * big_r + 1 : 2 * big_r + 1 + r * mb].reshape(r, mb)
        tables[:, : block_rows.shape[1]] = block_rows[:, :mb]
        if block_rows.shape[1] < mb:
            tables[:, block_rows.shape[1] :] = 0
        used = 2 * big_r + 1 + r * mb
        if to_device:
            self._i32[:used].copy_(torch.from_numpy(h32[:used]))
        return used

    def can_run(self, num_tokens: int, num_reqs: int, max_blocks: int) -> bool:
        return (0 < num_tokens <= self.max_n and max_blocks <= self.max_blocks
                and num_reqs <= self.requests[self._bucket(num_tokens)])

    def _bucket(self, num_tokens: int) -> int:
        return next(b for b in self.buckets if b >= num_tokens)

    @torch.inference_mode()
    def run(self, input_ids: list[int], positions: list[int], slots: list[int], query_lens: list[int],
            seq_lens: list[int], block_rows, fill=None) -> torch.Tensor:
        """Replay for a step given as host lists (request-major rows); ``block_rows``: int32 array
        ``[num_reqs, max_blocks]``; ``fill`` as in :meth:`pagoda.worker.cuda_graphs.DecodeGraphs.run`.
        Returns the real rows' hidden states (static memory: valid until the next replay)."""
        t = len(input_ids)
        n = self._bucket(t)
        t64, t32 = self._staging.next()
        h64, h32 = t64.numpy(), t32.numpy()
        stage_tokens(h64, self.max_n, t, n, input_ids, positions, slots)
        used = self._stage_meta(h32, query_lens, seq_lens, block_rows, self.requests[n], to_device=False)
        self._i64.copy_(t64, non_blocking=True)
        self._i32[:used].copy_(t32[:used], non_blocking=True)
        if fill is not None:
            fill(self._i64[: self.max_n])
        self.graphs[n].replay()
        self.last_bucket, self.last_rows = n, t
        self.replays += 1
        return self.outputs[n][:t]


class _EagerReplay:
    """Stands in for a CUDA graph where there is none (CPU tests of the padding and buffer layout)."""

    def __init__(self, graphs: MixedGraphs, n: int) -> None:
        self.graphs, self.n = graphs, n

    def replay(self) -> None:
        self.graphs._forward(self.n)
