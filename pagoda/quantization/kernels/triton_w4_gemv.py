"""Small-M (decode) 4-bit weight GEMV: ``y[M, N] = x[M, K] @ W.T`` for M of about 1..8 rows, on the packed
layout of :mod:`triton_wna16` (int32 ``[K/8, N]``, nibble ``j`` of word row ``t*P/8 + r`` = code of K row
``t*P + j*P/8 + r``; scales/offsets ``[K/G, N]``), CUDA or ``TRITON_INTERPRET=1``.

Designed for bandwidth at one row, where the issue slots of the SM, not the bytes, were the limit (a decode
step streams ~32 nibbles per SM per clock; at 1.8-2 GHz an SM issues 128 thread-instructions and 64 integer
ones per clock):

* Nibble -> exact fp32 in one integer op: ``(word & 0xF << 4e) | 0x4B000000`` is the float ``2**23 + q * 16**e``
  (e <= 4: the nibble stays in the mantissa), and one FMA ``v * 16**-e - 2**23 * 16**-e`` gives ``q`` exactly.
  Nibbles 5..7 come from the word shifted once by 12. Per nibble: 1.125 integer ops and 2 FMAs (decode,
  ``acc += x * q``), against 2 integer ops + 2 float ops before.
* (Session 29 also tried nibbles masked in place as fp32 denormals times x lifted per nibble position, one AND
  + one FMA per nibble, with x lifted once per program into an fp32 scratch: 31 % fewer K-loop instructions in the
  SASS, but 1.5-5x slower on an H100 (the prologue's scratch writes and barrier; RESULTS.md, session 30), so it
  was removed.) Session 36's ``lift`` decode (:data:`LIFT`) keeps that idea without the scratch: x is scaled by
  ``2**(LIFT - 4e)`` as it is loaded (one constant per nibble position, so one FMUL per x value, shared by the
  thread's columns), the nibble is read in place as a float32 denormal, and one FFMA accumulates: one LOP3 + one
  FFMA a nibble. ``HALVES`` (one row a program) gives each thread 2 or 4 column blocks for the same x values.
* The affine map once per group and column: ``sum_k x_k (q_k s + o) = s * sum_k x_k q_k + o * sum_k x_k``,
  accumulated per (row, word row, column) and reduced over K once at the end (no per-tile cross-thread
  reduction). Symmetric weights (``o = -8 s``, GPTQ/AWQ sym) decode ``q - 8`` in the same FMA and skip the
  offset term.
* 3D tensors ``[BLOCK_M, P/8, BLOCK_N]`` from the start, x loaded as ``[BLOCK_M, P/8, 1]``: no layout
  conversion (shared memory, barriers) inside the K loop; the next 1-2 tiles' words are loaded before the
  current tile is computed (Triton does not pipeline loads that feed no ``tl.dot``).
* Split-K in one launch: each program writes its fp32 partial to a workspace ``[S, M, N]``, bumps a per-tile
  counter (release/acquire); the program that arrives last sums the S partials in split order (so the result
  does not depend on which program finishes last: bit-reproducible for a given M and config), adds the bias,
  casts, stores and re-arms the counter. No zero-fill, no second kernel.

Rounding against the reference (dequantize to the activation dtype, then ``F.linear``): the weights are never
rounded (the reference rounds ``q*s + o`` to bf16/fp16 once), products ``x*q`` are exact in fp32 and every
sum is fp32; the order of the sums differs. So outputs match the dequantize reference to fp32 accumulation
error plus the reference's own weight rounding (relative 2**-9 per weight in bf16).

``gated`` (one row a program, ``halves`` 2; a fused gate/up weight, gate columns ``[0, N/2)`` then the matching
up columns): a program's two column blocks are gate columns and the same up columns, and the program that writes
the tile writes ``silu(gate) * up`` ``[M, N/2]`` instead of ``[M, N]``, rounded as the unfused pair rounds it (each
output to x's dtype, then :func:`pagoda.layers.fused_kernels.silu_and_mul`'s arithmetic): the same values, one launch
and one ``[M, N]`` round trip fewer a layer.

Counters: one int32 per output tile, in the per-device buffer of :mod:`pagoda.layers.arrival_counters` (kept at
zero between launches: each launch's last program re-arms its tiles). Launches on one device must not overlap in
time (pagoda runs the model on one stream; under PDL a launch starts early but touches counters and the workspace
only after its wait); a launch that dies half-way would leave counters armed (then the process
is lost anyway).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.layers.arrival_counters import arrival_counters
from pagoda.layers.pdl import launch_kwargs, pdl_launch_dependents, pdl_wait


@triton.jit
def _nibble(p, ph, magic, j: tl.constexpr, zero: tl.constexpr):
    """Nibble ``j`` of the int32 words ``p`` (``ph = p >> 12``) minus ``zero`` as exact fp32: one LOP3 and one
    FMA. ``magic`` (0x4B000000) is a runtime value so that the LOP3's one immediate holds the mask."""
    E: tl.constexpr = j if j < 5 else j - 3  # the nibble's position in the word it is taken from
    c: tl.constexpr = 1.0 / (1 << (4 * E))
    if j < 5:
        v = (p & (15 << (4 * E))) | magic
    else:
        v = (ph & (15 << (4 * E))) | magic
    return v.to(tl.float32, bitcast=True) * c - (8388608.0 * c + zero)


@triton.jit
def _store_out(res, b_ptr, out_ptr, om, on, mask, N, HAS_BIAS: tl.constexpr):
    """Store ``res`` at rows ``om`` and columns ``on`` (2D index tensors broadcasting to ``res``'s shape)."""
    if HAS_BIAS:
        res += tl.load(b_ptr + on, mask=on < N, other=0.0).to(tl.float32)
    tl.store(out_ptr + om * N + on, res.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_silu_mul(res, b_ptr, out_ptr, row, on, N, HAS_BIAS: tl.constexpr):
    """``gated``'s store: ``res`` ``[2, BN]`` holds the gate columns ``on[0]`` and the up columns ``on[1] = on[0] +
    N/2`` of one row; writes ``silu(gate) * up`` at ``out[row, on[0]]`` (``out`` is ``[M, N/2]``). Each output is
    rounded to the output dtype first, then :func:`pagoda.layers.fused_kernels._silu_mul_kernel`'s arithmetic."""
    if HAS_BIAS:
        res += tl.load(b_ptr + on).to(tl.float32)
    dt = out_ptr.dtype.element_ty
    g, u = tl.split(tl.permute(res.to(dt).to(tl.float32), (1, 0)))
    cols, _ = tl.split(tl.permute(on, (1, 0)))
    s = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    tl.store(out_ptr + row * (N // 2) + cols, (s * u).to(dt))


@triton.jit
def _store_tile(res, b_ptr, out_ptr, om, on, mask, N, row, HAS_BIAS: tl.constexpr, GATED: tl.constexpr):
    """A tile's finished sums: :func:`_store_silu_mul` if ``GATED`` (one ``row``), else :func:`_store_out`."""
    if GATED:
        _store_silu_mul(res, b_ptr, out_ptr, row, on, N, HAS_BIAS)
    else:
        _store_out(res, b_ptr, out_ptr, om, on, mask, N, HAS_BIAS)


@triton.jit
def _load_words(ptrs, n_ok, EVEN_N: tl.constexpr):
    if EVEN_N:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=n_ok, other=0)


@triton.jit
def _load_x(ptrs, m_ok, EVEN_M: tl.constexpr):
    if EVEN_M:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=m_ok[:, None, None], other=0.0)
    return x.to(tl.float32)


@triton.jit
def _group_params(s_ptr, o_ptr, g, N, offs_n, n_ok, EVEN_N: tl.constexpr, SYM: tl.constexpr):
    """Group ``g``'s scales and offsets of the block's columns ``offs_n`` (2D ``[A, B]``) as ``[A, 1, B]`` fp32
    (offsets 0 if ``SYM``)."""
    if EVEN_N:
        s = tl.load(s_ptr + g * N + offs_n)
    else:
        s = tl.load(s_ptr + g * N + offs_n, mask=n_ok, other=0.0)
    if SYM:
        o = tl.zeros_like(s)
    elif EVEN_N:
        o = tl.load(o_ptr + g * N + offs_n)
    else:
        o = tl.load(o_ptr + g * N + offs_n, mask=n_ok, other=0.0)
    return s.to(tl.float32)[:, None, :], o.to(tl.float32)[:, None, :]


@triton.jit
def _sub_range(p, ph, magic, x_at, m_ok, gj: tl.constexpr, BLOCK_M: tl.constexpr, KP: tl.constexpr,
               BLOCK_N: tl.constexpr, JG: tl.constexpr, EVEN_M: tl.constexpr, SYM: tl.constexpr,
               XA: tl.constexpr):
    """Sub-blocks ``[gj * JG, (gj + 1) * JG)`` of a tile (one group's share): ``part`` = sum of x times the decoded
    nibbles per (row, word row, column) and ``xs`` = sum of x per (row, word row) where the offset term needs it."""
    part = tl.zeros((BLOCK_M, KP, BLOCK_N), dtype=tl.float32)
    xs = tl.zeros((XA, KP, 1), dtype=tl.float32)
    for jj in tl.static_range(JG):
        xj = _load_x(x_at + (gj * JG + jj) * KP, m_ok, EVEN_M)
        part += xj * _nibble(p, ph, magic, gj * JG + jj, 8 if SYM else 0)
        if not SYM:
            xs += xj
    return part, xs


LIFT = tl.constexpr(90)
"""``lift`` decode: x is scaled by ``2**(LIFT - 4e)`` and the nibbles read as denormals ``q * 2**(4e - 149)``, so
each product is ``x * q * 2**(LIFT - 149)``, exact in float32 while ``2**-67 <= |x q|`` and ``|x| < 2**38`` (the
scaled x overflows from there: its row's outputs become inf). Smaller products fall into the float32 denormals,
each off by at most 2**-90 absolute (unscaled), so a row of x entirely below ~2**-60 loses its relative accuracy
(activations that small carry no signal in a bf16 model; the plain decode has no such limits)."""


@triton.jit
def _denormal(p, ph, j: tl.constexpr):
    """Nibble ``j`` of ``p`` (``ph = p >> 12``) masked in place and read as a float32: the denormal
    ``q * 2**(4e - 149)``, ``e`` its position in the word it is taken from (one LOP3; +0.0 for q = 0)."""
    E: tl.constexpr = j if j < 5 else j - 3
    if j < 5:
        return (p & (15 << (4 * E))).to(tl.float32, bitcast=True)
    return (ph & (15 << (4 * E))).to(tl.float32, bitcast=True)


@triton.jit
def _lift(j: tl.constexpr):
    """The factor x takes for nibble ``j``: ``2**(LIFT - 4e)``."""
    E: tl.constexpr = j if j < 5 else j - 3
    return 2.0 ** (LIFT - 4 * E)


@triton.jit
def _sub_range_lift(p, ph, x_at, m_ok, gj: tl.constexpr, BLOCK_M: tl.constexpr, KP: tl.constexpr,
                    BLOCK_N: tl.constexpr, JG: tl.constexpr, EVEN_M: tl.constexpr, XA: tl.constexpr):
    """:func:`_sub_range` by the ``lift`` decode: per nibble one LOP3 and one FFMA into ``part`` (scaled by
    ``2**(LIFT - 149)``); ``xs`` = the plain sum of x (the offset term: ``-8 s`` for symmetric weights)."""
    part = tl.zeros((BLOCK_M, KP, BLOCK_N), dtype=tl.float32)
    xs = tl.zeros((XA, KP, 1), dtype=tl.float32)
    for jj in tl.static_range(JG):
        xj = _load_x(x_at + (gj * JG + jj) * KP, m_ok, EVEN_M)
        part += (xj * _lift(gj * JG + jj)) * _denormal(p, ph, gj * JG + jj)
        xs += xj
    return part, xs


@triton.jit(do_not_specialize=["M", "tiles_per_split", "num_tiles", "num_splits"])  # fewer compiled variants
def _w4_gemv_kernel(x_ptr, qw_ptr, s_ptr, o_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, stride_xm,
                    tiles_per_split, num_tiles, num_splits, magic, GROUP: tl.constexpr, PACK_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
                    EVEN_N: tl.constexpr, EVEN_M: tl.constexpr, SYM: tl.constexpr, PREFETCH: tl.constexpr,
                    USE_PDL: tl.constexpr, LIFT_X: tl.constexpr = False, HALVES: tl.constexpr = 1,
                    GATED: tl.constexpr = False, SUM_LOADS: tl.constexpr = 8):
    """Program (n block, K split, m block): the K tiles ``[pid_k * tiles_per_split, ...)`` of ``BLOCK_N`` columns
    for ``BLOCK_M`` rows. Tensors are 3D ``[BLOCK_M, P/8, BLOCK_N]`` from the start (x loaded as ``[BLOCK_M, P/8,
    1]``), so no layout conversion runs inside the K loop. ``SYM``: offsets are ``-8 * scales``, so the codes are
    decoded as ``q - 8`` and the offset term (and its sum of x) drops out. ``HALVES`` > 1 (one row a program,
    ``BLOCK_M`` 1): the first dimension holds ``HALVES`` column blocks of ``BLOCK_N / HALVES`` instead of rows, so
    every thread holds ``HALVES`` times the columns for the same x (Triton gives that dimension no threads): x is
    loaded, converted and summed once for them all. ``GATED`` (``HALVES`` 2): those two blocks are gate columns and
    the matching up columns, and the tile's writer stores ``silu(gate) * up`` (module docstring)."""
    pdl_launch_dependents(USE_PDL)  # (pagoda.layers.pdl: only the first tiles' words are read before the wait)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    KP: tl.constexpr = PACK_K // 8  # word rows per K tile = K rows per nibble sub-block
    # sub-blocks sharing one (scale, offset) group in a tile (a sub-block always lies in one group: KP | 16 | G)
    JG: tl.constexpr = 8 if GROUP % PACK_K == 0 else (GROUP // KP if PACK_K % GROUP == 0 else 1)
    offs_r = tl.arange(0, KP)
    BA: tl.constexpr = HALVES if HALVES > 1 else BLOCK_M  # the tensors' first dimension,
    BN: tl.constexpr = BLOCK_N // HALVES  # their last,
    XA: tl.constexpr = 1 if HALVES > 1 else BLOCK_M  # and x's first
    if HALVES > 1:  # [HALVES, BN]: column blocks in the first dimension, one row
        offs_a = tl.arange(0, HALVES)
        if GATED:  # row 0 gate columns, row 1 the same columns of up (N / 2 further)
            on = pid_n * BN + offs_a[:, None] * (N // 2) + tl.arange(0, BN)[None, :]
        else:
            on = pid_n * BLOCK_N + offs_a[:, None] * BN + tl.arange(0, BN)[None, :]
        om = pid_m + 0 * offs_a[:, None]
        m_ok = om < M
        x_rows = x_ptr + pid_m * stride_xm + offs_r[None, :, None]
    else:  # [BLOCK_M, BLOCK_N]: rows by columns
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        on = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        om = offs_m[:, None]
        m_ok = offs_m < M
        x_rows = x_ptr + offs_m[:, None, None] * stride_xm + offs_r[None, :, None]
    n_ok = on < N
    w_cols = qw_ptr + offs_r[None, :, None] * N + on[:, None, :]
    w_ok = n_ok[:, None, :]
    acc = tl.zeros((BA, KP, BN), dtype=tl.float32)
    t_lo = pid_k * tiles_per_split
    t_hi = tl.minimum(num_tiles, t_lo + tiles_per_split)
    p_next = _load_words(w_cols + t_lo * KP * N, w_ok, EVEN_N)  # weights: may load before the PDL wait
    p_next2 = _load_words(w_cols + tl.minimum(t_lo + 1, t_hi - 1) * KP * N, w_ok, EVEN_N)
    pdl_wait(USE_PDL)
    for t in range(t_lo, t_hi):
        if PREFETCH == 2:  # the next two tiles' words are in flight while this one is computed
            p = p_next
            p_next = p_next2
            p_next2 = _load_words(w_cols + tl.minimum(t + 2, t_hi - 1) * KP * N, w_ok, EVEN_N)
        elif PREFETCH == 1:
            p = p_next
            p_next = _load_words(w_cols + tl.minimum(t + 1, t_hi - 1) * KP * N, w_ok, EVEN_N)
        else:
            p = _load_words(w_cols + t * KP * N, w_ok, EVEN_N)
        ph = p >> 12
        for gj in tl.static_range(8 // JG):
            if LIFT_X:
                part, xs = _sub_range_lift(p, ph, x_rows + t * PACK_K, m_ok, gj, BA, KP, BN, JG, EVEN_M, XA)
            else:
                part, xs = _sub_range(p, ph, magic, x_rows + t * PACK_K, m_ok, gj, BA, KP, BN, JG, EVEN_M, SYM, XA)
            s, o = _group_params(s_ptr, o_ptr, (t * PACK_K + gj * JG * KP) // GROUP, N, on, n_ok, EVEN_N, SYM)
            if LIFT_X:
                acc += part * (s * (2.0 ** (149 - LIFT)))
                if SYM:
                    acc += xs * (s * -8.0)
                else:
                    acc += xs * o
            else:
                acc += part * s  # two FMAs per word and group (one expression would be FMUL + FFMA + FADD)
                if not SYM:
                    acc += xs * o
    res = tl.sum(acc, axis=1)
    mask = (om < M) & n_ok
    if SPLIT:
        tile = pid_m * tl.num_programs(0) + pid_n
        ws = ws_ptr + om * N + on
        tl.store(ws + pid_k * M * N, res, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the release below
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
        if arrived == num_splits - 1:  # the last program of this tile: fixed-order sum of all partials
            total = tl.zeros((BA, BN), dtype=tl.float32)
            for i in range(0, num_splits, SUM_LOADS):  # SUM_LOADS loads in flight a round, summed in split order
                for u in tl.static_range(SUM_LOADS):
                    ok = mask & (tl.full((BA, BN), i + u, tl.int32) < num_splits)
                    total += tl.load(ws + (i + u) * M * N, mask=ok, other=0.0, cache_modifier=".cg")
            tl.store(cnt_ptr + tile, 0)  # re-armed for the next launch
            _store_tile(total, b_ptr, out_ptr, om, on, mask, N, pid_m, HAS_BIAS, GATED)
    else:
        _store_tile(res, b_ptr, out_ptr, om, on, mask, N, pid_m, HAS_BIAS, GATED)


MAGIC = 0x4B000000  # fp32 bits of 2**23

SPLIT_SUM_LOADS = 8
"""Partials the split-K tile's last program loads at once (a round) before summing them, in split order: one L2 round
trip a round, on the launch's serial tail. The one-row rules run 11 (qkv) to 16 (o, down) splits, two rounds at 8;
16 makes them one (same sums, same order, same bits). 8 until timed on a GPU (session 51 wrote the switch with no
machine to time it; RESULTS.md)."""


def gated_fits(n: int, block_n: int, halves: int) -> bool:
    """Whether a ``gated`` launch takes ``N`` columns (gate then up) in blocks of ``block_n``: two column blocks a
    program and whole blocks in each half."""
    return halves == 2 and n % 2 == 0 and (n // 2) % (block_n // 2) == 0


def w4_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, group_size: int,
            bias: torch.Tensor | None, pack_k: int, block_m: int, block_n: int, split_k: int, num_warps: int = 4,
            num_stages: int = 1, prefetch: int = 1, symmetric: bool = False, pdl: bool = False,
            lift: bool = False, halves: int = 1, gated: bool = False) -> torch.Tensor:
    """``x[M, K] @ W.T (+ bias)`` in ``x``'s dtype (``x`` rows contiguous); ``pack_k``: the layout's K tile
    (``triton_wna16.pack_k(K)``); ``split_k`` programs share each output tile's K tiles; ``symmetric``: the
    caller guarantees ``offsets == -8 * scales`` (then ``offsets`` is not read); ``prefetch``: K tiles of words
    loaded ahead of the one being computed (0, 1 or 2); ``pdl``: launch with programmatic dependent launch where
    :func:`pagoda.layers.pdl.use_pdl` allows it (the first tiles' words load before the wait; rules choose it per
    measurement: slower in session 11, faster at one row in session 30); ``lift``: the :data:`LIFT` decode (x must
    stay under ``2**38`` in magnitude, else its row overflows to inf); ``halves``: > 1 runs one row a program with
    ``block_n`` split into that many column blocks (``block_m`` must be 1); ``gated`` (``halves`` 2, ``block_n / 2``
    dividing ``N / 2``): returns ``silu(gate) * up`` ``[M, N/2]`` of a gate-then-up weight (module docstring)."""
    m, k = x.shape
    n = scales.shape[1]
    p = pack_k
    k_tiles = k // p
    per_split = triton.cdiv(k_tiles, split_k)
    split = triton.cdiv(k_tiles, per_split)
    if halves > 1 and (block_m != 1 or block_n % halves):
        raise ValueError(f"w4_gemv: halves={halves} needs block_m 1 and block_n a multiple of it (got {block_m}, "
                         f"{block_n})")
    if gated and not gated_fits(n, block_n, halves):
        raise ValueError(f"w4_gemv: gated needs halves 2 and block_n / 2 dividing N / 2 (got halves={halves}, "
                         f"block_n={block_n}, N={n})")
    out = torch.empty((m, n // 2 if gated else n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n, block_n), split, triton.cdiv(m, block_m))
    if split > 1:
        ws = torch.empty((split, m, n), device=x.device, dtype=torch.float32)
        cnt = arrival_counters(x.device, grid[0] * grid[2])
    else:
        ws, cnt = out, out
    _w4_gemv_kernel[grid](x, qweight, scales, offsets, bias if bias is not None else out, out, ws, cnt, m, n,
                          x.stride(0), per_split, k_tiles, split, MAGIC, GROUP=group_size, PACK_K=p, BLOCK_M=block_m,
                          BLOCK_N=block_n, SPLIT=split > 1, HAS_BIAS=bias is not None, EVEN_N=n % block_n == 0,
                          EVEN_M=m % block_m == 0, SYM=symmetric, PREFETCH=prefetch, LIFT_X=lift, HALVES=halves,
                          GATED=gated, SUM_LOADS=SPLIT_SUM_LOADS, num_warps=num_warps,
                          num_stages=num_stages,
                          **(launch_kwargs(x.device) if pdl else {"USE_PDL": False}))
    return out
