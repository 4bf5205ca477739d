"""Bidirectional (encoder) attention over a step's flattened batch: each sequence attends to all of its own
tokens and to nothing else, with no KV cache.

Rows of sequence ``i`` are ``query_start_loc[i] : query_start_loc[i + 1]`` (the same layout as
:mod:`pagoda.attention.metadata`); nothing is padded. CUDA half precision uses torch's
``varlen_attn`` (FlashAttention over the packed rows, one launch per layer); elsewhere each sequence is
one SDPA call, and sequences of equal length are stacked into one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def encoder_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_start_loc: torch.Tensor,
                      lens: list[int], scale: float) -> torch.Tensor:
    """q, k, v: [T, H, D] -> [T, H, D]; ``lens``: each sequence's length (host), ``query_start_loc`` [B+1]."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:  # torch < 2.10: the per-length path below
            pass
        else:
            cu = query_start_loc.to(torch.int32)
            m = max(lens)
            return varlen_attn(q, k, v, cu, cu, m, m, scale=scale)  # type: ignore[return-value]
    return _per_length(q, k, v, lens, scale)


def _per_length(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: list[int], scale: float) -> torch.Tensor:
    """One SDPA call per distinct length, over the sequences of that length."""
    out = torch.empty_like(q)
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + n)
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(lens):
        by_len.setdefault(n, []).append(starts[i])
    for n, ss in by_len.items():
        if len(ss) == 1:
            s = ss[0]
            qs, ks, vs = (t[s : s + n].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            out[s : s + n] = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)[0].transpose(0, 1)
            continue
        idx = torch.cat([torch.arange(s, s + n) for s in ss]).to(q.device)
        qs, ks, vs = (t.index_select(0, idx).view(len(ss), n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)  # [G, H, n, D]
        out.index_copy_(0, idx, o.transpose(1, 2).reshape(-1, *q.shape[1:]))
    return out
