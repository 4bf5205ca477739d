"""Batch-invariant paged attention for the CPU (``--deterministic``; pagoda.layers.batch_invariant).

Every query row's output is a function of its own query, its request's K/V and its position only: it does
not depend on the other requests of the step, on how its prompt was chunked, nor on padding.

* Query rows are the GEMMs' N dimension. A work item is up to ``MAX_COLUMNS`` columns (query token x head
  of one KV head's group) of one request; per KV head and key block of ``KEY_BLOCK`` positions (aligned to
  position 0) the scores are ``S^T = K_b Q^T`` (``[KEY_BLOCK, D] x [D, N]``) and the output
  ``V_b^T P`` (``[D, KEY_BLOCK] x [KEY_BLOCK, N]``); the softmax sums are per-block sums over a
  contiguous ``KEY_BLOCK`` (a fixed-size inner reduction).
  Measured on torch 2.13 (tests/test_deterministic.py keeps it checked): at a fixed M and K,
  a bmm column does not depend on N (for N >= ``MIN_COLUMNS``) nor on the number of batch items.
  So items are batched with N padded (to a power of two >= ``MIN_COLUMNS``), and K/V are gathered once per item.
  Only the GEMMs see the padding columns: the softmax works on the group's real columns (the first
  ``real_tok * G``; a decode item has 3 real columns of 18 with 3 query heads per KV head), and ``p`` is padded
  back with zero columns for the ``p V`` GEMM. Every step after the score GEMM is per column, so a column's
  value does not depend on how many columns are kept.
* GEMMs in the model dtype, as HF's eager attention (scores rounded to it, ``p`` rounded to it for
  ``p V``; float32 GEMMs cost about 4x here). K/V are gathered by whole cache blocks.
* Softmax in float32 with the exact maximum over the row's visible keys (a max is order-free); ``exp`` of
  masked keys is exactly 0, so a block a row cannot see adds exact zeros. Per-block sums are combined by a
  ``cumsum`` over blocks (a sequential scan in position order) whose last entry is read: blocks past the
  row's last visible key add exact zeros, so the number of blocks an item was given does not matter.
* The cache is allocated zeroed and only ever holds written K/V, so keys past a request's length (and the
  blocks a padded table points at) are finite: their scores are masked, ``p = 0`` times a finite ``v``
  adds exact zeros.
* The step's plan (items, gather indices, masks) is built once per step and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagoda.attention.kv_quant import is_fp8
from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.torch_ref import gather_heads

KEY_BLOCK = 64
MAX_COLUMNS = 2048
"""Query columns (tokens x heads of a group) of one work item; a longer prefill chunk is several items."""
GROUP_ELEMS = 24 << 20
"""Items are batched in groups whose float32 score tensor stays under about this many elements."""


@dataclass
class _Group:
    rows: torch.Tensor  # [n, ntok] token row of each item token (0 where padding: a real, finite row whose
    # output column is dropped; columns never mix)
    ok: torch.Tensor  # [n, ntok] bool
    cblocks: torch.Tensor  # [n, nbc] cache blocks covering positions [0, nblk * KEY_BLOCK)
    head_rows: torch.Tensor  # [n * Hkv * nbc] rows of the cache viewed as [N * Hkv, bs, D]
    dst: torch.Tensor  # step rows of the item tokens that are real
    src: torch.Tensor  # their index in the group's [n * ntok] outputs
    visible: torch.Tensor  # [n, 1, nblk, KEY_BLOCK, real_tok * G] bool
    nblk: int
    real_tok: int  # the most real tokens of an item in the group: its outputs are [n, real_tok, H, D]


_plan_cache: tuple[object, tuple, list[_Group]] | None = None


MIN_COLUMNS = 16
"""An item's GEMMs have at least this many columns: BLAS libraries take other kernels for a few columns (MKL's
fp32 GEMM for N < 12 on an AVX-512 AMD EPYC, N = 1 on an Intel machine), whose column values differ."""


def _width(tokens: int, group: int) -> int:
    """Padded tokens of an item: columns ``tokens * group`` rounded up to a power of two >= ``MIN_COLUMNS``."""
    cols = 1 << (max(MIN_COLUMNS, tokens * group) - 1).bit_length()
    return -(-cols // group)


def _items(meta: AttentionMetadata, group: int) -> list[tuple[int, int, int, int]]:
    """(request, first query row in the step, first position, tokens) per work item."""
    per = max(1, MAX_COLUMNS // group)
    items, start = [], 0
    for i, (q_len, s_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu, strict=True)):
        for t in range(0, q_len, per):
            items.append((i, start + t, s_len - q_len + t, min(per, q_len - t)))
        start += q_len
    return items


def _plan(meta: AttentionMetadata, group: int, hkv: int, bs: int, window: int | None,
          dev: torch.device) -> list[_Group]:
    """Items bucketed by padded width, then cut into groups of bounded size (cached for the step's layers)."""
    global _plan_cache
    key = (group, hkv, bs, window)
    if _plan_cache is not None and _plan_cache[0] is meta and _plan_cache[1] == key:
        return _plan_cache[2]
    buckets: dict[int, list[tuple[int, int, int, int]]] = {}
    for it in _items(meta, group):
        buckets.setdefault(_width(it[3], group), []).append(it)
    groups = []
    for ntok, its in sorted(buckets.items()):
        start = 0
        while start < len(its):
            end, nblk = start, 1
            while end < len(its):
                need = max(nblk, -(-(its[end][2] + its[end][3]) // KEY_BLOCK))
                if end > start and (end - start + 1) * need * KEY_BLOCK * ntok * group > GROUP_ELEMS:
                    break
                nblk, end = need, end + 1
            groups.append(_build(meta, its[start:end], ntok, nblk, group, hkv, bs, window, dev))
            start = end
    _plan_cache = (meta, key, groups)
    return groups


def _build(meta, items, ntok, nblk, group, hkv, bs, window, dev) -> _Group:
    req = torch.tensor([it[0] for it in items], device=dev)
    first_row = torch.tensor([it[1] for it in items], device=dev)
    first_pos = torch.tensor([it[2] for it in items], device=dev)
    count = torch.tensor([it[3] for it in items], device=dev)
    j = torch.arange(max(ntok, 1), device=dev)
    ok = j[None, :] < count[:, None]
    rows = torch.where(ok, first_row[:, None] + j[None, :], torch.zeros_like(first_row)[:, None])
    qpos = torch.where(ok, first_pos[:, None] + j[None, :], torch.full_like(rows, -1))
    qpos = qpos.repeat_interleave(group, dim=1)  # column c = token c // G, head c % G
    pos = torch.arange(nblk * KEY_BLOCK, device=dev)
    bt = meta.block_tables[req]
    cols = torch.arange(-(-nblk * KEY_BLOCK // bs), device=dev).clamp(max=bt.shape[1] - 1)
    cblocks = bt[:, cols]  # past the table: some block (finite, masked)
    kpos = pos.view(1, nblk, KEY_BLOCK, 1)
    colpos = qpos.view(-1, 1, 1, qpos.shape[1])
    visible = kpos <= colpos
    if window is not None:
        visible &= kpos > colpos - window
    heads = torch.arange(hkv, device=dev)
    head_rows = (cblocks.long()[:, None, :] * hkv + heads[None, :, None]).reshape(-1)
    real_tok = max(it[3] for it in items)
    src = ok[:, :real_tok].reshape(-1).nonzero().squeeze(1)
    dst = rows[:, :real_tok].reshape(-1)[src]
    visible = visible[..., : real_tok * group]
    return _Group(rows, ok, cblocks, head_rows, dst, src, visible.unsqueeze(1), nblk, real_tok)


def _gather(cache: torch.Tensor, g: _Group, dtype: torch.dtype) -> torch.Tensor:
    """cache [N, Hkv, bs, D], the group's whole cache blocks -> [n, Hkv, nblk, KEY_BLOCK, D] in ``dtype`` (an FP8
    cache upcast, unscaled)."""
    N, hkv, bs, D = cache.shape
    n, nbc = g.cblocks.shape
    if is_fp8(cache.dtype):
        kv = gather_heads(cache, g.cblocks, dtype)
    else:
        kv = cache.view(N * hkv, bs, D).index_select(0, g.head_rows).view(n, hkv, nbc * bs, D)
    return kv[:, :, : g.nblk * KEY_BLOCK].reshape(n, hkv, g.nblk, KEY_BLOCK, D)


def _attend(g: _Group, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float,
            cap: float | None) -> torch.Tensor:
    """Outputs [n, real_tok, H, D] (float32) of one group. The GEMMs run in the model dtype (as HF's eager
    attention: scores rounded to it, softmax in float32, ``p`` rounded to it for ``p V``)."""
    T, H, D = query.shape
    hkv = k_cache.shape[1]
    G = H // hkv
    n, ntok = g.rows.shape
    ncol, nb, dt = ntok * G, g.nblk, query.dtype
    rt = g.real_tok
    rc = rt * G  # real columns: the softmax's; the GEMMs' columns are padded to ncol
    q = query[g.rows]  # [n, ntok, H, D]
    qt = q.view(n, ntok, hkv, G, D).permute(0, 2, 4, 1, 3).reshape(n, hkv, 1, D, ncol)
    b = n * hkv * nb
    qt = qt.expand(n, hkv, nb, D, ncol).reshape(b, D, ncol)
    k = _gather(k_cache, g, dt)
    s = torch.bmm(k.view(b, KEY_BLOCK, D), qt).view(n, hkv, nb, KEY_BLOCK, ncol)
    s = (s if rc == ncol else s[..., :rc].contiguous()).float().mul_(scale)  # (contiguous first: 2x faster here)
    if cap is not None:
        s = torch.tanh(s / cap) * cap
    s = s.masked_fill_(~g.visible, float("-inf"))
    mx = s.amax(dim=(2, 3)).nan_to_num_(neginf=0.0)  # [n, hkv, rc]: exact; 0 for a padding column
    p = torch.exp(s.sub_(mx[:, :, None, None, :]))
    den = p.transpose(3, 4).contiguous().sum(-1).cumsum(2)[:, :, -1]  # [n, hkv, rc]: fixed-size inner sums
    v = _gather(v_cache, g, dt)
    pp = p.to(dt)
    if rc < ncol:
        pp = torch.nn.functional.pad(pp, (0, ncol - rc))  # zero columns: the GEMM's column count stays ncol
    o = torch.bmm(v.view(b, KEY_BLOCK, D).transpose(1, 2), pp.view(b, KEY_BLOCK, ncol))
    o = o.view(n, hkv, nb, D, ncol)[..., :rc].float().cumsum(2)[:, :, -1]  # [n, hkv, D, rc]
    out = o / den.clamp_min_(1e-30).unsqueeze(2)  # a real column has den >= 1 (its max key gives exp(0))
    return out.view(n, hkv, D, rt, G).permute(0, 3, 1, 4, 2).reshape(n, rt, H, D)


def attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
              scale: float, window: int | None = None, cap: float | None = None) -> torch.Tensor:
    """query [T, H, D]; caches [N, Hkv, bs, D] (the torch backend's HND layout) -> [T, H, D]. bf16 and float32 run
    the native per-row kernel where it builds (:mod:`pagoda.attention.cpu_det_native`), everything else this
    module's batched GEMMs."""
    from pagoda.attention import cpu_det_native

    if cpu_det_native.eligible(query, k_cache):
        return cpu_det_native.attention(query, k_cache, v_cache, meta, scale, window, cap)
    H = query.shape[1]
    out = torch.zeros_like(query)
    hkv = k_cache.shape[1]
    for g in _plan(meta, H // hkv, hkv, k_cache.shape[2], window, query.device):
        o = _attend(g, query, k_cache, v_cache, scale, cap)
        out[g.dst] = o.reshape(-1, H, query.shape[2]).index_select(0, g.src).to(out.dtype)
    return out
