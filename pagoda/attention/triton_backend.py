"""The "triton" attention backend (default on CUDA).

Triton itself is imported on first use, so importing this module (and ``pagoda``)
never requires triton; only calling ``write_kv``/``forward`` does.
Kernels and their design: :mod:`pagoda.attention.triton_kernels`.
"""

from __future__ import annotations

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


KV_LAYOUT = "NHD_BY_HEAD"
"""The caches' memory layout (:data:`pagoda.worker.kv_cache.KV_LAYOUTS`); read when the caches are allocated.
``NHD_BY_HEAD`` since session 33 (H100, RESULTS.md): 256 decode rows over 540 keys 142.9 -> 139.2 us a layer over an
FP8 cache, 198.1 -> 196.8 over bf16; ShareGPT-like throughput FP8 + FP8 KV 61.21 -> 61.82 req/s, bf16 50.56 -> 50.81."""


class TritonAttentionBackend(AttentionBackend):
    """Paged attention with Triton kernels.

    ``forward`` uses the split-KV (flash-decoding) kernels when the step is decode-only
    and the batch alone would leave SMs idle (see ``choose_num_splits``), and, with ``UNSPLIT_DECODE_KERNEL`` on
    (on by default since session 44), the same kernel with one split for larger decode batches; every other
    step — prefill, chunked prefill, mixed — goes through the
    unified kernel, whose KV range is split too when a small chunk over a long cached
    context would leave SMs idle (``choose_chunk_splits``: eager steps and the verify graphs).
    """

    name = "triton"

    @property
    def kv_layout(self) -> str:
        return KV_LAYOUT

    batch_invariant = False  # --deterministic: one fixed tile config, no KV split (set by the model runner)

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> None:
        _kernels().write_kv(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale)

    def num_splits(self, query: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata) -> int:
        """KV splits this step would use (1 = the unified kernel)."""
        if not meta.is_decode_only or self.batch_invariant:
            return 1
        tk = _kernels()
        bound = meta.split_kv_len or meta.max_seq_len
        return tk.choose_num_splits(meta.num_seqs, k_cache.shape[2], bound, tk.num_sms(query.device))

    def forward(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
    ) -> torch.Tensor:
        tk = _kernels()
        win_cap = {"sliding_window": sliding_window, "logits_soft_cap": logits_soft_cap}
        num_real_tokens = sum(meta.query_lens_cpu)
        splits = self.num_splits(query, k_cache, meta)
        if splits > 1:
            return tk.split_kv_decode(
                query, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
                scale, splits, num_real_tokens=num_real_tokens, k_scale=k_scale, v_scale=v_scale,
                kv_bound=meta.split_kv_len or meta.max_seq_len, **win_cap,
            )
        if self.batch_invariant:  # every row: the same tiles, KV blocks from position 0, in order
            return tk.unified_attention(
                query, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
                meta.max_query_len, scale, num_real_tokens=num_real_tokens, k_scale=k_scale, v_scale=v_scale,
                **tk.batch_invariant_tiles(query, k_cache), **win_cap,
            )
        if meta.is_decode_only and tk.UNSPLIT_DECODE_KERNEL:  # a large decode batch: a program per request
            return tk.split_kv_decode(
                query, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
                scale, 1, num_real_tokens=num_real_tokens, k_scale=k_scale, v_scale=v_scale, **win_cap,
            )
        chunk_splits = 1
        if not meta.is_decode_only:  # eager steps, and the verify graphs (their max_seq_len is max_model_len)
            G = query.shape[1] // k_cache.shape[2]
            chunk_splits = tk.choose_chunk_splits(
                query.shape[0], meta.num_seqs, k_cache.shape[2], G, query.shape[2],
                meta.max_query_len, meta.max_seq_len, tk.num_sms(query.device),
                min_context=0 if meta.in_cuda_graph else tk.MIN_CONTEXT_FOR_CHUNK_SPLIT,
            )
        return tk.unified_attention(
            query, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
            meta.max_query_len, scale, num_real_tokens=num_real_tokens, num_splits=chunk_splits,
            k_scale=k_scale, v_scale=v_scale, **win_cap,
        )


register_backend("triton", TritonAttentionBackend)
