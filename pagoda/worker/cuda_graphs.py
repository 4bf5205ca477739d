"""CUDA graphs for decode steps: one graph per batch size, static buffers, padded replay.

Captured largest-first into one shared memory pool. A decode step of ``B`` requests
replays the smallest captured size ``>= B``; padding rows have ``slot_mapping = -1``
(nothing written), ``seq_len = 1`` and an all-null block table (they read block 0).
Host-side values the attention backend reads (``max_seq_len``, ``is_decode_only``) are
fixed at capture: ``max_seq_len = max_model_len``, so a backend's choice of KV splits
is the same at every replay; kernels bound their work by the device-side ``seq_lens``.
"""

from __future__ import annotations

import logging
import time

import torch

from pagoda.attention.metadata import AttentionMetadata

logger = logging.getLogger("pagoda")


def default_capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512]
    out = [s for s in sizes if s <= max_num_seqs]
    if max_num_seqs not in out and max_num_seqs <= 512:
        out.append(max_num_seqs)
    # Larger decode batches run eagerly: their launch overhead is small next to their GPU time.
    return sorted(out)


class DecodeGraphs:
    def __init__(self, model, backend, kv_caches, block_size: int, max_model_len: int, sizes: list[int],
                 device: torch.device) -> None:
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.sizes = sorted(sizes)
        self.max_bs = self.sizes[-1]
        self.max_blocks = -(-max_model_len // block_size)
        self.max_model_len = max_model_len
        n = self.max_bs
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((n, self.max_blocks), dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.greedy: dict[int, torch.Tensor] = {}
        self.last_size = 0
        self.capture_seconds = 0.0

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[: b + 1],
            seq_lens=self.seq_lens[:b],
            block_tables=self.block_tables[:b],
            slot_mapping=self.slot_mapping[:b],
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_lens_cpu=[1] * b,
            seq_lens_cpu=[self.max_model_len] * b,
            is_decode_only=True,
            split_kv_len=self.max_model_len,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.sizes):
            meta = self._meta(b)
            args = (self.input_ids[:b], self.positions[:b], self.kv_caches, meta, self.backend)
            for _ in range(2):  # warm-up: triton compiles, allocator settles
                self.model(*args)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                out = self.model(*args)
                # Logits in the model dtype and their argmax: a greedy batch needs nothing else.
                logits = self.model.compute_logits_raw(out)
                self.greedy[b] = logits.argmax(dim=-1)
                self.logits[b] = logits
            self.graphs[b] = g
            self.outputs[b] = out
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        logger.info("Captured CUDA graphs for %d decode batch sizes (1..%d) in %.1f s",
                    len(self.sizes), self.max_bs, self.capture_seconds)

    def can_run(self, b: int, max_blocks: int) -> bool:
        return b <= self.max_bs and max_blocks <= self.max_blocks

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
            seq_lens: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
        b = input_ids.shape[0]
        size = next(s for s in self.sizes if s >= b)
        nb = block_tables.shape[1]
        self.input_ids[:b].copy_(input_ids, non_blocking=True)
        self.positions[:b].copy_(positions, non_blocking=True)
        self.slot_mapping[:b].copy_(slot_mapping, non_blocking=True)
        self.seq_lens[:b].copy_(seq_lens, non_blocking=True)
        self.block_tables[:b, :nb].copy_(block_tables, non_blocking=True)
        if nb < self.max_blocks:
            self.block_tables[:b, nb:].zero_()
        if size > b:
            self.slot_mapping[b:size].fill_(-1)
            self.seq_lens[b:size].fill_(1)
            self.block_tables[b:size].zero_()
        self.graphs[size].replay()
        self.last_size = size
        return self.outputs[size][:b]

    def last_logits(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits in the model dtype [b, V], their argmax [b]) of the last replay."""
        return self.logits[self.last_size][:b], self.greedy[self.last_size][:b]
