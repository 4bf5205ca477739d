"""PyTorch paged attention (the CPU backend, and the fallback everywhere).

Layout: this backend keeps each layer's cache as ``[num_blocks, num_kv_heads,
block_size, head_dim]`` (``kv_layout = "HND"``), unlike the Triton backend's
``[num_blocks, block_size, num_kv_heads, head_dim]``. Viewing the cache as
``[num_blocks * num_kv_heads, block_size, head_dim]``, one ``index_select`` with indices
``block * num_kv_heads + head`` gathers a request's K (or V) directly as
``[B, num_kv_heads, context, head_dim]``: the layout the attention matmuls want, with no
permute copy. (With the other layout, gather + permute + strided matmuls took about 3×
as long at batch 32 on the CPU.)

Decode rows (one query token) are batched into one SDPA call: each KV head's group of query
heads is that call's query rows (K/V never repeated), with a length mask. On the 2-core CPU
(bf16, 9 heads / 3 KV heads of 64, loaded VM) this took 52 us against 394 us for the former
two matmuls + float softmax at batch 1 (context 100), and 1.1 ms against 2.2 ms at batch 32.
Prefill chunks are attended one request at a time with SDPA and a causal mask offset by the request's cached length.

An FP8 cache (``--kv-cache-dtype fp8``) is gathered as bytes and upcast to the query dtype per
step (exact: every FP8 value is representable in bf16/fp16/fp32); ``k_scale`` is folded into the
softmax scale and ``v_scale`` multiplies the output, the same arithmetic as scaling K and V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagoda.attention.backend import AttentionBackend, register_backend
from pagoda.attention.kv_quant import is_fp8, quantize, raw
from pagoda.attention.metadata import AttentionMetadata


def gather_heads(cache: torch.Tensor, block_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """cache [N, Hkv, bs, D], block_ids [B, nb] -> [B, Hkv, nb*bs, D] (contiguous); an FP8 cache is
    gathered as bytes and upcast to ``dtype`` (unscaled)."""
    N, Hkv, bs, D = cache.shape
    B, nb = block_ids.shape
    heads = torch.arange(Hkv, device=block_ids.device, dtype=torch.long)
    idx = (block_ids.long().unsqueeze(1) * Hkv + heads.view(1, Hkv, 1)).reshape(-1)
    if not is_fp8(cache.dtype):
        return cache.view(N * Hkv, bs, D).index_select(0, idx).view(B, Hkv, nb * bs, D)
    rows = raw(cache).view(N * Hkv, bs, D).index_select(0, idx).view(cache.dtype)
    return rows.to(dtype or torch.float32).view(B, Hkv, nb * bs, D)


class TorchAttentionBackend(AttentionBackend):
    name = "torch"
    kv_layout = "HND"

    def write_kv(self, key, value, k_cache, v_cache, slot_mapping, k_scale=1.0, v_scale=1.0):
        bs = k_cache.shape[2]
        if slot_mapping.device.type == "cpu" and bool((slot_mapping < 0).any()):
            keep = slot_mapping >= 0
            slot_mapping, key, value = slot_mapping[keep], key[keep], value[keep]
        blk = torch.div(slot_mapping, bs, rounding_mode="floor")
        off = slot_mapping - blk * bs
        # [T, Hkv, D] into (block, :, offset); FP8 scattered as bytes
        raw(k_cache)[blk, :, off] = raw(quantize(key, k_scale, k_cache.dtype))
        raw(v_cache)[blk, :, off] = raw(quantize(value, v_scale, v_cache.dtype))

    def forward(self, query, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                k_scale: float = 1.0, v_scale: float = 1.0) -> torch.Tensor:
        if not is_fp8(k_cache.dtype):
            return self._forward(query, k_cache, v_cache, meta, scale)
        out = self._forward(query, k_cache, v_cache, meta, scale * k_scale)
        return out if v_scale == 1.0 else out.mul_(v_scale)

    def _forward(self, query, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.is_decode_only:
            return self._decode(query, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale)
        out = torch.empty_like(query)
        q_lens, s_lens = meta.query_lens_cpu, meta.seq_lens_cpu
        starts = [0]
        for q in q_lens:
            starts.append(starts[-1] + q)
        decode_idx = [i for i, q in enumerate(q_lens) if q == 1]
        if decode_idx:
            rows = torch.tensor([starts[i] for i in decode_idx], device=query.device)
            idx = torch.tensor(decode_idx, device=query.device)
            o = self._decode(query[rows], k_cache, v_cache, meta.block_tables[idx], meta.seq_lens[idx], scale)
            out[rows] = o
        bs = k_cache.shape[2]
        for i, (q_len, s_len) in enumerate(zip(q_lens, s_lens, strict=True)):
            if q_len == 1:
                continue
            nb = -(-s_len // bs)
            blocks = meta.block_tables[i : i + 1, :nb]
            k = gather_heads(k_cache, blocks, query.dtype)[:, :, :s_len]
            v = gather_heads(v_cache, blocks, query.dtype)[:, :, :s_len]
            q = query[starts[i] : starts[i] + q_len].transpose(0, 1).unsqueeze(0)
            if q_len == s_len:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
            else:
                offset = s_len - q_len
                qpos = torch.arange(q_len, device=query.device) + offset
                mask = torch.arange(s_len, device=query.device)[None, :] <= qpos[:, None]
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
            out[starts[i] : starts[i] + q_len] = o[0].transpose(0, 1)
        return out

    @staticmethod
    def _decode(query, k_cache, v_cache, block_tables, seq_lens, scale):
        """query [B, H, D]; every request has exactly one new token."""
        B, H, D = query.shape
        Hkv = k_cache.shape[1]
        G = H // Hkv
        k = gather_heads(k_cache, block_tables, query.dtype)  # [B, Hkv, L, D]
        v = gather_heads(v_cache, block_tables, query.dtype)
        L = k.shape[2]
        q = query.view(B, Hkv, G, D)  # a KV head's G query heads act as G query rows of one SDPA call
        keep = torch.arange(L, device=query.device)[None, :] < seq_lens[:, None]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep.view(B, 1, 1, L), scale=scale)
        return o.reshape(B, H, D)  # [B, Hkv, G, D] -> [B, H, D]


register_backend("torch", TorchAttentionBackend)
