"""CUDA graphs for single-request prefill chunks (a short prompt, or a short suffix after a
prefix-cache hit), in token buckets, static buffers, padded replay.

Why: an eager step over a few hundred tokens is bound by its host launches (about 290 of
them for a 32-layer model, mostly through Triton's Python launcher), so the GPU idles;
the time to first token of a request whose long prefix is cached is exactly such a step.

How: one graph per bucket ``T`` (16 … 256 tokens), all for ONE request. The request's
real length ``t <= T`` lives on the device (``query_start_loc = [0, t]``, ``seq_len =
context + t``); the attention kernels bound their work by those device values and never
touch rows ``>= t``. Padding rows carry ``slot = -1`` (no K/V written), position 0, and
whatever the row-wise layers make of them; no layer mixes rows, so they cannot reach row
``t - 1``, whose hidden state gives the logits and the greedy argmax inside the graph.
Host-side values the attention backend reads are fixed at capture: ``max_query_len = T``
(tile sizes), ``max_seq_len = max_model_len`` (so any KV-split choice is the same at every
replay), ``is_decode_only = False``.
"""

from __future__ import annotations

import logging
import time

import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.layers.argmax import argmax_rows
from pagoda.worker.cuda_graphs import PinnedStaging, stage_tokens
from pagoda.worker.graph_capture import capture_graph

logger = logging.getLogger("pagoda")

CHUNK_BUCKETS = (16, 32, 64, 128, 256)


class ChunkGraphs:
    def __init__(self, model, backend, kv_caches, block_size: int, max_model_len: int, device: torch.device,
                 buckets: tuple[int, ...] = CHUNK_BUCKETS, pool=None) -> None:
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.buckets = tuple(sorted(b for b in buckets if b <= max_model_len))
        self.max_t = self.buckets[-1] if self.buckets else 0
        self.max_blocks = -(-max_model_len // block_size)
        self.max_model_len = max_model_len
        self.pool = pool
        n, mb = self.max_t, self.max_blocks
        # int64: ids | positions | slots ; int32: query_start_loc (2) | seq_len (1) | last row (1) | block row
        self._i64 = torch.zeros(3 * n, dtype=torch.int64, device=device)
        self._i32 = torch.zeros(4 + mb, dtype=torch.int32, device=device)
        self._staging = PinnedStaging(3 * n, 4 + mb)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.greedy: dict[int, torch.Tensor] = {}
        self.last_bucket = 0
        self.capture_seconds = 0.0

    def _views(self, t: int):
        n = self.max_t
        ids, pos, slots = self._i64[:t], self._i64[n : n + t], self._i64[2 * n : 2 * n + t]
        qsl, seq_len, last = self._i32[0:2], self._i32[2:3], self._i32[3:4]
        block_row = self._i32[4:].view(1, self.max_blocks)
        return ids, pos, slots, qsl, seq_len, last, block_row

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        pool = self.pool if self.pool is not None else torch.cuda.graph_pool_handle()
        for t in reversed(self.buckets):
            ids, pos, slots, qsl, seq_len, last, block_row = self._views(t)
            # A valid request for the warm-up runs: t tokens at positions 0..t-1 in null-block slots
            # (slot -1: nothing is written), reading block 0 only.
            qsl.copy_(torch.tensor([0, t], dtype=torch.int32))
            seq_len.fill_(t)
            last.fill_(t - 1)
            slots.fill_(-1)
            meta = AttentionMetadata(
                query_start_loc=qsl, seq_lens=seq_len, block_tables=block_row, slot_mapping=slots,
                max_query_len=t, max_seq_len=self.max_model_len, query_lens_cpu=[t],
                seq_lens_cpu=[self.max_model_len], is_decode_only=False, split_kv_len=self.max_model_len,
            )
            args = (ids, pos, self.kv_caches, meta, self.backend)

            def body(t: int = t, args: tuple = args, last: torch.Tensor = last) -> None:
                hidden = self.model(*args)
                logits = self.model.compute_logits_raw(hidden.index_select(0, last.long()))
                self.greedy[t] = argmax_rows(logits)
                self.logits[t] = logits

            g = capture_graph(body, pool)
            if g is not None:  # None: a dry pass (graph_capture.py)
                self.graphs[t] = g
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        logger.info("Captured CUDA graphs for single-request prefill chunks (%s tokens) in %.1f s",
                    "/".join(map(str, self.buckets)), self.capture_seconds)

    def can_run(self, num_tokens: int, max_blocks: int) -> bool:
        return 0 < num_tokens <= self.max_t and max_blocks <= self.max_blocks

    @torch.inference_mode()
    def run(self, input_ids: list[int], positions: list[int], slots: list[int], seq_len: int, block_row,
            fill=None) -> None:
        """Replay for one request's chunk; ``block_row``: int32 array ``[max_blocks]``; ``fill`` as
        in :meth:`DecodeGraphs.run`."""
        t = len(input_ids)
        bucket = next(b for b in self.buckets if b >= t)
        n = self.max_t
        t64, t32 = self._staging.next()
        h64, h32 = t64.numpy(), t32.numpy()
        stage_tokens(h64, n, t, bucket, input_ids, positions, slots)
        h32[0], h32[1], h32[2], h32[3] = 0, t, seq_len, t - 1
        h32[4:] = block_row[: self.max_blocks]
        self._i64.copy_(t64, non_blocking=True)
        self._i32.copy_(t32, non_blocking=True)
        if fill is not None:
            fill(self._i64[:n])
        self.graphs[bucket].replay()
        self.last_bucket = bucket

    def last_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits in the model dtype [1, V], argmax [1]) of the request's last row, last replay."""
        return self.logits[self.last_bucket], self.greedy[self.last_bucket]
