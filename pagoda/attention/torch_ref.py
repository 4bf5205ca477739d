"""PyTorch paged attention (the CPU backend, and the fallback everywhere).

Decode rows (one query token) are batched: their K/V are gathered through the block
tables into a padded ``[B, L, Hkv, D]`` view in one indexing op and attended with one
SDPA call and a length mask. Prefill chunks are attended one request at a time with a
causal mask offset by the request's cached length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagoda.attention.backend import AttentionBackend, register_backend
from pagoda.attention.metadata import AttentionMetadata


def _gather(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """cache [N, bs, Hkv, D], block_ids [..., nb] -> [..., nb*bs, Hkv, D]."""
    g = cache[block_ids]
    return g.reshape(*block_ids.shape[:-1], -1, cache.shape[2], cache.shape[3])


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def write_kv(self, key, value, k_cache, v_cache, slot_mapping):
        kc = k_cache.view(-1, k_cache.shape[2], k_cache.shape[3])
        vc = v_cache.view(-1, v_cache.shape[2], v_cache.shape[3])
        if slot_mapping.device.type == "cpu" and bool((slot_mapping < 0).any()):
            keep = slot_mapping >= 0
            slot_mapping, key, value = slot_mapping[keep], key[keep], value[keep]
        kc.index_copy_(0, slot_mapping, key.to(kc.dtype))
        vc.index_copy_(0, slot_mapping, value.to(vc.dtype))

    def forward(self, query, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.is_decode_only:
            return self._decode(query, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale)
        out = torch.empty_like(query)
        q_lens, s_lens = meta.query_lens_cpu, meta.seq_lens_cpu
        decode_idx = [i for i, q in enumerate(q_lens) if q == 1]
        starts = meta.query_start_loc.tolist() if meta.query_start_loc.device.type == "cpu" else None
        if starts is None:
            starts = [0]
            for q in q_lens:
                starts.append(starts[-1] + q)
        if decode_idx:
            rows = torch.tensor([starts[i] for i in decode_idx], device=query.device)
            idx = torch.tensor(decode_idx, device=query.device)
            o = self._decode(query[rows], k_cache, v_cache, meta.block_tables[idx], meta.seq_lens[idx], scale)
            out[rows] = o
        bs = k_cache.shape[1]
        for i, (q_len, s_len) in enumerate(zip(q_lens, s_lens)):
            if q_len == 1:
                continue
            nb = -(-s_len // bs)
            blocks = meta.block_tables[i, :nb]
            k = _gather(k_cache, blocks)[:s_len].transpose(0, 1).unsqueeze(0)
            v = _gather(v_cache, blocks)[:s_len].transpose(0, 1).unsqueeze(0)
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
        """query [B, H, D]; every request has exactly one new token.

        Two batched matmuls over the gathered, length-masked K/V (GQA heads grouped so
        K/V are never repeated); SDPA's CPU kernel is several times slower at this shape.
        """
        B, H, D = query.shape
        Hkv = k_cache.shape[2]
        G = H // Hkv
        k = _gather(k_cache, block_tables)  # [B, L, Hkv, D]
        v = _gather(v_cache, block_tables)
        L = k.shape[1]
        q = query.view(B, Hkv, G, D)
        scores = torch.matmul(q, k.permute(0, 2, 3, 1)).float() * scale  # [B, Hkv, G, L]
        pad = torch.arange(L, device=query.device)[None, :] >= seq_lens[:, None]
        scores.masked_fill_(pad.view(B, 1, 1, L), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        o = torch.matmul(probs, v.permute(0, 2, 1, 3))  # [B, Hkv, G, D]
        return o.reshape(B, H, D)


register_backend("torch", TorchAttentionBackend)
