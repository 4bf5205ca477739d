"""CUDA graphs for decode steps: one graph per batch size, static buffers, padded replay.

Captured largest-first into one shared memory pool. A decode step of ``B`` requests
replays the smallest captured size ``>= B``; padding rows have ``slot_mapping = -1``
(nothing written), ``seq_len = 1`` and an all-null block table (they read block 0).
Host-side values the attention backend reads (``max_seq_len``, ``is_decode_only``) are
fixed at capture: ``max_seq_len = max_model_len``, so a backend's choice of KV splits
is the same at every replay; kernels bound their work by the device-side ``seq_lens``.

Tensor parallelism: every rank captures the same sizes at the same time (the forward's
all-reduces are captured into each rank's graph) and replays together; the logits are left
out of the graph (``logits_in_graph=False``: the vocabulary-parallel head's gather runs
eagerly after the replay, on every rank).
"""

from __future__ import annotations

import logging
import time

import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.layers.argmax import argmax_rows
from pagoda.worker.graph_capture import capture_graph

logger = logging.getLogger("pagoda")


class PinnedStaging:
    """Pinned host buffers (one int64, one int32) from which a graph's static inputs are copied,
    in two sets used in turn: a step can be staged while the previous step's async copies may
    still be pending (async scheduling keeps one step in flight, and waits for the one before)."""

    def __init__(self, n64: int, n32: int, pin: bool = True) -> None:
        self._sets = [(torch.zeros(n64, dtype=torch.int64, pin_memory=pin),
                       torch.zeros(n32, dtype=torch.int32, pin_memory=pin)) for _ in range(2)]
        self._turn = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._sets[self._turn]
        self._turn ^= 1
        return t


def stage_tokens(h64, n: int, count: int, padded: int, input_ids, positions, slots) -> None:
    """Write ``ids | positions | slots`` (each a region of ``n``) into ``h64``; rows ``count``
    to ``padded`` get id 0, position 0 and slot -1 (nothing written to the KV cache)."""
    h64[:count] = input_ids
    h64[count:padded] = 0
    h64[n : n + count] = positions
    h64[n + count : n + padded] = 0
    h64[2 * n : 2 * n + count] = slots
    h64[2 * n + count : 2 * n + padded] = -1


def default_capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512]
    out = [s for s in sizes if s <= max_num_seqs]
    if max_num_seqs not in out and max_num_seqs <= 512:
        out.append(max_num_seqs)
    # Larger decode batches run eagerly: their launch overhead is small next to their GPU time.
    return sorted(out)


class DecodeGraphs:
    def __init__(self, model, backend, kv_caches, block_size: int, max_model_len: int, sizes: list[int],
                 device: torch.device, logits_in_graph: bool = True) -> None:
        self.model = model
        self.logits_in_graph = logits_in_graph
        self.backend = backend
        self.kv_caches = kv_caches
        self.sizes = sorted(sizes)
        self.max_bs = self.sizes[-1]
        self.max_blocks = -(-max_model_len // block_size)
        self.max_model_len = max_model_len
        n = self.max_bs
        mb = self.max_blocks
        # Two static device buffers (int64: ids | positions | slots; int32: seq_lens | block
        # tables) fed from pinned host buffers: a replay costs two async copies.
        self._i64 = torch.zeros(3 * n, dtype=torch.int64, device=device)
        self._i32 = torch.zeros(n + n * mb, dtype=torch.int32, device=device)
        self._staging = PinnedStaging(3 * n, n + n * mb)
        self.input_ids = self._i64[:n]
        self.positions = self._i64[n : 2 * n]
        self.slot_mapping = self._i64[2 * n :]
        self.seq_lens = self._i32[:n]
        self.block_tables = self._i32[n:].view(n, mb)
        self.slot_mapping.fill_(-1)
        self.seq_lens.fill_(1)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.greedy: dict[int, torch.Tensor] = {}
        self.aux: dict[int, torch.Tensor] = {}  # EAGLE-3: the model's aux hidden states (aux_hidden_layers set)
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

            def body(b: int = b, args: tuple = args) -> None:
                out = self.model(*args)
                if getattr(self.model, "aux_hidden_layers", ()):
                    self.aux[b] = self.model.aux_hidden
                if self.logits_in_graph:
                    # Logits in the model dtype and their argmax: a greedy batch needs nothing else.
                    logits = self.model.compute_logits_raw(out)
                    self.greedy[b] = argmax_rows(logits)
                    self.logits[b] = logits
                self.outputs[b] = out

            g = capture_graph(body, pool)
            if g is not None:  # None: a dry pass (graph_capture.py)
                self.graphs[b] = g
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        logger.info("Captured CUDA graphs for %d decode batch sizes (1..%d) in %.1f s",
                    len(self.sizes), self.max_bs, self.capture_seconds)

    def can_run(self, b: int, max_blocks: int) -> bool:
        return b <= self.max_bs and max_blocks <= self.max_blocks

    @torch.inference_mode()
    def run(self, input_ids: list[int], positions: list[int], slots: list[int], seq_lens: list[int],
            block_rows, fill=None) -> torch.Tensor:
        """Replay for a decode batch given as host lists; ``block_rows`` is an int32 array
        ``[b, max_blocks]`` (entries past a request's last block are never read). ``fill``,
        if given, is applied to the device ``input_ids`` after they are copied in (tokens
        the host does not know yet)."""
        b = len(input_ids)
        size = next(s for s in self.sizes if s >= b)
        n, mb = self.max_bs, self.max_blocks
        t64, t32 = self._staging.next()
        h64, h32 = t64.numpy(), t32.numpy()
        stage_tokens(h64, n, b, size, input_ids, positions, slots)
        h32[:b] = seq_lens
        h32[b:size] = 1
        bt = h32[n : n + size * mb].reshape(size, mb)
        bt[:b] = block_rows
        bt[b:] = 0
        self._i64.copy_(t64, non_blocking=True)
        self._i32[: n + size * mb].copy_(t32[: n + size * mb], non_blocking=True)
        if fill is not None:
            fill(self.input_ids)
        self.graphs[size].replay()
        self.last_size = size
        return self.outputs[size][:b]

    def last_aux(self, b: int) -> torch.Tensor | None:
        """EAGLE-3's aux hidden states [b, 3 h] of the last replay (None unless the model keeps them)."""
        aux = self.aux.get(self.last_size)
        return aux[:b] if aux is not None else None

    def last_logits(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits in the model dtype [b, V], their argmax [b]) of the last replay."""
        return self.logits[self.last_size][:b], self.greedy[self.last_size][:b]
