"""The "triton" attention backend (default on CUDA).

Triton itself is imported on first use, so importing this module (and ``pagoda``)
never requires triton; only calling ``write_kv``/``forward`` does.
Kernels and their design: :mod:`pagoda.attention.triton_kernels`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pagoda.attention.backend import AttentionBackend, register_backend
from pagoda.attention.metadata import AttentionMetadata


def _kernels():
    try:
        from pagoda.attention import triton_kernels
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "The 'triton' attention backend needs the triton package (pip install triton); "
            "use the 'torch' backend otherwise."
        ) from e
    return triton_kernels


class TritonAttentionBackend(AttentionBackend):
    """Paged attention with Triton kernels.

    ``forward`` uses the split-KV (flash-decoding) kernels when the step is decode-only
    and the batch alone would leave SMs idle (see ``choose_num_splits``); every other
    step — prefill, chunked prefill, mixed, or large decode batches — goes through the
    unified kernel, whose KV range is split too when a small chunk over a long cached
    context would leave SMs idle (``choose_chunk_splits``, eager steps only). Long prompts
    with no cached context go to torch's SDPA on the step's own K/V instead (faster there,
    measured); the unified kernel runs the rest of such a step, skipping them.
    """

    name = "triton"

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        _kernels().write_kv(key, value, k_cache, v_cache, slot_mapping)

    def num_splits(self, query: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata) -> int:
        """KV splits this step would use (1 = the unified kernel)."""
        if not meta.is_decode_only:
            return 1
        tk = _kernels()
        bound = meta.split_kv_len or meta.max_seq_len
        return tk.choose_num_splits(meta.num_seqs, k_cache.shape[2], bound, tk.num_sms(query.device))

    # Prompts with no cached context and at least this many tokens go to torch's SDPA
    # (FlashAttention) on the step's own K/V: measured on an H100 at about half our unified
    # kernel's time for such prompts (benchmarks/gpu/torch_attention_bench.py, RESULTS.md).
    # Below it, one SDPA launch per prompt costs more than it saves. PAGODA_PREFILL_SDPA=0
    # keeps every prompt on the unified kernel (an A/B switch for benchmarks).
    sdpa_min_query_len = 512 if os.environ.get("PAGODA_PREFILL_SDPA", "1") != "0" else 1 << 62

    def forward(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
    ) -> torch.Tensor:
        splits = self.num_splits(query, k_cache, meta)
        if splits > 1:
            return _kernels().split_kv_decode(
                query, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
                scale, splits, num_real_tokens=sum(meta.query_lens_cpu),
            )
        plan = None
        if key is not None and not meta.is_decode_only and _flash_dtype(query):
            plan = meta.plans.get(self.name)
            if plan is None:
                plan = meta.plans[self.name] = _FreshPromptPlan.build(meta, self.sdpa_min_query_len)
        if plan is None or not plan.fresh:
            return self._unified(query, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
                                 meta.max_query_len, meta.max_seq_len, meta.num_seqs, sum(meta.query_lens_cpu), scale)
        if plan.seq_lens is not None:
            # The other requests, in one launch that skips the fresh prompts (negative seq_lens).
            out = self._unified(query, k_cache, v_cache, meta.query_start_loc, plan.seq_lens, meta.block_tables,
                                meta.max_query_len, meta.max_seq_len, meta.num_seqs, plan.num_real_tokens, scale)
        else:
            out = torch.zeros_like(query) if query.shape[0] > plan.num_real_tokens else torch.empty_like(query)
        # FlashAttention only: cuDNN's SDPA (preferred by torch on Hopper for some shapes) builds
        # a plan per new sequence length, milliseconds each, and every prompt has its own length.
        with _flash_only():
            for a, b in plan.fresh:
                q = query[a:b].transpose(0, 1).unsqueeze(0)
                k = key[a:b].transpose(0, 1).unsqueeze(0)
                v = value[a:b].transpose(0, 1).unsqueeze(0)
                o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                     enable_gqa=True)
                out[a:b] = o[0].transpose(0, 1)
        return out

    @staticmethod
    def _unified(query, k_cache, v_cache, query_start_loc, seq_lens, block_tables, max_query_len, max_seq_len,
                 num_seqs, num_real_tokens, scale):
        tk = _kernels()
        chunk_splits = 1
        if max_query_len > 1:  # eager steps only: CUDA graphs capture decode-only steps
            G = query.shape[1] // k_cache.shape[2]
            chunk_splits = tk.choose_chunk_splits(
                query.shape[0], num_seqs, k_cache.shape[2], G, query.shape[2],
                max_query_len, max_seq_len, tk.num_sms(query.device),
            )
        return tk.unified_attention(
            query, k_cache, v_cache, query_start_loc, seq_lens, block_tables,
            max_query_len, scale, num_real_tokens=num_real_tokens, num_splits=chunk_splits,
        )


def _flash_dtype(query: torch.Tensor) -> bool:
    """SDPA's FlashAttention kernel takes half-precision CUDA tensors; the interpreter tests run
    the same routing on the CPU (where SDPA has no such kernel and picks its own)."""
    return query.dtype in (torch.float16, torch.bfloat16) or query.device.type == "cpu"


def _flash_only():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


@dataclass
class _FreshPromptPlan:
    """A step's requests that attend only to their own new tokens (no cached context) and are
    long enough for SDPA, as row ranges; ``seq_lens`` for the unified kernel with those marked
    -1 (skipped), or None when every request is such a prompt."""

    fresh: list[tuple[int, int]]
    seq_lens: torch.Tensor | None
    num_real_tokens: int

    @staticmethod
    def build(meta: AttentionMetadata, min_len: int) -> "_FreshPromptPlan":
        fresh, masked = [], []
        a = 0
        for q, s in zip(meta.query_lens_cpu, meta.seq_lens_cpu):
            if q == s and q >= min_len:
                fresh.append((a, a + q))
                masked.append(-1)
            else:
                masked.append(s)
            a += q
        seq_lens = None
        if fresh and len(fresh) < len(masked):
            seq_lens = torch.tensor(masked, dtype=torch.int32).to(meta.seq_lens.device, non_blocking=True)
        return _FreshPromptPlan(fresh, seq_lens, a)


register_backend("triton", TritonAttentionBackend)
