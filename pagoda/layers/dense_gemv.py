"""bf16/fp16 GEMV for decode steps of a few token rows (CUDA; CPU under ``TRITON_INTERPRET=1``): ``y = x Wᵀ (+ b)``.

Why: at one to a few rows cuBLAS picks tiles that leave most SMs idle on narrow matrices. H200 profile of the
Qwen3-30B-A3B batch-1 decode step (``benchmarks/RESULTS.md``, session 6): the 2048 → 128 MoE router GEMM ran as
2 CTAs (5.1 µs for 0.5 MB of weights), the 4096 → 2048 O projection as a split-K GEMM plus a reduce launch
(8.7 µs for 16.8 MB; 3.9 µs at the copy bandwidth). A GEMV that spreads the weight rows over every SM streams them
once at close to the copy bandwidth.

Kernel: program ``p`` owns output channels ``[p * BLOCK_N, (p + 1) * BLOCK_N)`` and walks K in ``BLOCK_K`` steps
(16-byte vector loads along K when ``K % BLOCK_K == 0``). One row: the products accumulate element-wise in a
float32 ``[BLOCK_N, BLOCK_K]`` tile reduced over K once at the end (no step waits on a cross-warp reduction).
Several rows (at most :data:`GEMV_MAX_M`): each weight tile is loaded once and used for every row, on CUDA cores
(``_dense_gemv_rows_kernel``: the row count is a compile-time constant, so 5 rows cost 5 rows of FMAs; each thread
sums its 16 contiguous bytes' products per row into one float32 partial, one accumulator per row, the next weight
tile loading while this one is used; partials are reduced across threads once at the end) or, for a rule with
``use_dot``, on tensor cores: the tile times the rows padded to 16 (``tl.dot``, fp32 accumulators), with Triton's
pipeliner keeping ``num_stages`` weight tiles in flight. The bias is added in float32, then the output is rounded
once to x's dtype.

Invariants: deterministic (no atomics; a fixed summation order for a given rule); each output row depends only on
its own input row; padded rows (tensor cores) are masked zeros, never read or stored. The launch is a
function of the shapes only (capturable in CUDA graphs). Numerics: float32 sums in another order than cuBLAS's,
so outputs differ from ``F.linear`` by float32 rounding (the tests bound it).

Which shapes take it: :data:`GEMV_TABLE`, the measured winners over cuBLAS on an H200
(``benchmarks/gpu/dense_gemv_sweep.py`` prints the table), and a card's own winners where they differ
(:data:`DEVICE_GEMV_TABLE`, by device name); every other shape, row count, dtype or device stays on ``F.linear``.
``--deterministic`` replaces these layers before they run (``pagoda.layers.batch_invariant``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from pagoda.layers.arrival_counters import arrival_counters, split_k_total
from pagoda.layers.pdl import launch_kwargs, pdl_launch_dependents, pdl_wait
from pagoda.layers.triton_mode import interpreted


@dataclasses.dataclass(frozen=True)
class GemvRule:
    """One launch: ``block_n`` output channels per program, ``block_k`` elements of K per step, ``num_warps``."""

    block_n: int
    block_k: int
    num_warps: int = 4
    use_dot: bool = False
    """Tensor cores: each weight tile times the rows padded to 16 (``tl.dot``), Triton's pipeliner staging the
    weight loads ``num_stages`` deep; False: CUDA-core FMAs (one row: element-wise, several: per-row sums)."""
    num_stages: int = 1
    split_k: int = 1
    """Tensor cores only: K cut into this many slices, one program each (``[split, M, N]`` float32 partials, summed
    in slice order by the tile's last-arriving program): more programs where ``N / block_n`` alone leaves SMs idle."""

    def short(self) -> str:
        dot = f" dot s{self.num_stages}" if self.use_dot else ""
        split = f" split{self.split_k}" if self.split_k > 1 else ""
        return f"n{self.block_n} k{self.block_k} w{self.num_warps}{dot}{split}"


GEMV_MAX_M = 8
"""The most token rows a call may have to take the GEMV (the table's row buckets are 1, 2, 4 and 8; a table entry
may also name an exact row count, such as 5: a batch-1 verify of 4 speculative tokens)."""

ENABLED = True
"""False: :func:`gemv_rule` answers None, so every call runs ``F.linear`` (the A/B switch of the benchmarks; read at
call time, so at CUDA-graph capture)."""

# Measured: benchmarks/gpu/dense_gemv_sweep.py on an H200 (session 12, call 1; cuBLAS -> GEMV per call, weights
# streamed from HBM; benchmarks/results/h200-2026-12-03-session12/call1_sweep.txt): every shape and row count where
# the GEMV won by >= 3 %. From 2 rows on the tensor-core rules win on the narrow shapes (the router, the default
# model's linears, the LM head at 8 rows); on the 8B models' layer linears cuBLAS stays ahead at 2..8 rows (its
# time at 8 rows is its time at 1; the GEMV's tensor-core tiles leave too few programs on N = 4096).
GEMV_TABLE: dict[tuple[int, int, int], GemvRule] = {
    (1, 5120, 2048): GemvRule(4, 512, 4),  # 7.8 -> 6.1 us
    (1, 2048, 4096): GemvRule(4, 1024, 4),  # 8.8 -> 5.3 us
    (1, 128, 2048): GemvRule(2, 1024, 4),  # 5.1 -> 1.3 us
    (2, 128, 2048): GemvRule(16, 256, 2, True, 4),  # 5.1 -> 3.8 us
    (4, 128, 2048): GemvRule(16, 256, 2, True, 4),  # 5.1 -> 3.7 us
    (8, 128, 2048): GemvRule(16, 256, 2, True, 4),  # 5.1 -> 3.7 us
    (1, 6144, 4096): GemvRule(2, 1024, 4),  # 16.0 -> 13.3 us
    (1, 4096, 4096): GemvRule(4, 1024, 4),  # 12.9 -> 8.7 us
    (1, 28672, 4096): GemvRule(2, 1024, 4),  # 57.8 -> 55.6 us
    (1, 4096, 14336): GemvRule(4, 1024, 4),  # 32.0 -> 28.7 us
    (1, 128256, 4096): GemvRule(16, 256, 4),  # 247.3 -> 236.2 us
    (8, 128256, 4096): GemvRule(64, 128, 4, True, 4),  # 250.4 -> 242.3 us
    (1, 24576, 4096): GemvRule(2, 1024, 4),  # 51.1 -> 48.4 us
    (8, 24576, 4096): GemvRule(64, 128, 4, True, 4),  # 55.5 -> 52.3 us
    # 5 rows (a batch-1 verify of 4 proposals), H200 session 35 (results/gpu-2026-12-05-session35/call1_sweep5.txt):
    # tensor cores with the first weight tile read before the PDL wait, o in 4 K slices; qkv and down stay on cuBLAS
    (5, 4096, 4096): GemvRule(64, 128, 4, True, 4, 4),  # 12.6 -> 11.6 us
    (5, 28672, 4096): GemvRule(64, 128, 4, True, 4),  # 62.5 -> 58.1 us
    (1, 4096, 12288): GemvRule(4, 1024, 4),  # 30.5 -> 24.9 us
    (1, 960, 576): GemvRule(2, 1024, 4),  # 4.0 -> 1.4 us
    (2, 960, 576): GemvRule(16, 128, 1, True, 6),  # 3.8 -> 2.7 us
    (4, 960, 576): GemvRule(16, 128, 1, True, 6),  # 4.0 -> 2.7 us
    (8, 960, 576): GemvRule(16, 128, 1, True, 6),  # 3.7 -> 2.7 us
    (1, 576, 576): GemvRule(2, 1024, 4),  # 3.5 -> 1.1 us
    (2, 576, 576): GemvRule(64, 128, 4, True, 4),  # 3.4 -> 2.5 us
    (4, 576, 576): GemvRule(64, 128, 4, True, 4),  # 3.5 -> 2.5 us
    (8, 576, 576): GemvRule(64, 128, 4, True, 4),  # 3.5 -> 2.5 us
    (1, 3072, 576): GemvRule(4, 1024, 4),  # 4.1 -> 1.9 us
    (2, 3072, 576): GemvRule(64, 128, 4, True, 4),  # 4.1 -> 3.6 us
    (4, 3072, 576): GemvRule(64, 128, 4, True, 4),  # 4.1 -> 3.6 us
    (8, 3072, 576): GemvRule(64, 128, 4, True, 4),  # 4.1 -> 3.6 us
    (1, 576, 1536): GemvRule(4, 1024, 4),  # 5.2 -> 2.0 us
    (2, 576, 1536): GemvRule(16, 256, 2, True, 4),  # 5.0 -> 3.8 us
    (4, 576, 1536): GemvRule(16, 256, 2, True, 4),  # 5.1 -> 3.7 us
    (8, 576, 1536): GemvRule(16, 256, 2, True, 4),  # 5.0 -> 3.6 us
}
"""Measured winners over cuBLAS: ``(rows, N, K) -> rule``, rows an exact count or a row bucket (:func:`gemv_rule`
tries the exact count first; the sweep prints lines to paste here). A shape missing here runs ``F.linear``."""

DEVICE_GEMV_TABLE: dict[str, dict[tuple[int, int, int], GemvRule]] = {
    # H100 80GB HBM3, session 38 (results/gpu-2026-12-06-session38/call4_sweep5.txt; session 37's qkv entry before
    # it): the 5-row qkv, o and LM head on 256-deep K tiles, each the best of the 5-row candidates there (cuBLAS:
    # qkv 20.8 -> 19.9 us, o 15.9 -> 13.6 (the split-4 rule before), head 372.9 -> 342.9); on an H200 cuBLAS won the
    # 5-row qkv by 3 % (session 35). Verify-4 step at batch 1, alternating: 6.21 / 6.18 -> 6.15 / 6.16 ms
    "H100": {(5, 6144, 4096): GemvRule(64, 256, 4, True, 4), (5, 4096, 4096): GemvRule(64, 256, 4, True, 4),
             (5, 128256, 4096): GemvRule(64, 256, 4, True, 4)},
}
"""One card's own winners, ranked before :data:`GEMV_TABLE`'s: keyed by a word of ``torch.cuda.get_device_name``
(``"H100"`` in ``"NVIDIA H100 80GB HBM3"``), for shapes whose winner differs between cards."""

_device_names: dict[int, str] = {}


def device_rules(name: str) -> dict[tuple[int, int, int], GemvRule]:
    """:data:`DEVICE_GEMV_TABLE`'s entries for a device of this name (empty when none names it)."""
    words = name.split()
    return next((rules for word, rules in DEVICE_GEMV_TABLE.items() if word in words), {})


def m_bucket(m: int) -> int:
    """Token rows -> the table's row bucket (1, 2, 4 or 8)."""
    return 1 if m <= 1 else triton.next_power_of_2(m)


def gemv_rule(x: torch.Tensor, weight: torch.Tensor, table: dict[tuple[int, int, int], GemvRule] | None = None
              ) -> GemvRule | None:
    """The GEMV's launch for ``F.linear(x, weight)``, or None for ``F.linear`` itself: CUDA, bf16/fp16 x and weight
    of one dtype, a row-major weight, at most :data:`GEMV_MAX_M` rows, and a ``(rows, N, K)`` in ``table``
    (default :data:`GEMV_TABLE`, after this card's own entries in :data:`DEVICE_GEMV_TABLE`): the exact row count's
    entry where there is one (5: a batch-1 verify of 4 proposals), else its row bucket's."""
    rows = x.numel() // max(1, x.shape[-1])  # first: an eager prefill step's linears leave here at once
    if not 1 <= rows <= GEMV_MAX_M:
        return None
    card = table is None  # the default tables: this card's own entries rank first
    table = GEMV_TABLE if table is None else table
    if not ENABLED or not table or not x.is_cuda or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    if weight.dtype != x.dtype or weight.dim() != 2 or weight.stride(1) != 1:
        return None
    n, k = weight.shape
    rule = _card_rules(x.device).get((rows, n, k)) if card and DEVICE_GEMV_TABLE else None
    return rule or table.get((rows, n, k)) or table.get((m_bucket(rows), n, k))


def _card_rules(device: torch.device) -> dict[tuple[int, int, int], GemvRule]:
    """:func:`device_rules` of a CUDA device (its name read once per device index)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = _device_names.get(index)
    if name is None:
        name = _device_names[index] = torch.cuda.get_device_name(index)
    return device_rules(name)


@triton.jit
def _load_x(x_ptr, offs_k, k_ok, EVEN_K: tl.constexpr):
    """One K tile of an input row."""
    if EVEN_K:
        return tl.load(x_ptr + offs_k)
    return tl.load(x_ptr + offs_k, mask=k_ok, other=0.0)


@triton.jit
def _dot_tile(w, xk, acc, DOT_F32: tl.constexpr):
    """``acc + w @ xk.T`` on tensor cores (fp32 accumulators; ``DOT_F32``: fp32 inputs, never tf32 — the
    interpreter, whose bf16 dot is wrong, and fp32 weights)."""
    if DOT_F32:
        return acc + tl.dot(w.to(tl.float32), tl.trans(xk.to(tl.float32)), input_precision="ieee")
    return tl.dot(w, tl.trans(xk), acc)


@triton.jit
def _load_rows_tile(ptrs, offs_k, k_hi, row_ok, EVEN_K: tl.constexpr):
    """A ``[rows, BLOCK_K]`` tile at ``offs_k`` (zeros where ``row_ok`` is false or past ``k_hi``)."""
    if EVEN_K:
        return tl.load(ptrs + offs_k[None, :], mask=row_ok, other=0.0)
    return tl.load(ptrs + offs_k[None, :], mask=row_ok & (offs_k < k_hi)[None, :], other=0.0)


@triton.jit(do_not_specialize=["M"])
def _dense_gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, k_blocks, split_k, stride_xm, stride_wn,
                       stride_ym, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr, DOT_F32: tl.constexpr,
                       SPLIT: tl.constexpr, USE_PDL: tl.constexpr):
    """``y[m, n] = sum_k x[m, k] * w[n, k] (+ b[n])`` for this program's ``BLOCK_N`` channels and all ``M`` rows
    (tensor cores with ``SPLIT``: over K slice ``program_id(1)`` of ``k_blocks`` tiles; the tile's last-arriving
    program sums the slices' partials in slice order, adds the bias and stores).

    Under PDL a program loads its first weight tile before it waits for the previous kernel (weights are never
    written during a step; four tiles ahead measured slower at one row, RESULTS.md session 11)."""
    pdl_launch_dependents(USE_PDL)
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    offs_m = tl.arange(0, BLOCK_M)
    if BLOCK_M == 1:
        offs_k = tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = _load_rows_tile(rows, offs_k, K, n_ok[:, None], EVEN_K)
        pdl_wait(USE_PDL)
        xk = _load_x(x_ptr, offs_k, k_ok, EVEN_K)
        tile = w.to(tl.float32) * xk.to(tl.float32)[None, :]  # reduced over K once, after the loop
        for k0 in range(BLOCK_K, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            w = _load_rows_tile(rows, offs_k, K, n_ok[:, None], EVEN_K)
            xk = _load_x(x_ptr, offs_k, k_ok, EVEN_K)
            tile += w.to(tl.float32) * xk.to(tl.float32)[None, :]
        acc = tl.sum(tile, axis=1)[:, None]
    else:  # USE_DOT, BLOCK_M >= 16: [BLOCK_N, BLOCK_K] @ [BLOCK_K, BLOCK_M] on tensor cores, fp32 accumulators
        x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
        m_ok = (offs_m < M)[:, None]  # padded rows are masked: zeros, never read from memory
        k_lo = tl.program_id(1) * k_blocks * BLOCK_K
        k_hi = tl.minimum(k_lo + k_blocks * BLOCK_K, K)
        offs_k = k_lo + tl.arange(0, BLOCK_K)
        w = _load_rows_tile(rows, offs_k, k_hi, n_ok[:, None], EVEN_K)  # before the wait: weights only
        pdl_wait(USE_PDL)
        xk = _load_rows_tile(x_rows, offs_k, k_hi, m_ok, EVEN_K)
        acc = _dot_tile(w, xk, tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), DOT_F32)
        for k0 in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            w = _load_rows_tile(rows, offs_k, k_hi, n_ok[:, None], EVEN_K)
            xk = _load_rows_tile(x_rows, offs_k, k_hi, m_ok, EVEN_K)
            acc = _dot_tile(w, xk, acc, DOT_F32)
    keep = n_ok[:, None] & (offs_m < M)[None, :]
    if SPLIT:
        at = offs_m[None, :] * N + offs_n[:, None]
        last, total = split_k_total(acc, ws_ptr, lock_ptr, pid, tl.program_id(1), split_k, at, keep, M * N)
        if last:
            _finish_tile(total, b_ptr, y_ptr, offs_n, offs_m, n_ok, keep, stride_ym, HAS_BIAS)
    else:
        _finish_tile(acc, b_ptr, y_ptr, offs_n, offs_m, n_ok, keep, stride_ym, HAS_BIAS)


@triton.jit
def _finish_tile(acc, b_ptr, y_ptr, offs_n, offs_m, n_ok, keep, stride_ym, HAS_BIAS: tl.constexpr):
    """``acc`` (float32 ``[BLOCK_N, BLOCK_M]``) plus the bias, rounded once to y's dtype and stored."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    ptrs = y_ptr + offs_m.to(tl.int64)[None, :] * stride_ym + offs_n[:, None]
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=keep)


@triton.jit
def _load_w3(rows, k0, offs_k, n_ok, K, EVEN_K: tl.constexpr):
    """A ``[BLOCK_K / VEC, BLOCK_N, VEC]`` weight tile at K offset ``k0`` (zeros past K or past the last channel)."""
    if EVEN_K:
        return tl.load(rows + (k0 + offs_k), mask=n_ok[None, :, None], other=0.0)
    return tl.load(rows + (k0 + offs_k), mask=n_ok[None, :, None] & (k0 + offs_k < K), other=0.0)


@triton.jit
def _row_part(wf, x_ptr, m: tl.constexpr, stride_xm, k0, offs_k, K, EVEN_K: tl.constexpr):
    """Row ``m``'s products with the float32 tile ``wf``, summed over each thread's ``VEC`` contiguous elements:
    ``[BLOCK_K / VEC, BLOCK_N]`` (no cross-thread work; x is loaded as ``[BLOCK_K / VEC, 1, VEC]``, converted once
    for all of the thread's channels)."""
    ptrs = x_ptr + m * stride_xm + (k0 + offs_k)
    if EVEN_K:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=k0 + offs_k < K, other=0.0)
    return tl.sum(wf * x.to(tl.float32), axis=2)


@triton.jit
def _store_row(acc, b_ptr, y_ptr, m: tl.constexpr, stride_ym, offs_n, n_ok, HAS_BIAS: tl.constexpr):
    res = tl.sum(acc, axis=0)
    if HAS_BIAS:
        res += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + offs_n, res.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _dense_gemv_rows_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                            HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, ROWS: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr, USE_PDL: tl.constexpr):
    """``y[m, n] = sum_k x[m, k] * w[n, k] (+ b[n])`` for ``ROWS`` (2..8) rows on CUDA cores: each weight tile is
    loaded once (the next one while this one is used) and multiplied with every row; each thread sums its ``VEC``
    contiguous products per row and channel into one float32 partial (``ROWS`` accumulators of ``[BLOCK_K / VEC,
    BLOCK_N]``), reduced across threads once at the end. Tiles are ``[BLOCK_K / VEC, BLOCK_N, VEC]`` (K pieces
    first), so that Triton lays the threads along K and a thread's channels share its x values. Rows never meet:
    a row's sum order is fixed by the rule alone."""
    pdl_launch_dependents(USE_PDL)
    pid = tl.program_id(0)
    KV: tl.constexpr = BLOCK_K // VEC
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = w_ptr + offs_n.to(tl.int64)[None, :, None] * stride_wn
    offs_k = tl.arange(0, KV)[:, None, None] * VEC + tl.arange(0, VEC)[None, None, :]
    a0 = tl.zeros([KV, BLOCK_N], dtype=tl.float32)
    a1 = tl.zeros([KV, BLOCK_N], dtype=tl.float32)
    a2 = tl.zeros([KV, BLOCK_N], dtype=tl.float32)
    a3 = tl.zeros([KV, BLOCK_N], dtype=tl.float32)
    a4 = tl.zeros([KV, BLOCK_N], dtype=tl.float32)
    a5 = tl.zeros([KV, BLOCK_N], dtype=tl.float32)
    a6 = tl.zeros([KV, BLOCK_N], dtype=tl.float32)
    a7 = tl.zeros([KV, BLOCK_N], dtype=tl.float32)
    w_next = _load_w3(rows, 0, offs_k, n_ok, K, EVEN_K)  # weights only: read before the wait
    pdl_wait(USE_PDL)
    for k0 in range(0, K, BLOCK_K):
        wf = w_next.to(tl.float32)
        # the next tile (the last one again at the end: an L1 hit, never past K)
        k_next = tl.minimum(k0 + BLOCK_K, K - BLOCK_K) if EVEN_K else k0 + BLOCK_K
        w_next = _load_w3(rows, k_next, offs_k, n_ok, K, EVEN_K)
        a0 += _row_part(wf, x_ptr, 0, stride_xm, k0, offs_k, K, EVEN_K)
        a1 += _row_part(wf, x_ptr, 1, stride_xm, k0, offs_k, K, EVEN_K)
        if ROWS > 2:
            a2 += _row_part(wf, x_ptr, 2, stride_xm, k0, offs_k, K, EVEN_K)
        if ROWS > 3:
            a3 += _row_part(wf, x_ptr, 3, stride_xm, k0, offs_k, K, EVEN_K)
        if ROWS > 4:
            a4 += _row_part(wf, x_ptr, 4, stride_xm, k0, offs_k, K, EVEN_K)
        if ROWS > 5:
            a5 += _row_part(wf, x_ptr, 5, stride_xm, k0, offs_k, K, EVEN_K)
        if ROWS > 6:
            a6 += _row_part(wf, x_ptr, 6, stride_xm, k0, offs_k, K, EVEN_K)
        if ROWS > 7:
            a7 += _row_part(wf, x_ptr, 7, stride_xm, k0, offs_k, K, EVEN_K)
    _store_row(a0, b_ptr, y_ptr, 0, stride_ym, offs_n, n_ok, HAS_BIAS)
    _store_row(a1, b_ptr, y_ptr, 1, stride_ym, offs_n, n_ok, HAS_BIAS)
    if ROWS > 2:
        _store_row(a2, b_ptr, y_ptr, 2, stride_ym, offs_n, n_ok, HAS_BIAS)
    if ROWS > 3:
        _store_row(a3, b_ptr, y_ptr, 3, stride_ym, offs_n, n_ok, HAS_BIAS)
    if ROWS > 4:
        _store_row(a4, b_ptr, y_ptr, 4, stride_ym, offs_n, n_ok, HAS_BIAS)
    if ROWS > 5:
        _store_row(a5, b_ptr, y_ptr, 5, stride_ym, offs_n, n_ok, HAS_BIAS)
    if ROWS > 6:
        _store_row(a6, b_ptr, y_ptr, 6, stride_ym, offs_n, n_ok, HAS_BIAS)
    if ROWS > 7:
        _store_row(a7, b_ptr, y_ptr, 7, stride_ym, offs_n, n_ok, HAS_BIAS)


def _split(rule: GemvRule, k: int) -> tuple[int, int]:
    """(slices, K per slice) of a tensor-core rule: ``rule.split_k`` slices of whole ``block_k`` tiles (fewer when K
    has fewer tiles; the last slice may be shorter)."""
    tiles = -(-k // rule.block_k)
    per = -(-tiles // max(1, rule.split_k))
    return -(-tiles // per), per * rule.block_k


def dense_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rule: GemvRule) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` by the GEMV kernel (module docstring). ``x`` [..., K] with at most
    :data:`GEMV_MAX_M` rows in all; ``weight`` [N, K] with unit stride along K."""
    K = x.shape[-1]
    N = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"dense_gemv: x has {K} features, the weight {weight.shape[1]}")
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    if not 1 <= M <= GEMV_MAX_M:
        raise ValueError(f"dense_gemv takes 1..{GEMV_MAX_M} rows, got {M}")
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, rule.block_n),)
    bias_arg = bias if bias is not None else weight
    if M > 1 and not rule.use_dot:
        _dense_gemv_rows_kernel[grid](
            x2, weight, bias_arg, y, N, K, x2.stride(0), weight.stride(0), y.stride(0), HAS_BIAS=bias is not None,
            EVEN_K=K % rule.block_k == 0, ROWS=M, BLOCK_N=rule.block_n, BLOCK_K=rule.block_k,
            VEC=min(rule.block_k, 16 // x2.element_size()), num_warps=rule.num_warps, **launch_kwargs(x.device))
    else:
        split, k_split = _split(rule, K) if rule.use_dot else (1, K)
        ws = torch.empty((split, M, N), device=x.device, dtype=torch.float32) if split > 1 else y
        locks = arrival_counters(x.device, grid[0]) if split > 1 else y
        _dense_gemv_kernel[(grid[0], split)](
            x2, weight, bias_arg, y, ws, locks, M, N, K, k_split // rule.block_k, split, x2.stride(0),
            weight.stride(0), y.stride(0), HAS_BIAS=bias is not None,
            EVEN_K=K % rule.block_k == 0 and K % k_split == 0,
            BLOCK_M=max(16, m_bucket(M)) if rule.use_dot else 1, BLOCK_N=rule.block_n, BLOCK_K=rule.block_k,
            USE_DOT=rule.use_dot, DOT_F32=interpreted(_dense_gemv_kernel) or x2.dtype == torch.float32,
            SPLIT=split > 1, num_warps=rule.num_warps,
            num_stages=rule.num_stages if rule.use_dot else 1, **launch_kwargs(x.device))
    return y.view(*x.shape[:-1], N)


class GemvLinear(nn.Linear):
    """An ``nn.Linear`` whose calls of a few rows take the GEMV when :func:`gemv_rule` has a rule for them (the
    transformers fallback's linears, :func:`adopt_linears`); parameters, names and every other call unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rule = gemv_rule(x, self.weight)
        if rule is not None:
            return dense_gemv(x, self.weight, self.bias, rule)
        return F.linear(x, self.weight, self.bias)


def adopt_linears(model: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` into a :class:`GemvLinear` in place (its class only: parameters,
    hooks and state-dict names stay); returns how many. Subclasses of ``nn.Linear`` are left alone."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = GemvLinear
            count += 1
    return count
