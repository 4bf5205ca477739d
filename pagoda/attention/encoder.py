"""Bidirectional (encoder) attention over a step's flattened batch: each sequence attends to all of its own
tokens and to nothing else, with no KV cache.

Rows of sequence ``i`` are ``query_start_loc[i] : query_start_loc[i + 1]`` (the same layout as
:mod:`pagoda.attention.metadata`); nothing is padded outside attention. CUDA half precision uses torch's
``varlen_attn`` (FlashAttention over the packed rows, one launch per layer). Elsewhere an
:class:`EncoderPlan`, built once per step, sorts the sequences by length and packs them into a few groups of
similar length; each group is one padded SDPA call whose key mask hides the padding, so a layer costs two
row gathers (into the padded layout and back) and one SDPA call per group, instead of one call per sequence.

Invariant: padding slots repeat a real row of their own sequence and are masked as keys, so no query row
sees another sequence or a padding key; padded query rows are computed and then dropped by the gather back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# A group's padded attention work (members x longest^2) may exceed its real work (sum of length^2) by
# this factor before a new group starts: fewer, larger calls against a little wasted arithmetic.
GROUP_WASTE = 1.25


@dataclass(frozen=True)
class AttnGroup:
    offset: int  # first padded row of the group
    count: int  # sequences in the group
    length: int  # padded length (the group's longest sequence)
    mask: torch.Tensor | None  # additive key mask [count, 1, 1, length] (0 / -inf); None when nothing is padded


@dataclass(frozen=True)
class EncoderPlan:
    """A step's attention layout: ``gather`` [P] maps padded rows to token rows, ``unpad`` [T] token rows to
    padded rows; both None when the padded layout is the token layout itself (one group, no padding)."""

    groups: tuple[AttnGroup, ...]
    gather: torch.Tensor | None
    unpad: torch.Tensor | None
    varlen: tuple[torch.Tensor, int] | None = None  # (cu_seqlens int32, max length) for the CUDA path


def _groups(lens: list[int]) -> list[list[int]]:
    """Sequence indices, longest first, cut into groups whose padded work stays within ``GROUP_WASTE``."""
    order = sorted(range(len(lens)), key=lambda i: -lens[i])
    out: list[list[int]] = []
    work = 0
    for i in order:
        n = lens[i]
        if out and (len(out[-1]) + 1) * lens[out[-1][0]] ** 2 <= GROUP_WASTE * (work + n * n):
            out[-1].append(i)
            work += n * n
        else:
            out.append([i])
            work = n * n
    return out


def plan_encoder_attention(lens: list[int], query_start_loc: torch.Tensor, dtype: torch.dtype) -> EncoderPlan:
    """The plan for a step whose sequences have ``lens`` tokens (host list) at ``query_start_loc`` [B+1]."""
    dev = query_start_loc.device
    if dev.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        except ImportError:  # torch < 2.10: the grouped path below
            pass
        else:
            return EncoderPlan((), None, None, (query_start_loc.to(torch.int32), max(lens)))
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + n)
    groups: list[AttnGroup] = []
    gather: list[int] = []
    unpad = [0] * starts[-1]
    for members in _groups(lens):
        m = lens[members[0]]
        padded = any(lens[i] != m for i in members)
        mask = torch.zeros(len(members), 1, 1, m, dtype=dtype) if padded else None
        for j, i in enumerate(members):
            s, n = starts[i], lens[i]
            base = len(gather)
            gather.extend(range(s, s + n))
            gather.extend([s + n - 1] * (m - n))
            unpad[s : s + n] = range(base, base + n)
            if mask is not None and n < m:
                mask[j, ..., n:] = float("-inf")
        groups.append(AttnGroup(len(gather) - len(members) * m, len(members), m,
                                mask.to(dev) if mask is not None else None))
    if gather == list(range(starts[-1])):
        return EncoderPlan(tuple(groups), None, None)
    return EncoderPlan(tuple(groups), torch.tensor(gather, device=dev), torch.tensor(unpad, device=dev))


def encoder_attention(qkv: torch.Tensor, plan: EncoderPlan, num_heads: int, scale: float) -> torch.Tensor:
    """qkv: [T, 3 * H * D] (q, then k, then v, heads inside each) -> attention output [T, H * D]."""
    T, hd = qkv.shape[0], qkv.shape[1] // 3
    d = hd // num_heads
    if plan.varlen is not None:
        from torch.nn.attention.varlen import varlen_attn

        cu, m = plan.varlen
        q, k, v = qkv.view(T, 3, num_heads, d).unbind(1)
        return varlen_attn(q, k, v, cu, cu, m, m, scale=scale).reshape(T, hd)  # type: ignore[union-attr]
    x = qkv if plan.gather is None else qkv.index_select(0, plan.gather)
    outs = []
    for g in plan.groups:
        rows = x[g.offset : g.offset + g.count * g.length].view(g.count, g.length, 3, num_heads, d)
        q, k, v = (t.transpose(1, 2) for t in rows.unbind(2))  # [G, H, m, D] views
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, scale=scale)
        outs.append(o.transpose(1, 2).reshape(g.count * g.length, hd))
    o = outs[0] if len(outs) == 1 else torch.cat(outs)
    return o if plan.unpad is None else o.index_select(0, plan.unpad)
