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

A layer's sliding window is one more mask term (keys at positions ``<= p - W`` hidden; the cache
still holds them); a logit soft-cap (``c * tanh(s / c)``, Gemma 2) makes prefill compute its scores
explicitly, as SDPA has no soft-cap.
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
    batch_invariant = False  # set by the model runner in --deterministic mode (attention/deterministic.py)

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
                k_scale: float = 1.0, v_scale: float = 1.0, sliding_window: int | None = None,
                logits_soft_cap: float | None = None) -> torch.Tensor:
        win, cap = sliding_window, logits_soft_cap
        if not is_fp8(k_cache.dtype):
            return self._forward(query, k_cache, v_cache, meta, scale, win, cap)
        out = self._forward(query, k_cache, v_cache, meta, scale * k_scale, win, cap)
        return out if v_scale == 1.0 else out.mul_(v_scale)

    def _forward(self, query, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                 win: int | None, cap: float | None) -> torch.Tensor:
        if self.batch_invariant:  # --deterministic
            from pagoda.attention import deterministic

            return deterministic.attention(query, k_cache, v_cache, meta, scale, win, cap)
        if meta.is_decode_only:
            return self._decode(query, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, win, cap)
        out = torch.empty_like(query)
        q_lens, s_lens = meta.query_lens_cpu, meta.seq_lens_cpu
        starts = [0]
        for q in q_lens:
            starts.append(starts[-1] + q)
        decode_idx = [i for i, q in enumerate(q_lens) if q == 1]
        if decode_idx:
            rows = torch.tensor([starts[i] for i in decode_idx], device=query.device)
            idx = torch.tensor(decode_idx, device=query.device)
            o = self._decode(query[rows], k_cache, v_cache, meta.block_tables[idx], meta.seq_lens[idx], scale,
                             win, cap)
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
            out[starts[i] : starts[i] + q_len] = _prefill(q, k, v, scale, win, cap)[0].transpose(0, 1)
        return out

    @staticmethod
    def _decode(query, k_cache, v_cache, block_tables, seq_lens, scale, window=None, cap=None):
        """query [B, H, D]; every request has exactly one new token."""
        B, H, D = query.shape
        Hkv = k_cache.shape[1]
        G = H // Hkv
        k = gather_heads(k_cache, block_tables, query.dtype)  # [B, Hkv, L, D]
        v = gather_heads(v_cache, block_tables, query.dtype)
        L = k.shape[2]
        q = query.view(B, Hkv, G, D)  # a KV head's G query heads act as G query rows of one SDPA call
        kpos = torch.arange(L, device=query.device)[None, :]
        keep = kpos < seq_lens[:, None]
        if window is not None:
            keep &= kpos > seq_lens[:, None] - 1 - window
        if cap is None:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep.view(B, 1, 1, L), scale=scale)
            return o.reshape(B, H, D)  # [B, Hkv, G, D] -> [B, H, D]
        scores = torch.matmul(q, k.transpose(2, 3)).float() * scale  # [B, Hkv, G, L]; SDPA has no soft-cap
        scores = torch.tanh(scores / cap) * cap
        scores.masked_fill_(~keep.view(B, 1, 1, L), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        return torch.matmul(probs, v).reshape(B, H, D)


def _prefill(q, k, v, scale: float, window: int | None, cap: float | None) -> torch.Tensor:
    """One request's chunk: q [1, H, Q, D] at the last Q of S positions, k/v [1, Hkv, S, D]."""
    q_len, s_len = q.shape[2], k.shape[2]
    if q_len == s_len and window is None and cap is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    qpos = torch.arange(q_len, device=q.device) + (s_len - q_len)
    kpos = torch.arange(s_len, device=q.device)[None, :]
    mask = kpos <= qpos[:, None]
    if window is not None:
        mask &= kpos > qpos[:, None] - window
    if cap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)).float() * scale
    scores = torch.tanh(scores / cap) * cap
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


register_backend("torch", TorchAttentionBackend)
