"""Slow, obviously-correct PyTorch paged attention: the oracle for kernel tests.

Everything here is a plain per-request / per-token Python loop in fp32, written to
be read rather than to be fast. It follows the layout contract of
:mod:`pagoda.attention.metadata` literally:

* request ``i`` owns query rows ``query_start_loc[i] : query_start_loc[i+1]``;
* its new tokens sit at positions ``seq_lens[i] - q_len … seq_lens[i] - 1`` and
  attend to every key at a position ``<=`` their own;
* the key at position ``p`` lives in physical block ``block_tables[i, p // bs]``
  at offset ``p % bs``;
* query head ``h`` reads KV head ``h // (H // Hkv)``;
* with ``sliding_window = W`` a query at position ``p`` sees only keys at positions ``> p - W``
  (``W`` keys, itself included: HF's ``sliding_window_overlay``); with ``logits_soft_cap = c`` the
  scaled scores ``s`` become ``c * tanh(s / c)`` before the mask (Gemma 2).

An FP8 cache follows :mod:`pagoda.attention.kv_quant` literally: written with ``quantize``
(divide by the scale, saturate, round), read with ``dequantize`` (upcast, times the scale).

Only the device tensors of the metadata are read (not the host copies), so a test
that builds inconsistent host copies cannot fool the oracle.
"""

from __future__ import annotations

import torch

from pagoda.attention.kv_quant import dequantize, quantize
from pagoda.attention.metadata import AttentionMetadata


def ref_write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # int64 [T]; negative = skip
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Write token ``t``'s K/V into slot ``slot_mapping[t]`` (skipping negative slots)."""
    block_size = k_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        block, offset = divmod(slot, block_size)
        k_cache[block, offset] = quantize(key[t], k_scale, k_cache.dtype)
        v_cache[block, offset] = quantize(value[t], v_scale, v_cache.dtype)


def gather_kv(
    cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_table_row: torch.Tensor,  # [max_blocks]
    seq_len: int,
) -> torch.Tensor:
    """Return the first ``seq_len`` cached positions of one request: ``[seq_len, Hkv, D]``."""
    block_size = cache.shape[1]
    rows = []
    for pos in range(seq_len):
        block = int(block_table_row[pos // block_size])
        rows.append(cache[block, pos % block_size])
    return torch.stack(rows) if rows else cache.new_zeros((0,) + tuple(cache.shape[2:]))


def ref_paged_attention(
    query: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> torch.Tensor:
    """Causal GQA attention of each request's new queries over its cached keys.

    Rows of ``query`` not owned by any request (padding past ``query_start_loc[-1]``)
    are returned as zeros.
    """
    num_heads = query.shape[1]
    num_kv_heads = k_cache.shape[2]
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    group = num_heads // num_kv_heads

    out = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
    starts = meta.query_start_loc.tolist()
    seq_lens = meta.seq_lens.tolist()
    for i, seq_len in enumerate(seq_lens):
        q_start, q_end = starts[i], starts[i + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        if q_len > seq_len:
            raise ValueError(f"request {i}: q_len {q_len} > seq_len {seq_len}")
        k = dequantize(gather_kv(k_cache, meta.block_tables[i], seq_len), k_scale)  # fp32 [S, Hkv, D]
        v = dequantize(gather_kv(v_cache, meta.block_tables[i], seq_len), v_scale)
        k = k.repeat_interleave(group, dim=1)  # [S, H, D]
        v = v.repeat_interleave(group, dim=1)
        q = query[q_start:q_end].float()  # [q_len, H, D]

        scores = torch.einsum("qhd,khd->hqk", q, k) * scale  # [H, q_len, S]
        if logits_soft_cap:
            scores = logits_soft_cap * torch.tanh(scores / logits_soft_cap)
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)
        k_pos = torch.arange(seq_len, device=query.device)
        allowed = k_pos[None, :] <= q_pos[:, None]  # [q_len, S]
        if sliding_window is not None:
            allowed &= k_pos[None, :] > q_pos[:, None] - sliding_window
        scores = scores.masked_fill(~allowed[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_start:q_end] = torch.einsum("hqk,khd->qhd", probs, v)
    return out.to(query.dtype)
