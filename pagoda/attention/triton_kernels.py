"""Triton kernels for paged attention (CUDA; also run on CPU with ``TRITON_INTERPRET=1``).

Layout contract: :mod:`pagoda.attention.metadata`. Caches are
``[num_blocks, block_size, Hkv, D]`` with a unit stride on ``D``; queries and outputs
are ``[T, H, D]`` (any strides on ``T`` and ``H``, unit stride on ``D``).

Design
======

``write_kv`` (reshape-and-cache)
    Grid ``(T, cdiv(Hkv, BLOCK_H))``. A program copies a ``[BLOCK_H, D]`` slab of one
    token's K and V into ``slot = block * block_size + offset``. A negative slot turns
    the whole program's mask off (padding rows are skipped without a branch).

``unified_attention`` (prefill chunks, decode, and mixtures of both, in ONE launch)
    * Grid ``(T // BLOCK_Q + B, Hkv)``. Axis 0 enumerates query tiles: request ``i``
      owns tiles ``tile_start(i) = query_start_loc[i] // BLOCK_Q + i`` up to
      ``tile_start(i+1) - 1``. That range holds at least ``cdiv(q_len_i, BLOCK_Q)``
      tiles, so ``T // BLOCK_Q + B`` programs always cover every request; a program
      finds its request by a binary search of ``tile_start`` (strictly increasing in
      ``i``) over ``query_start_loc`` inside the kernel, and programs whose tile
      lies past their request's last row do no work. The grid depends only on
      ``T`` and ``B`` — nothing is built on the host per step, which keeps the
      launch CUDA-graph friendly.
    * GQA packing: a program owns ``BLOCK_Q`` query tokens x all ``G = H / Hkv`` query
      heads of one KV head, i.e. ``BLOCK_M >= BLOCK_Q * G`` rows (row ``r`` is token
      ``r // G``, head ``r % G``; rows past ``BLOCK_Q * G`` are masked). K and V of a
      KV tile are loaded once and serve all ``G`` heads.
    * KV loop: tiles of ``BLOCK_N`` positions (independent of the cache block size:
      each position looks up ``block_tables[i, pos // block_size]``, so a tile may
      span several cache blocks or part of one). ``S = Q K^T`` and ``P V`` use
      ``tl.dot`` (fp32 accumulate; fp32 inputs use ``input_precision="ieee"`` so
      fp32 models are not silently run in TF32). Online softmax in base 2 with
      ``scale * log2(e)`` folded into the scores; running max/sum/acc in fp32.
    * Causal masking with the position offset: query row at request index ``q``
      has position ``seq_len - q_len + q`` and sees keys at positions ``<=`` it.
      The loop stops at the tile's last query position + 1 (KV tiles beyond the
      causal limit are never loaded), and is split in two: tiles entirely below
      the tile's first query position run with no mask; only the tail tiles
      (at most ``cdiv(BLOCK_Q, BLOCK_N) + 1`` of them) pay for the mask.
    * Tile sizes (host heuristic, tuned on an H200 in bf16):
      ``BLOCK_M = clamp(next_pow2(G * max_query_len), 16, 64 if 64 < D <= 128 else 128)``,
      ``BLOCK_Q = BLOCK_M // G``, ``BLOCK_N = 64``, ``BLOCK_D = next_pow2(D)`` (>= 16;
      non-power-of-2 head dims are padded and masked); 8 warps for 128-row tiles,
      else 4; 2 pipeline stages. Decode-only steps thus get 16-row tiles (G heads
      of one token), prefill gets 64/128-row tiles. Rows wider than 512 bytes
      (fp32 with D > 128) use ``BLOCK_M <= 64`` and ``BLOCK_N = 32`` to fit shared
      memory (228 KiB on H100/H200).

    * Optional KV splits (``num_splits > 1``, grid axis 2): program ``(tile, h, s)``
      covers split ``s`` of its tile's key range ``[0, kv_end)`` (whole ``BLOCK_N`` tiles,
      unmasked part then causal tail, as above) and writes unnormalised partials per
      ``(token, head, split)``; ``_split_kv_reduce_kernel`` (``PER_TOKEN``) combines them.
      For small prefill chunks over long cached contexts, whose tiles alone leave SMs
      idle (:func:`choose_chunk_splits`); eager steps and the verify graphs.

``split_kv_decode`` + ``split_kv_reduce`` (flash-decoding; every request has q_len 1)
    * Grid ``(B, Hkv, S)``. Request ``i``'s KV range is cut into ``S`` chunks of
      ``cdiv(cdiv(seq_len_i, BLOCK_N), S)`` whole tiles; program ``(i, h, s)`` runs the
      same online-softmax loop over chunk ``s`` for the ``G`` heads of KV head ``h``
      and writes an unnormalised partial ``(m, l, acc)`` to an fp32 workspace
      ``[B, H, S(, D)]`` (an empty chunk writes ``m = -inf, l = 0``).
    * Reduce grid ``(B, H)``: ``M = max_s m_s``, ``w_s = 2^(m_s - M)``,
      ``out = sum_s w_s acc_s / sum_s w_s l_s``.
    * Split heuristic (:func:`choose_num_splits`): with ``B * Hkv`` programs already
      filling the GPU (``>= num_SMs``), no split. Otherwise aim at ``2 * num_SMs``
      programs, ``S = cdiv(2 * num_SMs, B * Hkv)``, capped so each split keeps at
      least ``MIN_TOKENS_PER_SPLIT = 64`` keys and at ``MAX_SPLITS = 64``. Example:
      H100 (132 SMs), B=1, Hkv=8, 1k context -> S = min(33, 16) = 16 -> 128 programs.
      The backend takes this path when the step is decode-only and ``S > 1``.

Measured once (H200, triton 3.6, bf16, Llama-3-8B attention shape H=32 Hkv=8 D=128,
block 16, GPU time inside a CUDA graph; peer = torch SDPA on *contiguous* KV, same run):
decode B=1 @1k: split 11.3 us vs SDPA 11.3 us (unified alone: 34 us); B=1 @32k: 55 vs
50 us; B=64 @2k: unified 139 us vs SDPA 137 us (HBM floor at 4.8 TB/s: 112 us);
causal prefill 8k tokens: 353 TFLOP/s vs SDPA 574. Host-side launch cost is about
45 us (unified) / 70 us (split, two launches), mostly Triton's Python launcher: run
decode steps under CUDA graphs. The split count follows ``max_seq_len``, so a
captured graph must be replayed only for steps that pick the same count.

Limits: head_dim <= 256; q heads a multiple of KV heads; fp32 / fp16 / bf16 (the
cache may have another float dtype than the query: it is converted on load).

FP8 KV cache (``float8_e4m3fn`` / ``float8_e5m2``, :mod:`pagoda.attention.kv_quant`):
``write_kv`` quantizes through :func:`pagoda.attention.fp8_triton.store_kv` (``/ scale``,
saturate, nearest-even); the attention kernels load the byte and convert it for dots in fp16 (a
bf16 or fp16 query; :func:`_dot_config`: e4m3 -> fp16 is one exact conversion per two codes, e4m3 -> bf16 three), a
bf16 query scaled into fp16's range by a constant (:func:`_query_tile`), ``k_scale`` folded into
``scale_log2`` on the host and ``v_scale`` applied to the kernel's output. A V tile is converted
in registers before its dot (``_attend_kv_range``), because left to the compiler the conversion
moves past shared memory and the n-major FP8 tile is read back byte by byte. Measured on an H200
at 256 decode rows (RESULTS.md, sessions 21 and 22): 192 -> 141 us per layer at 540 keys, below
the bf16 cache's 153 us.

Under the interpreter bf16 ``tl.dot`` operands are upcast to fp32 (numpy has no
bf16 matmul); on the GPU they stay bf16. The fp16 dots of an FP8 cache run as such in both.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from pagoda.attention.fp8_triton import fp8_code, store_kv
from pagoda.attention.kv_quant import is_fp8
from pagoda.layers.arrival_counters import arrival_counters
from pagoda.layers.pdl import launch_kwargs, pdl_launch_dependents, pdl_wait
from pagoda.layers.triton_mode import interpreted

MIN_TOKENS_PER_SPLIT = 64
MAX_SPLITS = 64
MAX_HEAD_DIM = 256
_DEFAULT_NUM_SMS = 132  # H100 SXM; used when not on CUDA (interpreter).
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CACHE_DTYPES = (*_SUPPORTED_DTYPES, torch.float8_e4m3fn, torch.float8_e5m2)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _write_kv_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    num_kv_heads,
    head_dim,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    k_scale,
    v_scale,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP8: tl.constexpr,  # 0: the cache's own dtype; 1/2: FP8 e4m3/e5m2 (fp8_triton.store_kv)
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads_to_write = tl.where(slot >= 0, num_kv_heads, 0)  # negative slot: write nothing
    mask = (h[:, None] < heads_to_write) & (d[None, :] < head_dim)

    k = tl.load(key_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
    v = tl.load(value_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
    kc = k_cache_ptr + block * stride_kcb + offset * stride_kcs + h[:, None] * stride_kch + d[None, :]
    vc = v_cache_ptr + block * stride_vcb + offset * stride_vcs + h[:, None] * stride_vch + d[None, :]
    store_kv(kc, k, k_scale, mask, FP8)
    store_kv(vc, v, v_scale, mask, FP8)


@triton.jit
def _tanh(x):
    """tanh from exp2 (Triton has no tanh in every backend); absolute error about 1e-7 in fp32."""
    t = tl.exp2(-2.8853900817779268 * tl.abs(x))  # exp(-2|x|)
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def _window_start(first_pos, last_pos, window, BLOCK_N: tl.constexpr):
    """(first KV tile start any row of the query range [first_pos, last_pos] sees under the window,
    first tile start from which every row sees every key, window-wise), both multiples of BLOCK_N."""
    lo = tl.maximum(first_pos - window + 1, 0)
    all_lo = tl.maximum(last_pos - window + 1, 0)
    return (lo // BLOCK_N) * BLOCK_N, tl.cdiv(all_lo, BLOCK_N) * BLOCK_N


@triton.jit
def _attend_kv_range(
    q,  # [BLOCK_M, BLOCK_D] (dot dtype)
    acc,  # [BLOCK_M, BLOCK_D] fp32
    m_i,  # [BLOCK_M] fp32, running max (log2 domain)
    l_i,  # [BLOCK_M] fp32, running sum
    kv_start,
    kv_end,
    q_pos,  # [BLOCK_M] int32, position of each query row
    bt_row_ptr,  # this request's block-table row
    k_cache_ptr,
    v_cache_ptr,
    kv_head,
    head_dim,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    scale_log2,  # the scores' multiplier (see _query_tile)
    window,  # sliding window W: keys at pos <= q_pos - W are hidden (a huge value = no window)
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,  # apply "pos < kv_end", causal "pos <= q_pos" and the window "pos > q_pos - W"
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SOFTCAP: tl.constexpr,  # logit soft-cap times log2(e) (0.0 = off): s -> C * tanh(s / C) in the log2 domain
):
    """Online-softmax accumulate over KV positions [kv_start, kv_end) of one KV head.

    Without MASKED the caller guarantees that every position in the range is
    visible to every (valid) query row and that the range is whole tiles.
    """
    offs_n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    k_head = k_cache_ptr + kv_head * stride_kch
    v_head = v_cache_ptr + kv_head * stride_vch
    for start in range(kv_start, kv_end, BLOCK_N):
        pos = start + offs_n
        if MASKED:
            pos_ok = pos < kv_end
            block = tl.load(bt_row_ptr + pos // BLOCK_SIZE, mask=pos_ok, other=0).to(tl.int64)
        else:
            pos_ok = offs_n < BLOCK_N  # all true
            block = tl.load(bt_row_ptr + pos // BLOCK_SIZE).to(tl.int64)
        offset = pos % BLOCK_SIZE
        k_ptrs = k_head + block[None, :] * stride_kcb + offset[None, :] * stride_kcs + d[:, None]
        k = tl.load(k_ptrs, mask=d_mask[:, None] & pos_ok[None, :], other=0.0)  # [BLOCK_D, BLOCK_N]
        s = tl.dot(q, k.to(DOT_DTYPE), input_precision=DOT_PRECISION) * scale_log2  # [M, N]
        if SOFTCAP > 0.0:
            s = SOFTCAP * _tanh(s / SOFTCAP)
        if MASKED:
            visible = pos_ok[None, :] & (pos[None, :] <= q_pos[:, None]) & (pos[None, :] > q_pos[:, None] - window)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Rows that have seen no visible key yet keep m = -inf; use 0 as their
        # reference so that no (-inf) - (-inf) = NaN appears.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = v_head + block[:, None] * stride_vcb + offset[:, None] * stride_vcs + d[None, :]
        v = tl.load(v_ptrs, mask=pos_ok[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        if v.dtype != DOT_DTYPE:
            # An FP8 cache: converted here, in registers, so the tile reaches the dot through shared memory as
            # DOT_DTYPE. A bare .to() is moved past shared memory by the compiler, and an FP8 V tile (n-major, 1
            # byte) is then read back byte by byte (no ldmatrix.trans for 8-bit); the where (its masked rows are 0
            # already) keeps the conversion here. The dot sees the same values either way.
            v = tl.where(pos_ok[:, None], v.to(DOT_DTYPE), 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


FP16_QUERY_SCALE = tl.constexpr(0.0625)
"""A bf16 query over an FP8 cache enters fp16 dots as ``q * FP16_QUERY_SCALE`` (2^-4; see :func:`_query_tile`)."""


@triton.jit
def _query_tile(q, scale_log2, DOT_DTYPE: tl.constexpr, Q_SCALED: tl.constexpr):
    """The query tile as the dots' operand, and the scores' multiplier.

    ``Q_SCALED`` (a bf16 query over an FP8 cache, dots in fp16; :func:`_dot_config`): the tile is multiplied by
    :data:`FP16_QUERY_SCALE` and the multiplier divided by it. For 2^-4: exact for |q| in [2^-10, 2^20) (a power
    of two scales without rounding, and fp16 keeps more mantissa bits than bf16), fp16 subnormals below (at most
    2^-21 off), saturated at 65504 * 16 above, as the FP8 cache saturates K and V. The factor is a constant on
    purpose: one taken from the tile's absmax cost 30 registers a thread, a program per SM and ~15 % of the kernel on
    an H200 (RESULTS.md, session 22).
    """
    if Q_SCALED:
        q_dot = tl.clamp(q.to(tl.float32) * FP16_QUERY_SCALE, -65504.0, 65504.0).to(DOT_DTYPE)
        mult = scale_log2 / FP16_QUERY_SCALE
    else:
        q_dot = q.to(DOT_DTYPE)
        mult = scale_log2
    return q_dot, mult


@triton.jit
def _find_request(query_start_loc_ptr, num_seqs, tile_id, BLOCK_Q: tl.constexpr):
    """Largest i in [0, num_seqs) with query_start_loc[i] // BLOCK_Q + i <= tile_id."""
    lo = tl.cast(0, tl.int32)
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_tile <= tile_id:
            lo = mid
        else:
            hi = mid - 1
    return lo


@triton.jit(do_not_specialize=["num_seqs", "num_splits"])  # one compile whatever the batch and the split
def _unified_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    ws_ptr,  # SPLIT: fp32 partials, acc [T*H*S, BLOCK_D] then (m, l) [T*H*S, 2] at ml_offset
    ml_offset,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    scale_log2,
    window,
    v_scale,  # an FP8 cache's V scale (1.0 otherwise), applied to the normalised output
    num_seqs,
    num_heads,
    head_dim,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    stride_bt,
    G: tl.constexpr,  # query heads per KV head
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,  # query tokens per tile; BLOCK_Q * G <= BLOCK_M
    BLOCK_N: tl.constexpr,
    TAIL_N: tl.constexpr,  # keys per tile of the causal tail (<= BLOCK_N; see TAIL_TILE_KEYS)
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    num_splits,  # >= 1; a runtime value, so every split count shares one compile
    SPLIT: tl.constexpr,  # num_splits > 1: partials to ws_ptr, combined by _split_kv_reduce_kernel
    SOFTCAP: tl.constexpr,
    Q_SCALED: tl.constexpr,  # see _query_tile
):
    """One program per (query tile, KV head, split): causal attention of ``BLOCK_Q`` query tokens
    of one request (times ``G`` heads) over its paged K/V, unmasked whole tiles first.

    Over ~80 lines on purpose: 35 of them are the signature (pointers, strides and constexpr tile
    sizes a Triton kernel must take one by one). The body is one pass over tile bounds, the two KV
    ranges (the loop is :func:`_attend_kv_range`) and the store; splitting it further would only pass
    the same tensors between more ``@triton.jit`` helpers.
    """
    tile_id = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = _find_request(query_start_loc_ptr, num_seqs, tile_id, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_len = seq_len - q_len  # position of the request's first new token
    q_tile_start = (tile_id - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    tile_ok = q_tile_start < q_len

    r = tl.arange(0, BLOCK_M)
    q_idx = q_tile_start + r // G
    head = kv_head * G + r % G
    row_ok = (r < BLOCK_Q * G) & (q_idx < q_len)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    tok = (q_start + q_idx).to(tl.int64)
    q, scale_log2 = _query_tile(tl.load(
        q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
        mask=row_ok[:, None] & d_mask[None, :],
        other=0.0,
    ), scale_log2, DOT_DTYPE, Q_SCALED)
    q_pos = ctx_len + q_idx

    # Keys visible to some row of this tile: [kv_lo, last query position + 1) (kv_lo > 0 with a window).
    kv_end = tl.minimum(seq_len, ctx_len + tl.minimum(q_tile_start + BLOCK_Q, q_len))
    kv_end = tl.where(tile_ok, kv_end, 0)
    kv_lo, win_full = _window_start(ctx_len + q_tile_start, kv_end - 1, window, BLOCK_N)
    kv_lo = tl.minimum(kv_lo, kv_end)
    # Whole tiles visible to every row (all <= the tile's first query position, and inside every window).
    full_end = ((ctx_len + q_tile_start + 1) // BLOCK_N) * BLOCK_N
    full_end = tl.maximum(tl.minimum(full_end, kv_end), kv_lo)
    win_full = tl.minimum(tl.maximum(win_full, kv_lo), full_end)
    # This program's share of [kv_lo, kv_end): whole tiles, split ``split`` of ``num_splits``; within it the
    # window's edge [s_start, u_start) and the causal tail [u_end, s_end) are masked, the middle is not.
    tiles_per_split = tl.cdiv(tl.cdiv(kv_end - kv_lo, BLOCK_N), num_splits)
    s_start = tl.minimum(kv_lo + split * tiles_per_split * BLOCK_N, kv_end)
    s_end = tl.minimum(s_start + tiles_per_split * BLOCK_N, kv_end)
    u_start = tl.minimum(tl.maximum(win_full, s_start), s_end)
    u_end = tl.maximum(tl.minimum(full_end, s_end), u_start)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    acc, m_i, l_i = _attend_kv_range(
        q, acc, m_i, l_i, s_start, u_start, q_pos, bt_row, k_cache_ptr, v_cache_ptr, kv_head, head_dim,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, scale_log2, window,
        BLOCK_SIZE, BLOCK_N, BLOCK_D, True, DOT_DTYPE, DOT_PRECISION, SOFTCAP,
    )
    acc, m_i, l_i = _attend_kv_range(
        q, acc, m_i, l_i, u_start, u_end, q_pos, bt_row, k_cache_ptr, v_cache_ptr, kv_head, head_dim,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, scale_log2, window,
        BLOCK_SIZE, BLOCK_N, BLOCK_D, False, DOT_DTYPE, DOT_PRECISION, SOFTCAP,
    )
    acc, m_i, l_i = _attend_kv_range(
        q, acc, m_i, l_i, u_end, s_end, q_pos, bt_row, k_cache_ptr, v_cache_ptr, kv_head, head_dim,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, scale_log2, window,
        BLOCK_SIZE, TAIL_N, BLOCK_D, True, DOT_DTYPE, DOT_PRECISION, SOFTCAP,
    )
    if SPLIT:  # unnormalised partials, combined per (token, head) by the reduce kernel
        part = (tok * num_heads + head) * num_splits + split  # [BLOCK_M]
        tl.store(ws_ptr + part[:, None] * BLOCK_D + d[None, :], acc, mask=row_ok[:, None])
        tl.store(ws_ptr + ml_offset + 2 * part, m_i, mask=row_ok)
        tl.store(ws_ptr + ml_offset + 2 * part + 1, l_i, mask=row_ok)
    else:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None] * v_scale
        tl.store(
            out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & d_mask[None, :],  # an empty tile has no row_ok
        )


@triton.jit(do_not_specialize=["num_splits"])
def _split_kv_decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    ws_ptr,  # fp32 workspace: acc [B*H*S, BLOCK_D], then (m, l) [B*H*S, 2] at ml_offset
    ml_offset,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    scale_log2,
    window,
    num_heads,
    head_dim,
    stride_qt,
    stride_qh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    stride_bt,
    num_splits,  # a runtime value: every split count shares one compile
    G: tl.constexpr,
    BLOCK_M: tl.constexpr,  # >= G
    BLOCK_N: tl.constexpr,
    TAIL_N: tl.constexpr,  # keys per tile of the last partial tile (<= BLOCK_N; see TAIL_TILE_KEYS)
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SOFTCAP: tl.constexpr,
    USE_PDL: tl.constexpr,
    Q_SCALED: tl.constexpr,  # see _query_tile
    out_ptr,  # FUSED: the output [T, H, D], written by the last split of each (request, KV head)
    cnt_ptr,  # FUSED: arrival counters, one per (request, KV head), zero between launches
    stride_ot,
    stride_oh,
    v_scale,
    FUSED: tl.constexpr,
    BLOCK_S: tl.constexpr,  # FUSED: >= num_splits
    DIRECT: tl.constexpr = False,  # one split: the normalised output straight to out_ptr (no workspace, no reduce)
):
    """Split ``split`` of request ``seq``'s keys for the ``G`` query heads of ``kv_head``: its partial (acc, m, l)
    into the workspace. ``FUSED``: the split that arrives last for its (request, KV head) then combines all the
    partials of those heads (:func:`_combine_splits`, what the reduce kernel does) and re-arms the counter, so
    the step has one launch fewer per layer. ``DIRECT`` (``num_splits`` 1): the program's result is the output,
    stored as the unified kernel stores it (a large decode batch: one program a request and KV head, found by its
    grid index where the unified kernel searches the request of each query tile)."""
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    tok = tl.load(query_start_loc_ptr + seq).to(tl.int64)  # the request's only query row
    seq_len = tl.load(seq_lens_ptr + seq)

    r = tl.arange(0, BLOCK_M)
    head = kv_head * G + r
    row_ok = r < G
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    q, scale_log2 = _query_tile(tl.load(
        q_ptr + tok * stride_qt + head[:, None] * stride_qh + d[None, :],
        mask=row_ok[:, None] & d_mask[None, :],
        other=0.0,
    ), scale_log2, DOT_DTYPE, Q_SCALED)
    q_pos = tl.zeros([BLOCK_M], tl.int32) + (seq_len - 1)

    kv_lo, win_full = _window_start(seq_len - 1, seq_len - 1, window, BLOCK_N)
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len - kv_lo, BLOCK_N), num_splits)
    kv_start = tl.minimum(kv_lo + split * tiles_per_split * BLOCK_N, seq_len)
    kv_end = tl.minimum(kv_start + tiles_per_split * BLOCK_N, seq_len)
    u_start = tl.minimum(tl.maximum(win_full, kv_start), kv_end)
    full_end = tl.maximum((kv_end // BLOCK_N) * BLOCK_N, u_start)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    acc, m_i, l_i = _attend_kv_range(
        q, acc, m_i, l_i, kv_start, u_start, q_pos, bt_row, k_cache_ptr, v_cache_ptr, kv_head, head_dim,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, scale_log2, window,
        BLOCK_SIZE, BLOCK_N, BLOCK_D, True, DOT_DTYPE, DOT_PRECISION, SOFTCAP,
    )
    acc, m_i, l_i = _attend_kv_range(
        q, acc, m_i, l_i, u_start, full_end, q_pos, bt_row, k_cache_ptr, v_cache_ptr, kv_head, head_dim,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, scale_log2, window,
        BLOCK_SIZE, BLOCK_N, BLOCK_D, False, DOT_DTYPE, DOT_PRECISION, SOFTCAP,
    )
    acc, m_i, l_i = _attend_kv_range(
        q, acc, m_i, l_i, full_end, kv_end, q_pos, bt_row, k_cache_ptr, v_cache_ptr, kv_head, head_dim,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, scale_log2, window,
        BLOCK_SIZE, TAIL_N, BLOCK_D, True, DOT_DTYPE, DOT_PRECISION, SOFTCAP,
    )
    if DIRECT:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None] * v_scale
        tl.store(out_ptr + tok * stride_ot + head[:, None] * stride_oh + d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & d_mask[None, :])
        return
    part = (seq.to(tl.int64) * num_heads + head) * num_splits + split  # [BLOCK_M]
    tl.store(ws_ptr + part[:, None] * BLOCK_D + d[None, :], acc, mask=row_ok[:, None])
    tl.store(ws_ptr + ml_offset + 2 * part, m_i, mask=row_ok)
    tl.store(ws_ptr + ml_offset + 2 * part + 1, l_i, mask=row_ok)
    if FUSED:
        tl.debug_barrier()  # every thread's partial is written before the release below
        counter = cnt_ptr + seq * tl.num_programs(1) + kv_head
        if tl.atomic_add(counter, 1, sem="acq_rel") == num_splits - 1:  # the last split: combine, in split order
            for g in tl.static_range(G):
                _combine_splits(out_ptr, ws_ptr, ml_offset, seq.to(tl.int64), tok, kv_head * G + g, num_heads,
                                head_dim, stride_ot, stride_oh, v_scale, num_splits, BLOCK_S, BLOCK_D, ".cg")
            tl.store(counter, 0)  # re-armed for the next launch


@triton.jit
def _combine_splits(out_ptr, ws_ptr, ml_offset, idx, tok, head, num_heads, head_dim, stride_ot, stride_oh, v_scale,
                    num_splits, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, CACHE: tl.constexpr):
    """Head ``head`` of partial row ``idx`` (output token ``tok``): its ``num_splits`` partials (acc, m, l) weighed
    by ``exp2(m - max m)`` and summed in split order (empty splits weigh 0), divided by the weighed ``l`` sum, times
    ``v_scale``. ``CACHE``: the partials' load cache modifier (``".cg"``, from L2, where other programs of the same
    launch wrote them; ``""`` otherwise)."""
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_ok = s < num_splits
    base = (idx * num_heads + head) * num_splits
    m = tl.load(ws_ptr + ml_offset + 2 * (base + s), mask=s_ok, other=float("-inf"), cache_modifier=CACHE)
    l_sum = tl.load(ws_ptr + ml_offset + 2 * (base + s) + 1, mask=s_ok, other=0.0, cache_modifier=CACHE)
    acc = tl.load(ws_ptr + (base + s)[:, None] * BLOCK_D + d[None, :], mask=s_ok[:, None], other=0.0,
                  cache_modifier=CACHE)
    m_max = tl.max(m, 0)
    m_ref = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_ref)  # empty splits (m = -inf) weigh 0
    denom = tl.sum(w * l_sum, 0)
    denom = tl.where(denom == 0.0, 1.0, denom)
    out = tl.sum(w[:, None] * acc, 0) / denom * v_scale
    tl.store(
        out_ptr + tok * stride_ot + head * stride_oh + d,
        out.to(out_ptr.dtype.element_ty),
        mask=d < head_dim,
    )


@triton.jit(do_not_specialize=["num_splits"])
def _split_kv_reduce_kernel(
    out_ptr,
    ws_ptr,
    ml_offset,
    query_start_loc_ptr,
    num_heads,
    head_dim,
    stride_ot,
    stride_oh,
    v_scale,  # an FP8 cache's V scale (1.0 otherwise), applied to the combined output
    num_splits,  # a runtime value (<= BLOCK_S): every split count up to BLOCK_S shares one compile
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PER_TOKEN: tl.constexpr,  # partials indexed by token (unified) rather than by request (decode)
    USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)
    head = tl.program_id(1)
    if PER_TOKEN:
        tok = tl.program_id(0).to(tl.int64)
        idx = tok
    else:
        idx = tl.program_id(0).to(tl.int64)
        tok = tl.load(query_start_loc_ptr + idx).to(tl.int64)
    _combine_splits(out_ptr, ws_ptr, ml_offset, idx, tok, head, num_heads, head_dim, stride_ot, stride_oh, v_scale,
                    num_splits, BLOCK_S, BLOCK_D, "")


# --------------------------------------------------------------------------- host side


def _dot_config(dtype: torch.dtype, cache_dtype: torch.dtype | None = None) -> tuple[tl.dtype, str, bool]:
    """(operand dtype for tl.dot, input_precision, Q_SCALED) for a query of ``dtype`` over a cache of ``cache_dtype``.

    A bf16 query over an FP8 cache runs its dots in fp16, the query scaled by a constant power of two (``Q_SCALED``,
    :func:`_query_tile`): e4m3 -> fp16 is one exact conversion instruction per two codes, where e4m3 -> bf16 takes
    three (through fp16 and fp32); on an H200 that was 13-16 % of the kernel's time (RESULTS.md, session 22). fp16
    holds every e4m3/e5m2 value, and the softmax weights with more mantissa bits than bf16.
    """
    if dtype == torch.bfloat16 and cache_dtype is not None and is_fp8(cache_dtype):
        return tl.float16, "tf32", True
    if dtype == torch.float32:
        return tl.float32, "ieee", False
    if dtype == torch.float16:
        return tl.float16, "tf32", False  # input_precision only matters for fp32 operands
    if dtype == torch.bfloat16:
        # The interpreter's matmul is numpy, which has no bf16.
        return (tl.float32, "ieee", False) if interpreted(_unified_attention_kernel) else (tl.bfloat16, "tf32", False)
    raise TypeError(f"Triton attention supports {_SUPPORTED_DTYPES}, got {dtype}")


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache/v_cache must both be [num_blocks, block_size, Hkv, D]; got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache/v_cache need a unit stride on head_dim")
    if k_cache.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {k_cache.shape[-1]} > {MAX_HEAD_DIM} is not supported")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dtype not in _CACHE_DTYPES:
            raise TypeError(f"{name} dtype {c.dtype} not supported (use one of {_CACHE_DTYPES})")


def _wide_rows(block_d: int, query: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Rows of more than 512 bytes (fp32 with D > 128): shrink tiles to fit shared memory."""
    return block_d * max(query.element_size(), k_cache.element_size()) > 512


def _scale_log2(scale: float, k_cache: torch.Tensor, k_scale: float) -> float:
    """The kernels' score multiplier: softmax scale (times an FP8 cache's k_scale) in base 2."""
    return scale * (k_scale if is_fp8(k_cache.dtype) else 1.0) * math.log2(math.e)


def _v_scale(v_cache: torch.Tensor, v_scale: float) -> float:
    """The kernels' output multiplier: P (V * v_scale) = (P V) * v_scale for an FP8 cache, else 1.0."""
    return v_scale if is_fp8(v_cache.dtype) else 1.0


TAIL_TILE_KEYS: int | None = None
"""Keys per tile of a 16-row tile's causal tail (decode rows, small chunks): the last partial KV tile of a request
walked in tiles of this many keys instead of one tile of ``block_n`` (None: off). Why: a partial tile costs a whole
one (RESULTS.md, session 33: 8 keys past 512 cost what 64 do). Measured on an H100 (RESULTS.md, session 34): 32-key
tails ~4 us faster a layer at 520-540 keys of an FP8 cache, 16-key ones slower; ShareGPT-like throughput +0.1-0.2 %
(noise): kept off. Compiled for sm_90 on the CPU (Triton 3.6, 16-row decode tile over
an FP8 cache): 32 keys keep the kernel's 115-116 registers, 16 keys take it to 143 (3 programs an SM instead of 4).
Read at launch."""


def tail_keys(block_m: int, block_n: int) -> int:
    """Keys per tile of the causal tail: :data:`TAIL_TILE_KEYS` for 16-row tiles (at most ``block_n``), else
    ``block_n``. A function of the launch's tile shape only, so ``--deterministic`` rows stay batch-invariant."""
    if TAIL_TILE_KEYS is None or block_m != 16:
        return block_n
    return max(16, min(TAIL_TILE_KEYS, block_n))


NO_WINDOW = 1 << 30  # the window value meaning "none" (larger than any context)


def _window_and_cap(sliding_window: int | None, logits_soft_cap: float | None) -> tuple[int, float]:
    """Kernel arguments: the window (NO_WINDOW for none) and the SOFTCAP constexpr (cap * log2(e); 0.0 = off)."""
    if sliding_window is not None and not 0 < sliding_window < NO_WINDOW:
        raise ValueError(f"sliding_window must be in [1, {NO_WINDOW}), got {sliding_window}")
    if logits_soft_cap is not None and logits_soft_cap <= 0:
        raise ValueError(f"logits_soft_cap must be positive, got {logits_soft_cap}")
    return (sliding_window or NO_WINDOW), (float(logits_soft_cap) * math.log2(math.e) if logits_soft_cap else 0.0)


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # int64 [T]; negative = skip
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Scatter new K/V rows into their cache slots (reshape-and-cache; an FP8 cache stores
    ``k / k_scale`` and ``v / v_scale``, saturated and rounded)."""
    _check_cache(k_cache, v_cache)
    num_tokens, num_kv_heads, head_dim = key.shape
    if value.shape != key.shape or tuple(k_cache.shape[2:]) != (num_kv_heads, head_dim):
        raise ValueError(
            f"key {tuple(key.shape)} / value {tuple(value.shape)} do not match cache {tuple(k_cache.shape)}"
        )
    if slot_mapping.shape[0] < num_tokens:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries for {num_tokens} tokens")
    if num_tokens == 0:
        return
    key, value = _unit_last(key), _unit_last(value)
    slot_mapping = slot_mapping.contiguous()
    block_d = triton.next_power_of_2(head_dim)
    block_h = max(1, min(triton.next_power_of_2(num_kv_heads), 4096 // block_d))
    grid = (num_tokens, triton.cdiv(num_kv_heads, block_h))
    _write_kv_kernel[grid](
        key, value, k_cache, v_cache, slot_mapping,
        num_kv_heads, head_dim,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        float(k_scale), float(v_scale),
        BLOCK_SIZE=k_cache.shape[1], BLOCK_H=block_h, BLOCK_D=block_d, FP8=fp8_code(k_cache.dtype),
        num_warps=4 if block_h * block_d >= 1024 else 1,
    )


def _check_attention_args(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens):
    _check_cache(k_cache, v_cache)
    if query.dim() != 3:
        raise ValueError(f"query must be [T, H, D], got {tuple(query.shape)}")
    if query.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"query dtype {query.dtype} not supported (use one of {_SUPPORTED_DTYPES})")
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    if head_dim != k_cache.shape[3]:
        raise ValueError(f"query head_dim {head_dim} != cache head_dim {k_cache.shape[3]}")
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if block_tables.dtype != torch.int32 or query_start_loc.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise TypeError("block_tables, query_start_loc and seq_lens must be int32")
    if block_tables.stride(-1) != 1:
        raise ValueError("block_tables needs a unit stride on its last dim")


def _new_output(query: torch.Tensor, out: torch.Tensor | None, num_real_tokens: int | None) -> torch.Tensor:
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    elif out.shape != query.shape or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(query.shape)} with a unit last stride")
    if num_real_tokens is not None and num_real_tokens < query.shape[0]:
        out[num_real_tokens:].zero_()  # padding rows belong to no request
    return out


def _setup(query, k_cache, v_cache, query_start_loc, seq_lens, block_tables, out, num_real_tokens):
    """Checks and shapes shared by the attention launchers.

    Returns ``(query, out, shape)``; ``shape`` is None when there is nothing to compute,
    else ``(num_tokens, num_heads, head_dim, num_seqs, num_kv_heads, group, block_d)``.
    """
    _check_attention_args(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
    query = _unit_last(query)
    out = _new_output(query, out, num_real_tokens)
    num_tokens, num_heads, head_dim = query.shape
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return query, out, None
    num_kv_heads = k_cache.shape[2]
    block_d = max(16, triton.next_power_of_2(head_dim))
    return query, out, (num_tokens, num_heads, head_dim, num_seqs, num_kv_heads, num_heads // num_kv_heads, block_d)


def unified_attention(
    query: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,  # int32 [B+1]
    seq_lens: torch.Tensor,  # int32 [B]
    block_tables: torch.Tensor,  # int32 [B, max_blocks]
    max_query_len: int,
    scale: float,
    out: torch.Tensor | None = None,
    num_real_tokens: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_splits: int = 1,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> torch.Tensor:
    """Causal paged attention for any mix of prefill chunks and decodes, one launch.

    ``sliding_window``/``logits_soft_cap``: the layer's window and soft-cap
    (:meth:`pagoda.attention.backend.AttentionBackend.forward`); KV tiles wholly outside every
    row's window are skipped, the window's edge tiles are masked.

    ``num_real_tokens`` (host int, = query_start_loc[-1]) lets padding rows past the
    last request be zeroed; ``block_m``/``block_n`` override the tile heuristic
    (tests use them to force multi-tile paths at tiny sizes). ``num_splits > 1`` cuts
    each tile's KV range into that many parts run by separate programs and combined by
    a second launch (see :func:`choose_chunk_splits`; its workspace is allocated per call, so a
    CUDA graph records it in the graph's pool).
    """
    if not 1 <= num_splits <= 1024:
        raise ValueError(f"num_splits must be in [1, 1024], got {num_splits}")
    window, softcap = _window_and_cap(sliding_window, logits_soft_cap)
    query, out, shape = _setup(query, k_cache, v_cache, query_start_loc, seq_lens, block_tables, out,
                               num_real_tokens)
    if shape is None:
        return out
    num_tokens, num_heads, head_dim, num_seqs, num_kv_heads, group, block_d = shape
    wide = _wide_rows(block_d, query, k_cache)
    if block_m is None:
        # Measured on H200 (bf16, 4k causal prefill): D=64 -> 128x64 tiles with 8 warps,
        # D=128 -> 64x64 with 4 warps, D=256 -> 128x64 with 8 warps; 2 stages throughout.
        max_m = 64 if (64 < block_d <= 128 or wide) else 128
        block_m = min(max(16, triton.next_power_of_2(group * max(1, max_query_len))), max_m)
    block_m = max(block_m, triton.next_power_of_2(group))
    if block_n is None:
        block_n = 32 if wide else 64
    block_q = block_m // group
    dot_dtype, precision, q_scaled = _dot_config(query.dtype, k_cache.dtype)
    grid = (num_tokens // block_q + num_seqs, num_kv_heads, num_splits)
    if num_splits > 1:
        num_partials = num_tokens * num_heads * num_splits
        ml_offset = num_partials * block_d
        workspace = torch.empty(num_partials * (block_d + 2), dtype=torch.float32, device=query.device)
    else:
        ml_offset, workspace = 0, out  # never touched
    _unified_attention_kernel[grid](
        query, k_cache, v_cache, out, workspace, ml_offset,
        query_start_loc, seq_lens, block_tables,
        _scale_log2(scale, k_cache, k_scale), window, _v_scale(v_cache, v_scale), num_seqs, num_heads, head_dim,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        G=group, BLOCK_M=block_m, BLOCK_Q=block_q, BLOCK_N=block_n, TAIL_N=tail_keys(block_m, block_n), BLOCK_D=block_d,
        BLOCK_SIZE=k_cache.shape[1], DOT_DTYPE=dot_dtype, DOT_PRECISION=precision, num_splits=num_splits,
        SPLIT=num_splits > 1, SOFTCAP=softcap, Q_SCALED=q_scaled, num_warps=8 if block_m >= 128 else 4,
        num_stages=2,
    )
    if num_splits > 1:
        reduce_rows = num_tokens if num_real_tokens is None else num_real_tokens
        _split_kv_reduce_kernel[(reduce_rows, num_heads)](
            out, workspace, ml_offset, query_start_loc,
            num_heads, head_dim, out.stride(0), out.stride(1), _v_scale(v_cache, v_scale),
            num_splits=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d, PER_TOKEN=True,
            num_warps=1 if num_splits * block_d <= 2048 else 4, USE_PDL=False,
        )
    return out


def batch_invariant_tiles(query: torch.Tensor, k_cache: torch.Tensor) -> dict[str, int]:
    """``--deterministic``: the tile sizes of every step (``block_m``, ``block_n``), a function of the
    model's shape only, so a query row is computed by the same program shape whatever the step holds
    (KV tiles start at position 0 and run in order; no split)."""
    block_d = max(16, triton.next_power_of_2(query.shape[-1]))
    wide = _wide_rows(block_d, query, k_cache)
    group = query.shape[1] // k_cache.shape[2]
    return {"block_m": max(64, triton.next_power_of_2(group)), "block_n": 32 if wide else 64}


_num_sms_cache: dict[int, int] = {}


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return _DEFAULT_NUM_SMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _num_sms_cache:
        _num_sms_cache[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _num_sms_cache[index]


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, sm_count: int) -> int:
    """How many KV splits a decode step should use (1 = no split; see module docstring)."""
    base = num_seqs * num_kv_heads
    if base <= 0 or base >= sm_count:
        return 1
    wanted = triton.cdiv(2 * sm_count, base)
    by_length = max(1, max_seq_len // MIN_TOKENS_PER_SPLIT)
    return max(1, min(wanted, by_length, MAX_SPLITS))


# A split of at most this many keys (by the bound its count was chosen for) walks 32-key tiles: measured on the
# H200 (RESULTS.md, session 7, decode_attn_sweep.py), 16 to 64 splits of 64 keys took 6.8-8.7 us per call with
# 64-key tiles and 5.4-7.1 us with 32 (the real context is usually far below the bound, so most of a 64-key tile is
# masked); at 241-455 keys per split 32-key tiles lost up to 17 %.
SMALL_DECODE_SPLIT_KEYS = 128
SHORT_SPLIT_TILES = True  # False: 64-key tiles whatever the split (the A/B switch of decode_ab.py and moe_bench.py)
FUSED_SPLIT_COMBINE = False
"""True: :func:`split_kv_decode`'s last split of each (request, KV head) combines the partials itself (one launch
per layer fewer); False: a second kernel does. Off: measured slower on an H200 (session 26, ``decode_ab.py MODEL
--switch fused-split-combine``, Llama-3-8B shape: the batch-1 decode graph 4.185 against 3.961 ms, batch 4 4.770
against 4.571; RESULTS.md), where one launch fewer per layer was predicted to save 0.03-0.06 ms: the last program's
serial combine costs more than the reduce kernel it replaces. Correct on the GPU
(``tests/kernels/test_triton_attention.py`` passed there both ways). Read at launch."""


def decode_block_n(wide: bool, kv_bound: int | None, num_splits: int) -> int:
    """Keys per tile of the split-KV decode kernel: 32 for wide rows or short splits, else 64."""
    short = (SHORT_SPLIT_TILES and kv_bound is not None and num_splits > 1
             and kv_bound <= SMALL_DECODE_SPLIT_KEYS * num_splits)
    return 32 if wide or short else 64


UNSPLIT_DECODE_KERNEL = True
"""True: a decode-only step with no KV split runs :func:`split_kv_decode` with one split (a program per request and
KV head, from its grid index) instead of the unified kernel (whose programs each search their request among the
step's and, at one query row a request, leave a fifth of the query tiles empty). On since session 44's H100 A/B
(benchmarks/RESULTS.md): the batch-256 decode graph 3.1 % faster, batch 64 1.5 %. False: the unified kernel (the
A/B switch of ``decode_ab.py --switch unsplit-decode`` and ``fp8_attention_sweep.py --decode-kernel``). Read at
launch."""

MIN_TOKENS_PER_CHUNK_SPLIT = 256
MAX_CHUNK_SPLITS = 16
# Below this context the split saves less GPU time than its second launch costs on the host
# (measured on an H100, 100-token chunk over 2,100 tokens: 55.6 -> 31.6 us per layer of GPU
# time, but ~25 us more host launch time per layer in an eager, launch-bound step).
MIN_CONTEXT_FOR_CHUNK_SPLIT = 4096


def choose_chunk_splits(num_tokens: int, num_seqs: int, num_kv_heads: int, group: int, head_dim: int,
                        max_query_len: int, max_seq_len: int, sm_count: int,
                        min_context: int = MIN_CONTEXT_FOR_CHUNK_SPLIT) -> int:
    """KV splits for a unified-kernel launch (prefill chunks, verify steps): 1 when its query tiles
    alone fill the GPU; else enough to reach ~2 programs per SM, each split keeping at least
    MIN_TOKENS_PER_CHUNK_SPLIT keys, and only from ``min_context`` keys on (the eager rule,
    MIN_CONTEXT_FOR_CHUNK_SPLIT; 0 for a launch recorded in a CUDA graph, whose second launch
    costs no host time). E.g. a 100-token chunk over 8,000 cached tokens, 8 KV heads of 4 query
    heads, D=128: 56 programs -> 5 splits (unsplit, each program walks 127 KV tiles while 76 of
    132 SMs idle); a batch-1 verify of 5 rows, 8 programs, in a graph for 2,048-token contexts:
    8 splits."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    max_m = 64 if 64 < block_d <= 128 else 128
    block_m = max(min(max(16, triton.next_power_of_2(group * max(1, max_query_len))), max_m),
                  triton.next_power_of_2(group))
    programs = (num_tokens // max(1, block_m // group) + num_seqs) * num_kv_heads
    if programs <= 0 or programs >= sm_count or max_seq_len < min_context:
        return 1
    wanted = triton.cdiv(2 * sm_count, programs)
    by_length = max(1, max_seq_len // MIN_TOKENS_PER_CHUNK_SPLIT)
    return max(1, min(wanted, by_length, MAX_CHUNK_SPLITS))


def split_kv_decode(
    query: torch.Tensor,  # [T, H, D]; request i's single query row is query_start_loc[i]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    num_splits: int,
    out: torch.Tensor | None = None,
    num_real_tokens: int | None = None,
    block_n: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    num_warps: int = 4,
    kv_bound: int | None = None,
) -> torch.Tensor:
    """Flash-decoding: every request must have exactly one query token (window and soft-cap as in
    :func:`unified_attention`; the splits cut the window's range only). ``block_n`` and ``num_warps``: the decode
    kernel's launch (defaults: :func:`decode_block_n` keys per tile given ``kv_bound``, the context bound the split
    count was chosen for; 4 warps; ``benchmarks/gpu/decode_attn_sweep.py`` times others). ``num_splits`` 1: one
    launch, each program storing its output (the backend's large decode batches, :data:`UNSPLIT_DECODE_KERNEL`)."""
    if not 1 <= num_splits <= 1024:
        raise ValueError(f"num_splits must be in [1, 1024], got {num_splits}")
    window, softcap = _window_and_cap(sliding_window, logits_soft_cap)
    query, out, shape = _setup(query, k_cache, v_cache, query_start_loc, seq_lens, block_tables, out,
                               num_real_tokens)
    if shape is None:
        return out
    num_tokens, num_heads, head_dim, num_seqs, num_kv_heads, group, block_d = shape
    block_m = max(16, triton.next_power_of_2(group))
    if block_n is None:
        block_n = decode_block_n(_wide_rows(block_d, query, k_cache), kv_bound, num_splits)
    dot_dtype, precision, q_scaled = _dot_config(query.dtype, k_cache.dtype)
    direct = num_splits == 1
    num_partials = 0 if direct else num_seqs * num_heads * num_splits
    ml_offset = num_partials * block_d
    workspace = out if direct else torch.empty(num_partials * (block_d + 2), dtype=torch.float32,
                                               device=query.device)
    fused = FUSED_SPLIT_COMBINE and not direct
    vs = _v_scale(v_cache, v_scale)
    counters = arrival_counters(query.device, num_seqs * num_kv_heads) if fused else workspace
    _split_kv_decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, k_cache, v_cache, workspace, ml_offset,
        query_start_loc, seq_lens, block_tables,
        _scale_log2(scale, k_cache, k_scale), window, num_heads, head_dim,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        num_splits=num_splits, G=group, BLOCK_M=block_m, BLOCK_N=block_n, TAIL_N=tail_keys(block_m, block_n),
        BLOCK_D=block_d,
        BLOCK_SIZE=k_cache.shape[1], DOT_DTYPE=dot_dtype, DOT_PRECISION=precision, SOFTCAP=softcap, Q_SCALED=q_scaled,
        out_ptr=out, cnt_ptr=counters, stride_ot=out.stride(0), stride_oh=out.stride(1),
        v_scale=vs, FUSED=fused, BLOCK_S=triton.next_power_of_2(num_splits), DIRECT=direct,
        num_warps=num_warps, num_stages=2, **launch_kwargs(query.device),
    )
    if not fused and not direct:
        _split_kv_reduce_kernel[(num_seqs, num_heads)](
            out, workspace, ml_offset, query_start_loc,
            num_heads, head_dim, out.stride(0), out.stride(1), vs,
            num_splits=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d, PER_TOKEN=False,
            num_warps=1 if num_splits * block_d <= 2048 else 4, **launch_kwargs(query.device),
        )
    return out
