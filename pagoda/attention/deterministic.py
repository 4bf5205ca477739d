"""Batch-invariant paged attention for the CPU (``--deterministic``; pagoda.layers.batch_invariant).

Every query row's output is a function of its own query, its request's K/V and its position only: it does
not depend on the other requests of the step, on how its prompt was chunked, nor on the padding.

* Work items: ``QUERY_TILE`` consecutive query tokens of one request x the ``G`` query heads of one KV
  head = ``M = QUERY_TILE * G`` rows (missing tokens are zero rows, fully masked). Every matmul is a
  ``torch.bmm`` whose per-item shape is fixed for the model (``[M, D] x [D, KEY_BLOCK]`` and
  ``[M, KEY_BLOCK] x [KEY_BLOCK, D]``): measured on torch 2.13, a bmm item's rows do not depend on the
  number of items nor on the item's other rows at a fixed shape (tests/test_deterministic.py keeps that
  checked); across shapes they do, which is why no shape here depends on the step.
* Keys in blocks of ``KEY_BLOCK`` positions aligned to position 0. Softmax in float32 with the exact
  maximum over the row's visible keys (a max is order-free); ``exp`` of masked keys is exactly 0, so a
  block a row cannot see adds exact zeros. Per-block sums (of ``p`` and of ``p V``) are combined by a
  ``cumsum`` over blocks, a sequential scan in position order, and the last entry read: blocks past the
  row's last visible key add exact zeros, so the number of blocks an item was given does not matter.
* K/V slots past the request's length are zeroed after the gather (stale cache contents are never
  multiplied, not even by 0, which would turn an inf or NaN into NaN).
"""

from __future__ import annotations

import torch

from pagoda.attention.kv_quant import is_fp8, raw
from pagoda.attention.metadata import AttentionMetadata

KEY_BLOCK = 64
ROWS_PER_ITEM = 16
"""Target rows of a work item: ``QUERY_TILE = max(1, ROWS_PER_ITEM // G)`` tokens of ``G`` heads."""
GROUP_BYTES = 64 << 20
"""Items are processed in groups whose gathered float32 K/V stay under about this many bytes."""


def query_tile(group: int) -> int:
    return max(1, ROWS_PER_ITEM // group)


def _items(meta: AttentionMetadata, qt: int) -> list[tuple[int, int, int, int]]:
    """(request, first query row in the step, first position, tokens) per work item, in step order."""
    items = []
    start = 0
    for i, (q_len, s_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu, strict=True)):
        ctx = s_len - q_len
        for t in range(0, q_len, qt):
            items.append((i, start + t, ctx + t, min(qt, q_len - t)))
        start += q_len
    return items


def _gather(cache: torch.Tensor, bt: torch.Tensor, seq_lens: torch.Tensor, nblk: int) -> torch.Tensor:
    """cache [N, Hkv, bs, D]; bt [n, max_blocks]; -> float32 [n, Hkv, nblk, KEY_BLOCK, D], zero past seq_lens."""
    N, Hkv, bs, D = cache.shape
    n = bt.shape[0]
    pos = torch.arange(nblk * KEY_BLOCK, device=bt.device)
    col = (pos // bs).clamp(max=bt.shape[1] - 1)
    blocks = bt.long()[:, col]  # [n, L]
    heads = torch.arange(Hkv, device=bt.device)
    idx = (blocks[:, None, :] * Hkv + heads[None, :, None]) * bs + (pos % bs)[None, None, :]  # [n, Hkv, L]
    flat = raw(cache).view(N * Hkv * bs, D) if is_fp8(cache.dtype) else cache.view(N * Hkv * bs, D)
    g = flat.index_select(0, idx.reshape(-1))
    if is_fp8(cache.dtype):
        g = g.view(cache.dtype)
    g = g.float().view(n, Hkv, nblk, KEY_BLOCK, D)
    valid = (pos[None, :] < seq_lens[:, None]).view(n, 1, nblk, KEY_BLOCK, 1)
    return g.masked_fill_(~valid, 0.0)


def _attend_group(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qpos: torch.Tensor, scale: float,
                  window: int | None, cap: float | None) -> torch.Tensor:
    """q [n, Hkv, M, D] f32, k/v [n, Hkv, nb, KB, D] f32, qpos [n, M] (-1: padding row) -> [n, Hkv, M, D]."""
    n, hkv, m_rows, d = q.shape
    nb = k.shape[2]
    b = n * hkv * nb
    qb = q.unsqueeze(2).expand(n, hkv, nb, m_rows, d).reshape(b, m_rows, d)
    s = torch.bmm(qb, k.reshape(b, KEY_BLOCK, d).transpose(1, 2)).view(n, hkv, nb, m_rows, KEY_BLOCK)
    s = s * scale
    if cap is not None:
        s = torch.tanh(s / cap) * cap
    kpos = torch.arange(nb * KEY_BLOCK, device=q.device).view(1, nb, 1, KEY_BLOCK)
    rowpos = qpos.view(n, 1, m_rows, 1)
    visible = kpos <= rowpos
    if window is not None:
        visible &= kpos > rowpos - window
    s = s.masked_fill_(~visible.unsqueeze(1), float("-inf"))
    mx = s.amax(dim=(2, 4))  # [n, hkv, M]: exact
    mx = torch.where(mx == float("-inf"), torch.zeros_like(mx), mx)
    p = torch.exp(s - mx[:, :, None, :, None])
    l_sum = p.sum(-1).cumsum(2)[:, :, -1]  # [n, hkv, M]
    pv = torch.bmm(p.view(b, m_rows, KEY_BLOCK), v.reshape(b, KEY_BLOCK, d)).view(n, hkv, nb, m_rows, d)
    o = pv.cumsum(2)[:, :, -1]
    return o / torch.where(l_sum == 0, torch.ones_like(l_sum), l_sum).unsqueeze(-1)


def attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
              scale: float, window: int | None = None, cap: float | None = None) -> torch.Tensor:
    """query [T, H, D]; caches [N, Hkv, bs, D] (the torch backend's HND layout) -> [T, H, D]."""
    T, H, D = query.shape
    hkv = k_cache.shape[1]
    g = H // hkv
    qt = query_tile(g)
    rows = qt * g
    out = torch.zeros_like(query)
    items = _items(meta, qt)
    per_item = 2 * hkv * KEY_BLOCK * D * 4
    start = 0
    while start < len(items):
        end, nblk = start, 1
        while end < len(items):
            need = max(nblk, -(-(items[end][2] + items[end][3]) // KEY_BLOCK))
            if end > start and (end - start + 1) * need * per_item > GROUP_BYTES:
                break
            nblk, end = need, end + 1
        _run_group(query, k_cache, v_cache, meta, items[start:end], nblk, qt, rows, scale, window, cap, out)
        start = end
    return out


def _run_group(query, k_cache, v_cache, meta, items, nblk, qt, rows, scale, window, cap, out) -> None:
    T, H, D = query.shape
    hkv = k_cache.shape[1]
    g = H // hkv
    dev = query.device
    req = torch.tensor([it[0] for it in items], device=dev)
    first_row = torch.tensor([it[1] for it in items], device=dev)
    first_pos = torch.tensor([it[2] for it in items], device=dev)
    count = torch.tensor([it[3] for it in items], device=dev)
    j = torch.arange(qt, device=dev)
    ok = j[None, :] < count[:, None]  # [n, qt]
    tok = torch.where(ok, first_row[:, None] + j[None, :], torch.zeros_like(ok, dtype=torch.long))
    qpos = torch.where(ok, first_pos[:, None] + j[None, :], torch.full_like(tok, -1))
    q = query[tok].float()  # [n, qt, H, D]
    q = q.masked_fill_(~ok[:, :, None, None], 0.0)
    q = q.view(-1, qt, hkv, g, D).permute(0, 2, 1, 3, 4).reshape(-1, hkv, rows, D)
    seq_lens = meta.seq_lens.long()[req]
    k = _gather(k_cache, meta.block_tables[req], seq_lens, nblk)
    v = _gather(v_cache, meta.block_tables[req], seq_lens, nblk)
    o = _attend_group(q, k, v, qpos.repeat_interleave(g, dim=1), scale, window, cap)  # [n, hkv, rows, D]
    o = o.view(-1, hkv, qt, g, D).permute(0, 2, 1, 3, 4).reshape(-1, qt, H, D)
    out[tok[ok]] = o[ok].to(out.dtype)
