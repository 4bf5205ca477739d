"""Bidirectional (encoder) attention over a step's batch: each sequence attends to all of its own tokens and
to nothing else, with no KV cache.

The step's tokens arrive flattened (rows of sequence ``i`` are ``query_start_loc[i] : query_start_loc[i + 1]``,
as in :mod:`pagoda.attention.metadata`). CUDA half precision uses torch's ``varlen_attn`` (FlashAttention
over the packed rows, one launch per layer). Elsewhere an :class:`EncoderPlan`, built once per step, sorts
the sequences by length and cuts them into a few groups of similar length; the encoder runs the whole step
in the plan's *grouped layout* (each group ``count x length`` rows, shorter sequences padded), entered with
one gather of the input ids and left with one gather of the last hidden state, so every layer's attention
is one SDPA call per group on a view of the qkv rows (no copies), with a key mask where a group is padded.
Padding costs ``rows / tokens - 1`` extra linear work, kept under ``PAD_WASTE``.

Invariants: a padding row repeats the last real row of its sequence (finite values) and is masked as a key,
so no real row sees padding or another sequence; padding rows are dropped by the gather back. When the
sequences are already in grouped order with no padding, the grouped layout is the flat one (no gathers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# A group's rows (members x longest) may exceed its tokens by this factor before a new group starts: fewer,
# larger attention calls against a little wasted linear work (the padded attention work stays under its square).
PAD_WASTE = 1.1


@dataclass(frozen=True)
class AttnGroup:
    offset: int  # first padded row of the group
    count: int  # sequences in the group
    length: int  # padded length (the group's longest sequence)
    mask: torch.Tensor | None  # additive key mask [count, 1, 1, length] (0 / -inf); None when nothing is padded


@dataclass(frozen=True)
class EncoderPlan:
    """A step's grouped layout: ``gather`` [P] maps grouped rows to token rows, ``unpad`` [T] token rows to
    grouped rows; both None when the grouped layout is the flat one."""

    groups: tuple[AttnGroup, ...]
    gather: torch.Tensor | None
    unpad: torch.Tensor | None
    varlen: tuple[torch.Tensor, int] | None = None  # (cu_seqlens int32, max length) for the CUDA path


def _groups(lens: list[int]) -> list[list[int]]:
    """Sequence indices, longest first (ties in step order), cut into groups whose rows stay within
    ``PAD_WASTE`` times their tokens."""
    order = sorted(range(len(lens)), key=lambda i: -lens[i])
    out: list[list[int]] = []
    tokens = 0
    for i in order:
        n = lens[i]
        if out and (len(out[-1]) + 1) * lens[out[-1][0]] <= PAD_WASTE * (tokens + n):
            out[-1].append(i)
            tokens += n
        else:
            out.append([i])
            tokens = n
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
    """qkv: [P, 3 * H * D] in the plan's grouped layout (q, then k, then v, heads inside each) -> [P, H * D]."""
    P, hd = qkv.shape[0], qkv.shape[1] // 3
    d = hd // num_heads
    if plan.varlen is not None:
        from torch.nn.attention.varlen import varlen_attn

        cu, m = plan.varlen
        q, k, v = qkv.view(P, 3, num_heads, d).unbind(1)
        return varlen_attn(q, k, v, cu, cu, m, m, scale=scale).reshape(P, hd)  # type: ignore[union-attr]
    outs = []
    for g in plan.groups:
        rows = qkv[g.offset : g.offset + g.count * g.length].view(g.count, g.length, 3, num_heads, d)
        q, k, v = (t.transpose(1, 2) for t in rows.unbind(2))  # [G, H, m, D] views
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, scale=scale)
        outs.append(o.transpose(1, 2).reshape(g.count * g.length, hd))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def to_grouped(x: torch.Tensor, plan: EncoderPlan) -> torch.Tensor:
    """Flat rows [T, ...] -> the grouped layout [P, ...]."""
    return x if plan.gather is None else x.index_select(0, plan.gather)


def to_flat(x: torch.Tensor, plan: EncoderPlan) -> torch.Tensor:
    """Grouped rows [P, ...] -> the flat layout [T, ...] (padding rows dropped)."""
    return x if plan.unpad is None else x.index_select(0, plan.unpad)
