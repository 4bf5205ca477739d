"""Triton mixed-precision GEMM: int4/int8 weight codes x bf16/fp16/fp32 activations (CUDA; CPU under
``TRITON_INTERPRET=1``).

Layout (made by :func:`pack`, undone by :func:`unpack`; both plain torch)::

    4-bit (bits <= 4): qweight int32 [K/8, N], "sub-block interleaved" in K tiles of P = pack_k(K) rows:
                       nibble j (bits 4j..4j+3) of word (t*P/8 + r, n) = code of (t*P + j*P/8 + r, n)
    5..8 bits:         qweight uint8 [K, N]
    scales, offsets:   [K/G, N] contiguous (N fastest), activation dtype

So shift ``j`` of a loaded ``[P/8, BLOCK_N]`` word tile is the contiguous K sub-block ``j`` (``P/8`` rows,
inside one group as ``G % (P/8) == 0``): no reshape or layout conversion, and the matching activations are
one contiguous slice. N is the fastest axis everywhere (coalesced loads).

Kernels (one packed copy serves all; :data:`SMALL_M_TABLE`, :data:`INT4_SHAPE_TABLE` and :data:`INT4_TABLE` pick
by M and shape):

* ``gemv`` (small M; the tables use it at one row): no ``tl.dot``; :mod:`triton_w4_gemv` (one launch with its
  split-K reduction, nibbles decoded by one LOP3 + one FMA, the affine map once per group).
* ``dot`` (2+ rows, 16-row tiles and up): 8 ``tl.dot`` of ``[BLOCK_M, P/8] x [P/8, BLOCK_N]`` per tile, either on
  the tile dequantized to the activation dtype (``dequant``; two weights per register on CUDA in bf16/fp16,
  :mod:`triton_pair_decode`) or on the raw codes with the affine map factored out
  (``acc += dot(x, q) * s + rowsum(x) * o``). Needs ``P/8 >= 16`` (P = 128, i.e. K % 128 == 0). ``Rule.swap``
  computes ``out.T = W @ x.T`` instead (:func:`_int4_dot_swap_kernel`): the decoded weights are wgmma's left
  operand, read from registers, where the unswapped kernel stores every decoded sub-block to shared memory.
* ``u8`` (5..8 bits): the previous design, ``BLOCK_K`` <= group, factored affine map.
* ``deq`` (large M, any width): :func:`dequantize` writes the weights to a transient dense copy in the activation
  dtype (one launch), then ``torch.matmul``: the dot kernels dequantize every tile once per M block, which from a
  few hundred rows costs more than 2.5 bytes per weight of extra traffic.

Split-K partials of ``dot``/``u8`` go to an fp32 workspace ``[SPLIT_K, M, N]`` summed (+ bias, cast) by one
small reduce kernel; ``gemv`` sums them in its own last program per tile. Both sum in split order
(bit-reproducible for a given M and launch; no zero-fill). fp32 accumulation everywhere. (The GEMV's in-launch sum
for ``dot`` was measured in session 31: batch-64 W4A16 step 8.15 -> 9.51 ms on an H100, the last program of a 64-row
tile summing up to 9 partials alone; reverted.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from pagoda.layers.triton_mode import interpreted
from pagoda.quantization.kernels.triton_pair_decode import pair_decode
from pagoda.quantization.kernels.triton_w4_gemv import MAGIC, _nibble, gated_fits, w4_gemv


@triton.jit
def _dot_tile(N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The program's output rows and columns (grid axis 0: m-major over ``BLOCK_M x BLOCK_N`` tiles) and K split."""
    pid_mn = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    offs_m = (pid_mn // num_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid_mn % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n, tl.program_id(1)


@triton.jit
def _scale_offset(s_ptr, o_ptr, g, N, offs_n, n_ok, NATIVE: tl.constexpr = False):
    """Group ``g``'s scales and offsets of the columns ``offs_n`` as ``[BLOCK_N]`` (0 past ``N``): fp32, or in
    their stored dtype if ``NATIVE``."""
    s = tl.load(s_ptr + g * N + offs_n, mask=n_ok, other=0.0)
    o = tl.load(o_ptr + g * N + offs_n, mask=n_ok, other=0.0)
    if not NATIVE:
        s, o = s.to(tl.float32), o.to(tl.float32)
    return s, o


@triton.jit
def _words(qw_ptr, t, offs_r, offs_n, n_ok, N, KP: tl.constexpr, PAIRED: tl.constexpr):
    """K tile ``t``'s int32 words ``[KP, BLOCK_N]`` (``KP = P/8``; 0 past ``N``) and the shifted copy that
    :func:`_weights` takes (``>> 4``: the paired decode's odd nibbles; ``>> 12``: the fp32 decode's nibbles 5..7)."""
    p = tl.load(qw_ptr + (t * KP + offs_r)[:, None] * N + offs_n[None, :], mask=n_ok[None, :], other=0)
    return p, p >> (4 if PAIRED else 12)


@triton.jit
def _weights(p, ph, s, o, magic, j: tl.constexpr, PAIRED: tl.constexpr):
    """Nibble ``j``'s weights ``q * s + o`` of a word tile (``p, ph`` from :func:`_words`; ``s, o`` from
    :func:`_scale_offset` with ``NATIVE = PAIRED``, broadcast to the tile's shape by the caller): in the 16-bit dtype
    two per register (:mod:`triton_pair_decode`), else fp32 (:func:`triton_w4_gemv._nibble`)."""
    if PAIRED:
        w = pair_decode(p, ph, s, o, j)
    else:
        w = _nibble(p, ph, magic, j, 0) * s + o
    return w


@triton.jit
def _int4_dot_kernel(x_ptr, qw_ptr, s_ptr, o_ptr, out_ptr, M, N, stride_xm, stride_om, stride_os,
                     tiles_per_split, num_tiles, magic, GROUP: tl.constexpr, PACK_K: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DEQUANT: tl.constexpr, DOT_F32: tl.constexpr,
                     PAIRED: tl.constexpr = False):
    """8 ``tl.dot`` of ``[BLOCK_M, P/8] x [P/8, BLOCK_N]`` per K tile (module docstring). ``PAIRED``: the weights
    decode two per register in the activation dtype (:mod:`triton_pair_decode`); else nibbles decode in place to fp32
    (:func:`triton_w4_gemv._nibble`: a LOP3 and an exact FFMA, ``magic`` a runtime value so the LOP3 keeps the mask
    as its immediate). A group spanning the tile has its scales and offsets loaded once per tile."""
    offs_m, offs_n, pid_k = _dot_tile(N, BLOCK_M, BLOCK_N)
    KP: tl.constexpr = PACK_K // 8
    offs_r = tl.arange(0, KP)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_rows = x_ptr + offs_m[:, None] * stride_xm + offs_r[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    t_lo = pid_k * tiles_per_split
    t_hi = tl.minimum(num_tiles, t_lo + tiles_per_split)
    for t in range(t_lo, t_hi):
        p, ph = _words(qw_ptr, t, offs_r, offs_n, n_ok, N, KP, PAIRED)
        if GROUP % PACK_K == 0:  # one group for the whole tile
            s, o = _scale_offset(s_ptr, o_ptr, t * PACK_K // GROUP, N, offs_n, n_ok, PAIRED)
        for j in tl.static_range(8):
            k0 = t * PACK_K + j * KP
            x = tl.load(x_rows + k0, mask=m_ok[:, None], other=0.0)
            if GROUP % PACK_K != 0:
                s, o = _scale_offset(s_ptr, o_ptr, k0 // GROUP, N, offs_n, n_ok, PAIRED)
            if DEQUANT:
                w = _weights(p, ph, s[None, :], o[None, :], magic, j, PAIRED)  # (PAIRED: the activation dtype)
                if DOT_F32:
                    acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
                else:
                    acc = tl.dot(x, w.to(x_ptr.dtype.element_ty), acc)
            else:
                q = _nibble(p, ph, magic, j, 0)
                if DOT_F32:
                    part = tl.dot(x.to(tl.float32), q, input_precision="ieee")
                else:
                    part = tl.dot(x, q.to(x_ptr.dtype.element_ty))
                acc += part * s[None, :] + tl.sum(x.to(tl.float32), axis=1)[:, None] * o[None, :]
    out = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _int4_dot_swap_kernel(x_ptr, qw_ptr, s_ptr, o_ptr, out_ptr, M, N, stride_xm, stride_om, stride_os,
                          tiles_per_split, num_tiles, magic, GROUP: tl.constexpr, PACK_K: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr,
                          PAIRED: tl.constexpr = False):
    """:func:`_int4_dot_kernel` with the operands swapped: ``out.T[BLOCK_N, BLOCK_M] += W[BLOCK_N, P/8] @
    x.T[P/8, BLOCK_M]``, 8 per K tile. The decoded weights are the left operand, which Hopper's wgmma reads from
    registers, so they never go through shared memory (the unswapped kernel stores each decoded sub-block there,
    behind a barrier, for wgmma's right operand); x, the small operand, takes that path instead. The word tile is
    loaded as ``[BLOCK_N, P/8]`` (still N-fastest in memory: coalesced), scales and offsets broadcast along K.
    Weights are decoded (``dequant``) only; the same values as the unswapped kernel's, the same fp32 sums of the
    same products per tile (in another order inside the tensor core)."""
    offs_m, offs_n, pid_k = _dot_tile(N, BLOCK_M, BLOCK_N)
    KP: tl.constexpr = PACK_K // 8
    offs_r = tl.arange(0, KP)
    m_ok = offs_m < M
    n_ok = offs_n < N
    xt_rows = x_ptr + offs_m[None, :] * stride_xm + offs_r[:, None]  # [KP, BLOCK_M]
    w_cols = qw_ptr + offs_r[None, :] * N + offs_n[:, None]  # [BLOCK_N, KP]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    t_lo = pid_k * tiles_per_split
    t_hi = tl.minimum(num_tiles, t_lo + tiles_per_split)
    for t in range(t_lo, t_hi):
        p = tl.load(w_cols + t * KP * N, mask=n_ok[:, None], other=0)
        ph = p >> (4 if PAIRED else 12)
        if GROUP % PACK_K == 0:  # one group for the whole tile
            s, o = _scale_offset(s_ptr, o_ptr, t * PACK_K // GROUP, N, offs_n, n_ok, PAIRED)
        for j in tl.static_range(8):
            k0 = t * PACK_K + j * KP
            xt = tl.load(xt_rows + k0, mask=m_ok[None, :], other=0.0)
            if GROUP % PACK_K != 0:
                s, o = _scale_offset(s_ptr, o_ptr, k0 // GROUP, N, offs_n, n_ok, PAIRED)
            w = _weights(p, ph, s[:, None], o[:, None], magic, j, PAIRED)
            if DOT_F32:
                acc += tl.dot(w.to(tl.float32), xt.to(tl.float32), input_precision="ieee")
            else:
                acc = tl.dot(w.to(x_ptr.dtype.element_ty), xt, acc)
    out = out_ptr + pid_k * stride_os + offs_m[None, :] * stride_om + offs_n[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[None, :] & n_ok[:, None])


@triton.jit
def _u8_kernel(x_ptr, qw_ptr, s_ptr, o_ptr, out_ptr, M, N, K, stride_xm, stride_om, stride_os,
               tiles_per_split, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr):
    """5..8-bit codes, uint8 ``[K, N]``; ``BLOCK_K`` divides the group: one scale/offset per tile column."""
    pid_mn = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid_mn // num_n
    pid_n = pid_mn % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_lo = pid_k * tiles_per_split * BLOCK_K
    k_hi = tl.minimum(K, k_lo + tiles_per_split * BLOCK_K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        q = tl.load(qw_ptr + offs_k[:, None] * N + offs_n[None, :], mask=n_ok[None, :], other=0)
        s, o = _scale_offset(s_ptr, o_ptr, k0 // GROUP, N, offs_n, n_ok)
        if DOT_F32:
            part = tl.dot(x.to(tl.float32), q.to(tl.float32), input_precision="ieee")
        else:
            part = tl.dot(x, q.to(x_ptr.dtype.element_ty))
        xsum = tl.sum(x.to(tl.float32), axis=1)
        acc += part * s[None, :] + xsum[:, None] * o[None, :]
    out = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _dequant_kernel(qw_ptr, s_ptr, o_ptr, w_ptr, N, magic, GROUP: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_N: tl.constexpr, BITS4: tl.constexpr, PAIRED: tl.constexpr = False):
    """Program (n block, K tile): the weights ``W.T[k, n] = q * s + o`` of ``BLOCK_K`` K rows (4-bit: the layout's
    K tile, its 8 nibble sub-blocks in turn; 5..8 bits: a tile inside one group) to ``w [K, N]``, in ``w``'s dtype:
    the values the ``dot`` kernels feed their tensor cores (``q * s + o`` rounded once: from fp32, or paired)."""
    pid_n = tl.program_id(0)
    t = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    if BITS4:
        KP: tl.constexpr = BLOCK_K // 8
        offs_r = tl.arange(0, KP)
        p, ph = _words(qw_ptr, t, offs_r, offs_n, n_ok, N, KP, PAIRED)
        if GROUP % BLOCK_K == 0:  # one group for the whole tile
            s, o = _scale_offset(s_ptr, o_ptr, t * BLOCK_K // GROUP, N, offs_n, n_ok, PAIRED)
        for j in tl.static_range(8):
            k0 = t * BLOCK_K + j * KP
            if GROUP % BLOCK_K != 0:
                s, o = _scale_offset(s_ptr, o_ptr, k0 // GROUP, N, offs_n, n_ok, PAIRED)
            w = _weights(p, ph, s, o, magic, j, PAIRED)
            tl.store(w_ptr + (k0 + offs_r)[:, None] * N + offs_n[None, :], w.to(w_ptr.dtype.element_ty),
                     mask=n_ok[None, :])
    else:
        offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
        q = tl.load(qw_ptr + offs_k[:, None] * N + offs_n[None, :], mask=n_ok[None, :], other=0)
        s, o = _scale_offset(s_ptr, o_ptr, t * BLOCK_K // GROUP, N, offs_n, n_ok)
        w = q.to(tl.float32) * s[None, :] + o[None, :]
        tl.store(w_ptr + offs_k[:, None] * N + offs_n[None, :], w.to(w_ptr.dtype.element_ty), mask=n_ok[None, :])


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, bits: int, group_size: int,
               dtype: torch.dtype, block_n: int = 128, num_warps: int = 4, paired: bool = True) -> torch.Tensor:
    """The layout's weights as a dense ``W.T [K, N]`` in ``dtype`` (one launch; reads each code once). 4-bit codes
    decode as the ``dot`` kernel does for the same ``paired`` (:class:`Rule`): the same weights."""
    n = scales.shape[1]
    k = qweight.shape[0] * (8 if bits <= 4 else 1)
    bk = pack_k(k) if bits <= 4 else max_block_k(group_size)
    w = torch.empty((k, n), device=qweight.device, dtype=dtype)
    _dequant_kernel[(triton.cdiv(n, block_n), k // bk)](qweight, scales, offsets, w, n, MAGIC, GROUP=group_size,
                                                       BLOCK_K=bk, BLOCK_N=block_n, BITS4=bits <= 4,
                                                       PAIRED=bits <= 4 and _paired(paired, dtype, scales),
                                                       num_warps=num_warps)
    return w


@triton.jit
def _splitk_reduce_kernel(ws_ptr, bias_ptr, out_ptr, MN, N, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
                          BLOCK: tl.constexpr):
    """out = sum over splits of the fp32 workspace (+ bias), cast: one launch instead of sum, add, cast."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in tl.static_range(SPLIT):
        acc += tl.load(ws_ptr + i * MN + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


@dataclass(frozen=True)
class Rule:
    """How to run one M range: kernel ``kind`` (``gemv``/``dot`` for 4-bit, ``u8`` for 5..8 bits, ``deq`` for both:
    the weights dequantized by :func:`dequantize` into a transient dense copy, then one ``torch.matmul``: for
    large M, where the dot kernels' in-loop dequantization, repeated per M tile, costs more), tiles, and
    ``waves``: split-K is raised until the grid has about ``waves`` programs per SM (never below
    ``min_tiles`` K tiles per split). ``block_m`` for ``gemv`` is a cap (M is padded to a power of two);
    ``prefetch`` (``gemv``): how many K tiles of words are loaded ahead of the one computed (0..2); ``pdl``
    (``gemv``): launch with programmatic dependent launch (:mod:`pagoda.layers.pdl`); ``paired`` (``dot`` with
    ``dequant``, ``deq``): on CUDA with bf16/fp16 activations decode two weights per register
    (:mod:`triton_pair_decode`) instead of through fp32; ``lift`` (``gemv``): the nibbles read in place as float32
    denormals against x scaled per nibble position (:data:`triton_w4_gemv.LIFT`: one LOP3 and one FFMA a nibble,
    ``|x| < 2**38``); ``halves`` (``gemv``, one row a program): ``block_n`` in that many column blocks per thread
    (x loaded and converted once for them all); ``swap`` (``dot`` with ``dequant``): the operands swapped
    (:func:`_int4_dot_swap_kernel`: the decoded weights stay in registers for wgmma)."""

    kind: str
    block_n: int
    block_m: int = 16
    waves: float = 4.0
    num_warps: int = 4
    num_stages: int = 3
    dequant: bool = True
    block_k: int = 128
    min_tiles: int = 2
    prefetch: int = 1
    pdl: bool = False
    paired: bool = True
    lift: bool = False
    halves: int = 1
    swap: bool = False


BIG = 1 << 30
INT4_TABLE: dict[int, Rule] = {  # max M (inclusive) -> rule; int_weight_sweep.py and int4_gemv_sweep.py measure them.
    # 2-128 rows: the swapped dot (Rule.swap), int4_gemv_sweep.py on an H100, session 46 (call 1): the step's linears
    # at 2 rows 2.33 -> 2.27 ms, 16 rows 2.71 -> 2.64, 64 rows 5.35 -> 4.85 (bf16 5.20), 128 rows 8.95 -> 7.36
    # (with INT4_SHAPE_TABLE below); the unswapped rules these replace were session 31's (paired decode).
    1: Rule('dot', 64),
    4: Rule('dot', 64, swap=True),
    16: Rule('dot', 64, swap=True),
    64: Rule('dot', 128, block_m=64, waves=2, swap=True),
    128: Rule('dot', 128, block_m=128, waves=2, swap=True),
    # 129+ rows: the dense copy + torch.matmul. int4_gemv_sweep.py on an H100, session 30 (2026-12-05): the step's
    # linears at 64 rows 6.3 (dot) vs 11.5 ms (deq), 256 rows 20.5 -> 12.8 ms, 1,024 rows 62.1 -> 25.2, 4,096 rows
    # 240.6 -> 87.8 (bf16 79.7). Session 46 at 256 rows: the swapped dot 12.41 ms (best per shape) against the copy's
    # 12.64: only gate_up gains (INT4_SHAPE_TABLE).
    256: Rule('deq', 128),
    BIG: Rule('deq', 128),
}
INT4_SHAPE_TABLE: dict[tuple[int, int, int], Rule] = {  # (INT4_TABLE key, N, K) -> rule, before the other tables.
    # int4_gemv_sweep.py, H100, session 46 (call 1), the Llama-3-8B linears: each shape's winner where it ran 3 % or
    # more under INT4_TABLE's rule. At 64+ rows a K split's fp32 workspace [split, M, N] is written and summed
    # again: fewer waves pay except where the column tiles alone fill the GPU.
    (4, 4096, 4096): Rule('gemv', 64, block_m=2, waves=4, prefetch=2, pdl=True),  # o at 2 rows: 11.3 -> 9.0 us
    (16, 4096, 4096): Rule('dot', 64, waves=2),  # o at 16 rows, unswapped: 10.3 us
    (16, 28672, 4096): Rule('dot', 64, swap=True),
    (64, 6144, 4096): Rule('dot', 128, block_m=64, waves=2, swap=True),  # qkv 24.2 -> 20.9 us
    (64, 4096, 4096): Rule('dot', 128, block_m=64, waves=2, swap=True),  # o 18.0 -> 16.2 us
    (64, 4096, 14336): Rule('dot', 128, block_m=64, waves=2, swap=True),  # down 44.5 -> 39.3 us
    (64, 28672, 4096): Rule('dot', 128, block_m=32, waves=2, swap=True),  # gate_up 80.5 -> 75.2 us
    (128, 6144, 4096): Rule('dot', 128, block_m=128, waves=2, swap=True),  # qkv 36.6 -> 32.1 us
    (128, 4096, 4096): Rule('dot', 128, block_m=64, waves=2, swap=True),  # o 27.5 -> 23.0 us
    (128, 28672, 4096): Rule('dot', 128, block_m=128, waves=1, swap=True),  # gate_up 141.6 -> 113.7 us
    (128, 4096, 14336): Rule('dot', 128, block_m=64, waves=2, swap=True),  # down 74.1 -> 61.2 us
    (256, 28672, 4096): Rule('dot', 128, block_m=256, waves=1, num_warps=8, swap=True),  # gate_up 205 -> 179 us
    # One row, session 36 (H100, int4_gemv_sweep.py, call 1): gate_up by two column blocks a thread (34.2 -> 30.1
    # us), down by the lift decode (16.6 -> 14.6 us).
    (1, 28672, 4096): Rule("gemv", 128, block_m=1, waves=8, num_warps=4, pdl=True, halves=2),
    (1, 4096, 14336): Rule("gemv", 64, block_m=1, waves=8, num_warps=2, prefetch=2, pdl=True, lift=True),
}
SMALL_M_TABLE: dict[str, dict[int, Rule]] = {  # shape class -> max M -> rule; before INT4_TABLE up to its last M.
    # benchmarks/gpu/int4_gemv_sweep.py prints this; measured on an H100, 2026-12-05 (session 30, call 1: PDL at
    # one row; the batch-1 step 3.13 -> 2.98 ms there). Session 31: with the paired decode the dot kernel beats the
    # GEMV at 2 rows (step linears 2.82 -> 2.36 ms), so the table stops at 1. Session 36 (H100): the lift decode
    # with two tiles of words in flight for the small class, two in flight for the large; with INT4_SHAPE_TABLE's
    # one-row entries the batch-1 W4A16 step 3.00 -> 2.77 ms (three alternating rounds, results/gpu-2026-12-06-
    # session36/call2_*).
    "small": {
        1: Rule("gemv", 64, block_m=1, waves=8, num_warps=2, prefetch=2, pdl=True, lift=True),
    },
    "large": {
        1: Rule("gemv", 64, block_m=1, waves=8, num_warps=2, prefetch=2, pdl=True),
    },
}
SMALL_WEIGHT = 1 << 25
"""A 4-bit weight of at most this many codes (N*K) is shape class ``small`` (Llama-3-8B qkv, o), else ``large``."""


U8_TABLE: dict[int, Rule] = {  # max M (inclusive) -> rule. benchmarks/gpu/int_weight_sweep.py prints this.
    16: Rule('u8', 128),
    32: Rule('u8', 64, block_m=64),
    64: Rule('u8', 64, block_m=64),  # session 32 (H100): 8B step linears 5.76 ms
    128: Rule('u8', 64, block_m=64),  # not measured: the u8 rule kept where it ran before
    # session 32 (H100, `int_weight_sweep.py --only u8 --ms 64 256 1024`): from 256 rows the dense copy beats u8
    # on all four 8B linears (step linears 13.9 ms at 256 rows, 26.4 at 1,024), as it did for 4-bit
    BIG: Rule('deq', 128),
}


@dataclass(frozen=True)
class WNA16Config:
    """A resolved launch: :class:`Rule` fields plus the split-K count (``block_k``: the u8 K tile; 4-bit
    kernels step by :func:`pack_k`)."""

    kind: str
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3
    dequant: bool = True
    prefetch: int = 1
    pdl: bool = False
    paired: bool = True
    lift: bool = False
    halves: int = 1
    swap: bool = False


def pack_k(in_features: int) -> int:
    """K tile of the 4-bit layout: the largest power of two dividing K, capped at 128 (the ``dot`` kernel
    needs 128, i.e. 16-row sub-blocks)."""
    return min(128, in_features & -in_features)


def max_block_k(group_size: int) -> int:
    """The largest power of two dividing ``group_size``, capped at 128 (a u8 K tile must lie in one group)."""
    return min(128, group_size & -group_size)


def supported(bits: int, group_size: int, in_features: int) -> bool:
    """Groups of a multiple of 16 dividing K (then a 4-bit sub-block of ``pack_k/8 <= 16`` rows lies in one
    group, and K % 16 == 0)."""
    return 1 <= bits <= 8 and max_block_k(group_size) >= 16 and in_features % group_size == 0


@lru_cache(maxsize=8)
def num_sms(device_index: int | None) -> int:
    if not torch.cuda.is_available():
        return 4  # the interpreter: any small number exercises split-K
    return torch.cuda.get_device_properties(device_index or 0).multi_processor_count


def shape_class(n: int, k: int) -> str:
    return "small" if n * k <= SMALL_WEIGHT else "large"


def rule_for(m: int, bits: int, n: int = 0, k: int = 0) -> Rule:
    """The rule for ``m`` rows of 4-bit weights: :data:`INT4_SHAPE_TABLE` for this ``(M bucket, N, K)``, else
    :data:`SMALL_M_TABLE` up to its largest M, else :data:`INT4_TABLE`; 5-8 bits: :data:`U8_TABLE`."""
    table = INT4_TABLE if bits <= 4 else U8_TABLE
    key = min(b for b in table if b >= m)
    if bits > 4:
        return table[key]
    if (key, n, k) in INT4_SHAPE_TABLE:
        return INT4_SHAPE_TABLE[key, n, k]
    small = SMALL_M_TABLE.get(shape_class(n, k), {})
    if small and m <= max(small):
        return small[min(b for b in small if b >= m)]
    return table[key]


def resolve(rule: Rule, m: int, n: int, k: int, group_size: int, sms: int) -> WNA16Config:
    """Turn a rule into a launch for one shape: tile clamps and split-K from ``waves`` (:class:`Rule`)."""
    kind, bm, bn, warps = rule.kind, rule.block_m, rule.block_n, rule.num_warps
    if kind not in ("gemv", "dot", "u8", "deq") or (rule.pdl and kind != "gemv") or \
            (rule.swap and (kind != "dot" or not rule.dequant)):
        raise ValueError(f"wna16: no kernel runs {rule} (pdl {rule.pdl} / swap {rule.swap} for {kind!r})")
    if kind in ("gemv", "dot") and pack_k(k) < 128:
        kind = "gemv"  # 16-row sub-blocks are the smallest tl.dot K
    if kind == "gemv":
        if rule.kind != "gemv":  # a dot rule's tiles would not fit the GEMV: 8 rows x 64 columns x 8 warps
            bn, warps = 64, 8
        bm = 1 if rule.halves > 1 else min(max(bm, 1), triton.next_power_of_2(m), 8)
        bk = pack_k(k)
    elif kind == "dot":
        bk = 128
    elif kind == "deq":  # (block_k is the dequantizing kernel's K tile; one launch, no split)
        return WNA16Config(kind, bm, bn, 0, 1, warps, paired=rule.paired)
    else:
        bk = min(rule.block_k, max_block_k(group_size))
    tiles_mn = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    k_tiles = k // bk
    split = max(1, min(triton.cdiv(int(rule.waves * sms), tiles_mn), k_tiles // rule.min_tiles))
    return WNA16Config(kind, bm, bn, bk, split, warps, rule.num_stages, rule.dequant, rule.prefetch, rule.pdl,
                       rule.paired, rule.lift and kind == "gemv", rule.halves if kind == "gemv" else 1,
                       rule.swap and kind == "dot")


def choose_config(m: int, n: int, k: int, group_size: int, sms: int, bits: int = 4) -> WNA16Config:
    """The launch :func:`rule_for` gives for this shape."""
    return resolve(rule_for(m, bits, n, k), m, n, k, group_size, sms)


def _paired(wanted: bool, dtype: torch.dtype, scales: torch.Tensor) -> bool:
    """Whether a 4-bit dequantization to ``dtype`` runs :mod:`triton_pair_decode` (inline PTX: compiled CUDA,
    16-bit floats, the scales and offsets in that dtype)."""
    return wanted and dtype in (torch.bfloat16, torch.float16) and scales.dtype == dtype and scales.is_cuda \
        and not interpreted(_int4_dot_kernel)


GATED_STORE = False
"""Whether :func:`wna16_silu_mul` runs the GEMV's gated store where it can (False: None everywhere, so the MLP
runs the GEMV then ``silu_and_mul``). Off until measured on a GPU: session 50 wrote it (bit for bit in the
interpreter, compiled for sm_90 with the unfused kernel's 96 registers) but got no machine to time it; its A/B is
``benchmarks/results/gpu-2026-12-07-session51/call1.sh`` (RESULTS.md, sessions 50 and 51)."""


def wna16_silu_mul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, bits: int,
                   group_size: int, bias: torch.Tensor | None = None, symmetric: bool = False,
                   perm: torch.Tensor | None = None) -> torch.Tensor | None:
    """``silu(gate) * up`` ``[M, N/2]`` of :func:`wna16_matmul`'s output for a gate-then-up weight, in the one launch
    of the GEMV's ``gated`` store (:mod:`triton_w4_gemv`), where this shape's rule is a two-block GEMV (``halves``
    2) whose blocks tile each half; None elsewhere (the caller runs the matmul and SiLU·mul apart). ``perm``: the
    act-order permutation of x's columns, applied only when the launch runs."""
    m, k = x.shape
    n = scales.shape[1]
    if bits > 4 or not GATED_STORE:
        return None
    cfg = choose_config(m, n, k, group_size, num_sms(x.device.index), bits)
    if cfg.kind != "gemv" or not gated_fits(n, cfg.block_n, cfg.halves):
        return None
    if perm is not None:
        x = x.index_select(-1, perm)
    if x.stride(1) != 1:
        x = x.contiguous()
    return w4_gemv(x, qweight, scales, offsets, group_size, bias, cfg.block_k, cfg.block_m, cfg.block_n, cfg.split_k,
                   cfg.num_warps, cfg.num_stages, cfg.prefetch, symmetric, cfg.pdl, cfg.lift, cfg.halves, gated=True)


def wna16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor,
                 bits: int, group_size: int, bias: torch.Tensor | None = None,
                 config: WNA16Config | None = None, symmetric: bool = False) -> torch.Tensor:
    """``x[M, K] @ W.T`` with W in the packed layout of this module (``scales``/``offsets`` ``[K/G, N]``);
    ``symmetric``: ``offsets == -2**(bits-1) * scales`` exactly (the GEMV then skips the offsets)."""
    m, k = x.shape
    n = scales.shape[1]
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = config or choose_config(m, n, k, group_size, num_sms(x.device.index), bits)
    if cfg.kind != "deq" and (cfg.kind == "u8") != (bits > 4):
        raise ValueError(f"wna16: kernel {cfg.kind!r} does not take {bits}-bit codes")
    if cfg.kind == "deq":
        out = x @ dequantize(qweight, scales, offsets, bits, group_size, x.dtype, cfg.block_n, cfg.num_warps,
                             cfg.paired)
        return out if bias is None else out.add_(bias)
    if cfg.kind == "gemv":
        return w4_gemv(x, qweight, scales, offsets, group_size, bias, cfg.block_k, cfg.block_m, cfg.block_n,
                       cfg.split_k, cfg.num_warps, cfg.num_stages, cfg.prefetch, symmetric, cfg.pdl, cfg.lift,
                       cfg.halves)
    k_tiles = k // cfg.block_k
    per_split = triton.cdiv(k_tiles, cfg.split_k)
    split = triton.cdiv(k_tiles, per_split)
    if split == 1:
        out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    else:
        out = torch.empty((split, m, n), device=x.device, dtype=torch.float32)
    dot_f32 = x.dtype == torch.float32 or interpreted(_int4_dot_kernel)
    common = (x, qweight, scales, offsets, out, m, n)
    # float32 activations double the x tile in shared memory: the tables' 4-stage 128 x 128 tiles (tuned in
    # bf16) asked an H200 for 248 KiB of its 227 (the default model in fp32, RESULTS.md session 8)
    stages = min(cfg.num_stages, 2) if x.dtype == torch.float32 else cfg.num_stages
    launch = {"num_warps": cfg.num_warps, "num_stages": stages}
    if cfg.kind == "dot" and cfg.swap:
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
        _int4_dot_swap_kernel[grid](*common, x.stride(0), n, m * n, per_split, k_tiles, MAGIC, GROUP=group_size,
                                    PACK_K=cfg.block_k, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, DOT_F32=dot_f32,
                                    PAIRED=_paired(cfg.paired, x.dtype, scales), **launch)
    elif cfg.kind == "dot":
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
        _int4_dot_kernel[grid](*common, x.stride(0), n, m * n, per_split, k_tiles, MAGIC, GROUP=group_size,
                               PACK_K=cfg.block_k, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                               DEQUANT=cfg.dequant, DOT_F32=dot_f32,
                               PAIRED=cfg.dequant and _paired(cfg.paired, x.dtype, scales), **launch)
    else:
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
        _u8_kernel[grid](*common, k, x.stride(0), n, m * n, per_split, GROUP=group_size, BLOCK_M=cfg.block_m,
                         BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, DOT_F32=dot_f32, **launch)
    if split == 1:
        return out if bias is None else out.add_(bias)
    res = torch.empty((m, n), device=x.device, dtype=x.dtype)
    block = 1024
    _splitk_reduce_kernel[(triton.cdiv(m * n, block),)](out, bias if bias is not None else out, res, m * n, n,
                                                       SPLIT=split, HAS_BIAS=bias is not None, BLOCK=block)
    return res


_SHIFTS = (4 * torch.arange(8, dtype=torch.int64)).view(1, 8, 1, 1)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes ``[N, K]`` -> this module's weight layout (K a multiple of 8 for 4-bit)."""
    ct = codes.t()
    if bits > 4:
        return ct.contiguous()
    k, n = ct.shape
    p = pack_k(k)
    tiles = ct.reshape(k // p, 8, p // 8, n).to(torch.int64)
    words = (tiles << _SHIFTS.to(codes.device)).sum(1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.reshape(k // 8, n).to(torch.int32).contiguous()


def unpack(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 codes ``[N, K]``."""
    if bits > 4:
        return qweight.t().contiguous()
    kp, n = qweight.shape
    p = pack_k(kp * 8)
    w = qweight.to(torch.int64).view(kp * 8 // p, 1, p // 8, n)
    q = (w >> _SHIFTS.to(qweight.device)) & 0xF
    return q.reshape(kp * 8, n).t().to(torch.uint8).contiguous()
