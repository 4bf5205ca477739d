"""CUDA graphs for speculative verify steps: ``b`` requests of ``q = k + 1`` query tokens each
(the last known token and ``k`` proposals), one graph per batch size, static buffers, padded replay.

Why: a verify step run eagerly is bound by its host launches (RESULTS.md, H200, 8B shape: 13.85 ms
at batch 1 against a 4.73 ms decode-graph step), which cancels what speculation saves.

How: the design of :mod:`pagoda.worker.cuda_graphs`, with ``q`` rows per request. Every request
has exactly ``q`` rows, so ``query_start_loc = q * arange(b + 1)`` is a constant; a request's
context length lives on the device (``seq_lens``) and the attention kernels bound their work by
it. Padding requests have ``q`` rows with ``slot = -1`` (nothing written), position 0,
``seq_len = q`` and an all-null block table (they read block 0). Host-side values the attention
backend reads are fixed at capture: ``max_query_len = q``, ``max_seq_len = max_model_len`` (so a
KV-split choice is the same at every replay), ``is_decode_only = False``. The graph computes the
logits of every row (each row of a verify is sampled) and their argmax. A request with fewer
proposals (a draft cut short, none at all) is padded to ``q`` rows (:meth:`VerifyGraphs.run`); a
step with a prompt chunk, prompt logprobs or a token still being sampled runs eagerly. ``replays``
counts replays (tests check that verify steps use a graph).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.layers.argmax import argmax_rows
from pagoda.layers.sampler import to_device
from pagoda.worker.cuda_graphs import PinnedStaging, stage_tokens
from pagoda.worker.graph_capture import capture_graph

logger = logging.getLogger("pagoda")

MAX_VERIFY_BATCH = 64  # larger verify batches run eagerly (their logits buffer grows as b * q * vocab)


def verify_capture_sizes(decode_sizes: list[int]) -> list[int]:
    return [s for s in decode_sizes if s <= MAX_VERIFY_BATCH]


class VerifyGraphs:
    def __init__(self, model, backend, kv_caches, block_size: int, max_model_len: int, sizes: list[int],
                 num_query: int, device: torch.device, use_graphs: bool = True) -> None:
        """``use_graphs=False`` (CPU tests): "replay" reruns the forward on the static buffers."""
        self.use_graphs = use_graphs
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.sizes = sorted(sizes)
        self.q = num_query
        self.max_bs = self.sizes[-1]
        self.block_size = block_size
        self.max_blocks = -(-max_model_len // block_size)
        self.max_model_len = max_model_len
        n, mb = self.max_bs * self.q, self.max_blocks
        self.n = n
        # int64: ids | positions | slots (n rows each); int32: seq_lens (max_bs) | block tables.
        self._i64 = torch.zeros(3 * n, dtype=torch.int64, device=device)
        self._i32 = torch.zeros(self.max_bs + self.max_bs * mb, dtype=torch.int32, device=device)
        self._staging = PinnedStaging(3 * n, self.max_bs + self.max_bs * mb, pin=use_graphs)
        self.input_ids = self._i64[:n]
        self.positions = self._i64[n : 2 * n]
        self.slot_mapping = self._i64[2 * n :]
        self.seq_lens = self._i32[: self.max_bs]
        self.block_tables = self._i32[self.max_bs :].view(self.max_bs, mb)
        self.slot_mapping.fill_(-1)
        self.seq_lens.fill_(self.q)
        self.query_start_loc = torch.arange(self.max_bs + 1, dtype=torch.int32, device=device) * self.q
        self.graphs: dict[int, Any] = {}  # torch.cuda.CUDAGraph, or _EagerReplay without graphs
        self.outputs: dict[int, torch.Tensor] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.greedy: dict[int, torch.Tensor] = {}
        self.aux: dict[int, torch.Tensor] = {}
        self.last_size = 0
        self.last_rows = 0
        self._real: torch.Tensor | None = None  # the last replay's real rows (None: all b * q)
        self.replays = 0
        self.capture_seconds = 0.0

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[: b + 1],
            seq_lens=self.seq_lens[:b],
            block_tables=self.block_tables[:b],
            slot_mapping=self.slot_mapping[: b * self.q],
            max_query_len=self.q,
            max_seq_len=self.max_model_len,
            query_lens_cpu=[self.q] * b,
            seq_lens_cpu=[self.max_model_len] * b,
            is_decode_only=False,
            split_kv_len=self.max_model_len,
            in_cuda_graph=self.use_graphs,  # KV splits chosen for the device alone (choose_chunk_splits)
        )

    def _forward(self, b: int) -> None:
        """The step on the static buffers for ``b`` requests; its outputs (under capture: the graph's) kept."""
        t = b * self.q
        out = self.model(self.input_ids[:t], self.positions[:t], self.kv_caches, self._meta(b), self.backend)
        if getattr(self.model, "aux_hidden_layers", ()):
            self.aux[b] = self.model.aux_hidden
        logits = self.model.compute_logits_raw(out)
        self.outputs[b], self.logits[b], self.greedy[b] = out, logits, argmax_rows(logits)

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        for b in reversed(self.sizes):
            if not self.use_graphs:
                self.graphs[b] = _EagerReplay(self, b)
                continue
            def body(b: int = b) -> None:
                self._forward(b)

            g = capture_graph(body, pool)
            if g is not None:  # None: a dry pass (graph_capture.py)
                self.graphs[b] = g
        if self.use_graphs:
            torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        logger.info("Captured CUDA graphs for verify steps of %d tokens per request, %d batch sizes (1..%d) in %.1f s",
                    self.q, len(self.sizes), self.max_bs, self.capture_seconds)

    def can_run(self, query_lens: list[int], num_sample_rows: list[int], seq_lens: list[int]) -> bool:
        """A pure verify batch within the sizes: every request samples all its rows (its last known token
        and its proposals: 1 to ``q`` rows) and its rows padded to ``q`` stay within the block table."""
        q, cap = self.q, self.max_blocks * self.block_size
        return (0 < len(query_lens) <= self.max_bs and len(num_sample_rows) == len(query_lens)
                and num_sample_rows == query_lens and all(0 < n <= q for n in query_lens)
                and all(s - n + q <= cap for s, n in zip(seq_lens, query_lens, strict=True)))

    @torch.inference_mode()
    def run(self, input_ids: list[int], positions: list[int], slots: list[int], query_lens: list[int],
            seq_lens: list[int], block_rows) -> torch.Tensor:
        """Replay for a verify batch given as host lists (request-major rows, ``query_lens[i] <= q`` each);
        ``block_rows``: int32 array ``[b, max_blocks]``. A request with fewer than ``q`` rows is padded to
        ``q`` (token 0, position 0, slot -1) and its length to ``seq_len - rows + q``: its real rows keep
        their causal context, the padding rows read but never write. Returns the real rows' hidden states."""
        b = len(seq_lens)
        size = next(s for s in self.sizes if s >= b)
        n, mb, q = self.n, self.max_blocks, self.q
        if all(k == q for k in query_lens):
            self._real = None
        else:  # pad each request to q rows
            input_ids, positions, slots, seq_lens, real = _pad_rows(input_ids, positions, slots, query_lens,
                                                                    seq_lens, q)
            self._real = to_device(real, self.input_ids.device)  # pinned staging: no device sync
        t64, t32 = self._staging.next()
        h64, h32 = t64.numpy(), t32.numpy()
        stage_tokens(h64, n, b * q, size * q, input_ids, positions, slots)
        nb = self.max_bs
        h32[:b] = seq_lens
        h32[b:size] = q
        bt = h32[nb : nb + size * mb].reshape(size, mb)
        bt[:b] = block_rows
        bt[b:] = 0
        self._i64.copy_(t64, non_blocking=True)
        self._i32[: nb + size * mb].copy_(t32[: nb + size * mb], non_blocking=True)
        self.graphs[size].replay()
        self.last_size = size
        self.last_rows = b * q
        self.replays += 1
        return self._rows(self.outputs[size])

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        """The last replay's real rows of a per-row output."""
        return t[: self.last_rows] if self._real is None else t.index_select(0, self._real)

    def last_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits in the model dtype [rows, V], their argmax [rows]) of the last replay's real rows."""
        return self._rows(self.logits[self.last_size]), self._rows(self.greedy[self.last_size])

    def last_aux(self) -> torch.Tensor | None:
        aux = self.aux.get(self.last_size)
        return self._rows(aux) if aux is not None else None


def _pad_rows(ids: list[int], pos: list[int], slots: list[int], query_lens: list[int], seq_lens: list[int],
              q: int) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Each request's rows padded to ``q``; returns the padded lists, padded lengths and the real rows' indices."""
    pids: list[int] = []
    ppos: list[int] = []
    pslots: list[int] = []
    real: list[int] = []
    at = 0
    for i, k in enumerate(query_lens):
        pids += ids[at : at + k] + [0] * (q - k)
        ppos += pos[at : at + k] + [0] * (q - k)
        pslots += slots[at : at + k] + [-1] * (q - k)
        real.extend(range(i * q, i * q + k))
        at += k
    return pids, ppos, pslots, [s - k + q for s, k in zip(seq_lens, query_lens, strict=True)], real


class _EagerReplay:
    """Stands in for a CUDA graph where there is none (CPU tests of the padding and buffer layout)."""

    def __init__(self, graphs: VerifyGraphs, b: int) -> None:
        self.graphs, self.b = graphs, b

    def replay(self) -> None:
        self.graphs._forward(self.b)
