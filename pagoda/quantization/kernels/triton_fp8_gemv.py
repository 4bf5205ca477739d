"""Weight-only FP8 GEMV for small batches (CUDA; CPU under ``TRITON_INTERPRET=1``): ``y = x @ (W * s).T (+ b)``.

``W`` is float8_e4m3fn ``[N, K]`` (row-major), ``x`` bf16/fp16/fp32 ``[M, K]`` with M small (decode steps);
the scale ``s`` is one float32 per tensor, per output channel ``[N]``, or per ``[bn, bk]`` block
(``[ceil(N/bn), ceil(K/bk)]``, DeepSeek-style ``weight_scale_inv``). Activations are **not** quantized: the
weight codes become floats in registers and every product ``x * w`` is exact in float32 (8-bit by 4-bit
significands), so the result is the dequantize-then-matmul reference up to float32 summation order — more
exact than the W8A8 product of :func:`pagoda.quantization.w8a8.fp8_linear`, which rounds activations to FP8.
A static checkpoint ``input_scale`` is therefore not used here (vLLM's weight-only FP8 Marlin path does the
same on GPUs without FP8 tensor cores).

Why: at M = 1 cuBLASLt's FP8 GEMM (``torch._scaled_mm``) runs slower than bf16 (measured on H200, RESULTS.md);
a GEMV that streams the 1-byte weights once at full bandwidth is what batch 1 needs.

Kernel (one launch): program ``(pid_n, pid_k)`` owns ``BLOCK_N`` output channels and the K slice
``[pid_k * k_split, (pid_k + 1) * k_split)``. The weight tile ``[BLOCK_N, BLOCK_K]`` is loaded contiguously
along K (16-byte vectors when K is a multiple of 16), decoded, and reduced against the activation rows:

* ``use_dot=False`` (CUDA cores): M = 1 accumulates ``w * x`` element-wise in a ``[BLOCK_N, BLOCK_K]`` float32
  tile and reduces over K once at the end (``tl.sum``); M > 1 reduces each tile per row. ``prefetch``: the next
  tile's codes are loaded into registers before this tile's arithmetic (twice the bytes in flight; Triton's
  pipeliner only stages loads that feed ``tl.dot``); without it, one row still reads its first tile before the
  PDL wait (as the bf16 GEMV, :mod:`pagoda.layers.dense_gemv`).
* ``use_dot=True`` (tensor cores): ``W_tile @ x_tile.T`` with the codes converted to the activation dtype
  (exact: e4m3 fits bf16 and fp16), the token rows padded to 16.

Decoding: ``decode="native"`` is Triton's float8e4nv conversion (hardware ``cvt`` on compute capability
>= 8.9); ``decode="bits"`` reads the codes as uint8 and moves sign, exponent and mantissa into an fp16 bit
pattern (``(b & 0x80) << 8 | (b & 0x7f) << 7``), which is the e4m3 value times 2**-8 for normals and
subnormals alike — any GPU, and the 2**8 is folded into the scale. (The two NaN codes 0x7f/0xff decode to
480 there; FP8 checkpoints and pagoda's quantizer never hold NaN.)

Split-K without float atomics: with ``split_k > 1`` each program stores its float32 partial to a workspace
``[split_k, M, N]``; a per-tile arrival counter (an integer ``atomic_add``, acq_rel) tells the last-arriving
program of a tile, which sums the partials in the fixed order ``0 .. split_k-1``, applies scale and bias,
stores, and resets the counter. Invariant: for a given M and config the output is bitwise reproducible run
to run (no order-dependent float sums), and each output row depends only on its own input row (rows never
mix; padded rows are clamped copies of the last real row and are never stored).
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from pagoda.layers.arrival_counters import arrival_counters, split_k_total
from pagoda.layers.pdl import launch_kwargs, pdl_launch_dependents, pdl_wait
from pagoda.layers.triton_mode import interpreted

_SCALE_TENSOR, _SCALE_CHANNEL, _SCALE_BLOCK = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class GemvConfig:
    """One launch configuration of :func:`fp8_gemv` (``split_k`` 0 = split K only when there are fewer output
    tiles than SMs; ``block_k`` must divide the scale block's ``bk`` for block-wise scales)."""

    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1
    split_k: int = 1
    use_dot: bool = False
    prefetch: bool = True

    def short(self) -> str:
        pf = "" if self.prefetch or self.use_dot else " nopf"
        return (f"{'dot' if self.use_dot else 'fma'} n{self.block_n} k{self.block_k} w{self.num_warps} "
                f"s{self.num_stages} split{self.split_k or 'auto'}{pf}")


GEMV_MAX_M = 8
"""``fp8_linear`` routes CUDA calls with at most this many token rows to :func:`fp8_gemv` (one constant; the
lead sets it from ``benchmarks/gpu/fp8_linear_bench.py``). 0 turns the GEMV off."""

# The measured winners (fp8_linear_bench.py, H200): CUDA-core GEMVs at 1-2 rows, tensor-core tiles from 4 (8 for
# qkv), session 3 call 3 (2026-12-01); one row re-measured in session 15 call 1 (2026-12-03, the first tile read before
# the PDL wait; benchmarks/results/h200-2026-12-03-session15/call1_fp8_sweep.txt): 2-4 channels a program, as the bf16
# GEMV's winners.
_FMA_N2 = GemvConfig(block_n=2, block_k=1024, prefetch=False)  # qkv 10.3 -> 9.1 us (floor 5.9)
_FMA_N4 = GemvConfig(block_n=4, block_k=1024, prefetch=False)  # o 6.1 -> 5.7 us (4.0), down 17.1 -> 16.1 (13.9)
_FMA_N4_K4096 = GemvConfig(block_n=4, block_k=4096, prefetch=False)  # gate_up 36.2 -> 29.2 us (27.7)
_FMA_16 = GemvConfig(block_n=16, block_k=512, num_warps=4, num_stages=1, split_k=1, use_dot=False, prefetch=False)
_FMA_8 = GemvConfig(block_n=8, block_k=1024, num_warps=4, num_stages=1, split_k=1, use_dot=False, prefetch=False)
_DOT_64 = GemvConfig(block_n=64, block_k=128, num_warps=4, num_stages=3, split_k=0, use_dot=True, prefetch=True)
GEMV_TABLE: dict[tuple[int, int, int], GemvConfig] = {
    (1, 6144, 4096): _FMA_N2,
    (2, 6144, 4096): _FMA_16,
    (4, 6144, 4096): _FMA_16,
    (8, 6144, 4096): _DOT_64,
    (1, 4096, 4096): _FMA_N4,
    (2, 4096, 4096): _FMA_8,
    (4, 4096, 4096): _DOT_64,
    (8, 4096, 4096): _DOT_64,
    (1, 28672, 4096): _FMA_N4_K4096,
    (2, 28672, 4096): _FMA_16,
    (4, 28672, 4096): _DOT_64,
    (8, 28672, 4096): _DOT_64,
    (1, 4096, 14336): _FMA_N4,
    (2, 4096, 14336): _FMA_8,
    (4, 4096, 14336): _DOT_64,
    (8, 4096, 14336): _DOT_64,
}
"""Measured winners: ``(m, n, k) -> config`` (the bench prints lines to paste here). ``m`` is the row count
rounded up to 1, 2, 4 or 8; shapes not listed use :func:`default_config`."""


def m_bucket(m: int) -> int:
    """Token rows -> the table's row bucket (the next power of two, at least 1)."""
    return 1 if m <= 1 else triton.next_power_of_2(m)


def default_config(m: int, n: int, k: int) -> GemvConfig:
    """The rule for shapes not in :data:`GEMV_TABLE` (before measurement: CUDA cores at one row, tensor cores
    above; splits chosen per launch to fill the GPU)."""
    if m <= 1:
        return GemvConfig(block_n=16, block_k=512, num_warps=4, num_stages=1, split_k=0)
    return GemvConfig(block_n=32, block_k=256, num_warps=4, num_stages=2, split_k=0, use_dot=True)


def pick_config(m: int, n: int, k: int) -> GemvConfig:
    return GEMV_TABLE.get((m_bucket(m), n, k)) or default_config(m, n, k)


@triton.jit
def _decode(w, BITS: tl.constexpr, dtype: tl.constexpr):
    """FP8 codes -> ``dtype`` (module docstring: ``BITS`` gives the value times 2**-8)."""
    if BITS:
        b = w.to(tl.uint16)
        h = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
        return h.to(tl.float16, bitcast=True).to(dtype)
    else:
        return w.to(dtype)


@triton.jit
def _epilogue(acc, offs_n, offs_m, M, N, s_ptr, b_ptr, y_ptr, stride_ym, SCALE_MODE: tl.constexpr,
              HAS_BIAS: tl.constexpr, BITS: tl.constexpr):
    """``acc [BLOCK_N, BLOCK_M]`` (sum over K) -> scaled, biased, cast and stored as ``y[m, n]``."""
    n_ok = offs_n < N
    if SCALE_MODE == 0:
        acc = acc * tl.load(s_ptr)
    elif SCALE_MODE == 1:
        acc = acc * tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)[:, None]
    if BITS:
        acc = acc * 256.0
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    ptrs = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & (offs_m < M)[None, :])


@triton.jit
def _load_codes(w_rows, k0, k_hi, n_ok, EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """The ``[BLOCK_N, BLOCK_K]`` codes at ``k0`` (zeros past ``k_hi``). ``EVEN_K``: whole tiles only, no mask
    along K (16-byte vector loads); the caller keeps ``k0`` in bounds."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    if EVEN_K:
        return tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None], other=0.0)
    else:
        return tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None] & (offs_k < k_hi)[None, :], other=0.0)


@triton.jit
def _rows_fma(acc, wf, sb, x_ptr, offs_k, k_ok, offs_m, M, stride_xm, BLOCK_SCALE: tl.constexpr,
              EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """CUDA cores, several rows: ``acc[:, m] += sum_k wf * x[m]`` for each row (one reduction per row and tile;
    padded rows re-read the last real row)."""
    for m in tl.static_range(BLOCK_M):
        x_row = x_ptr + tl.minimum(m, M - 1) * stride_xm + offs_k
        if EVEN_K:
            xm = tl.load(x_row).to(tl.float32)
        else:
            xm = tl.load(x_row, mask=k_ok, other=0.0).to(tl.float32)
        part = tl.sum(wf * xm[None, :], axis=1)
        if BLOCK_SCALE:
            part = part * sb
        acc += tl.where(offs_m[None, :] == m, part[:, None], 0.0)
    return acc


@triton.jit
def _one_row_tile(acc2, w, x_rows, k0, k_hi, s_ptr, offs_n, n_ok, stride_sn, SCALE_MODE: tl.constexpr,
                  SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, BITS: tl.constexpr, EVEN_K: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """CUDA cores, one row: the tile's products ``w * x`` added element-wise to ``acc2 [BLOCK_N, BLOCK_K]`` (reduced
    over K once, after the loop)."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    if EVEN_K:
        x = tl.load(x_rows + offs_k[None, :])
    else:
        x = tl.load(x_rows + offs_k[None, :], mask=(offs_k < k_hi)[None, :], other=0.0)
    prod = _decode(w, BITS, tl.float32) * x.to(tl.float32)
    if SCALE_MODE == 2:
        sb = tl.load(s_ptr + (offs_n // SCALE_BN) * stride_sn + k0 // SCALE_BK, mask=n_ok, other=0.0)
        prod = prod * sb[:, None]
    return acc2 + prod


@triton.jit
def _split_k_finish(acc, ws_ptr, lock_ptr, pid_n, pid_k, split_k, offs_n, offs_m, M, N, s_ptr, b_ptr, y_ptr,
                    stride_ym, SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, BITS: tl.constexpr):
    """Store this split's partial; the tile's last-arriving program sums all partials in split order and finishes
    the tile (:func:`pagoda.layers.arrival_counters.split_k_total`)."""
    keep = (offs_n < N)[:, None] & (offs_m < M)[None, :]
    at = offs_m[None, :] * N + offs_n[:, None]
    last, total = split_k_total(acc, ws_ptr, lock_ptr, pid_n, pid_k, split_k, at, keep, M * N)
    if last:
        _epilogue(total, offs_n, offs_m, M, N, s_ptr, b_ptr, y_ptr, stride_ym, SCALE_MODE, HAS_BIAS, BITS)


@triton.jit
def _fp8_gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, k_blocks, split_k, stride_xm,
                     stride_wn, stride_ym, stride_sn, SCALE_MODE: tl.constexpr, SCALE_BN: tl.constexpr,
                     SCALE_BK: tl.constexpr, HAS_BIAS: tl.constexpr, BITS: tl.constexpr, EVEN_K: tl.constexpr,
                     USE_DOT: tl.constexpr, DOT_F32: tl.constexpr, PREFETCH: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     SPLIT: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_launch_dependents(USE_PDL)  # (pagoda.layers.pdl: only the first codes are read before the wait)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_ok = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    x_rows = x_ptr + tl.minimum(offs_m, M - 1)[:, None] * stride_xm  # padded rows re-read the last real row
    k_lo = pid_k * k_blocks * BLOCK_K  # provably a multiple of BLOCK_K: 16-byte vector loads of the codes
    k_hi = tl.minimum(k_lo + k_blocks * BLOCK_K, K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # M = 1 on CUDA cores only (dead code otherwise)
    k_start = k_lo
    if PREFETCH:
        w_next = _load_codes(w_rows, k_lo, k_hi, n_ok, EVEN_K, BLOCK_K)
        pdl_wait(USE_PDL)
    elif not USE_DOT and BLOCK_M == 1:  # one row, no prefetch: the first tile's codes are read before the wait
        w_first = _load_codes(w_rows, k_lo, k_hi, n_ok, EVEN_K, BLOCK_K)
        pdl_wait(USE_PDL)
        acc2 = _one_row_tile(acc2, w_first, x_rows, k_lo, k_hi, s_ptr, offs_n, n_ok, stride_sn, SCALE_MODE, SCALE_BN,
                             SCALE_BK, BITS, EVEN_K, BLOCK_K)
        k_start = k_lo + BLOCK_K
    else:
        pdl_wait(USE_PDL)
    for k0 in range(k_start, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_hi
        if PREFETCH:  # CUDA cores: the next tile's loads are issued before this tile's arithmetic
            w = w_next
            k_next = k0 + BLOCK_K
            if EVEN_K:  # the last tile re-reads itself (in bounds; from L2) instead of a masked load
                k_next = tl.minimum(k_next, k_hi - BLOCK_K)
            w_next = _load_codes(w_rows, k_next, k_hi, n_ok, EVEN_K, BLOCK_K)
        else:  # (tensor cores: Triton's pipeliner stages the loads itself, num_stages)
            w = _load_codes(w_rows, k0, k_hi, n_ok, EVEN_K, BLOCK_K)
        if not USE_DOT and BLOCK_M == 1:
            acc2 = _one_row_tile(acc2, w, x_rows, k0, k_hi, s_ptr, offs_n, n_ok, stride_sn, SCALE_MODE, SCALE_BN,
                                 SCALE_BK, BITS, EVEN_K, BLOCK_K)
        else:
            sb = tl.full((BLOCK_N,), 1.0, tl.float32)  # unused unless SCALE_MODE == 2
            if SCALE_MODE == 2:
                sb = tl.load(s_ptr + (offs_n // SCALE_BN) * stride_sn + k0 // SCALE_BK, mask=n_ok, other=0.0)
            if USE_DOT:
                if EVEN_K:
                    x = tl.load(x_rows + offs_k[None, :])
                else:
                    x = tl.load(x_rows + offs_k[None, :], mask=k_ok[None, :], other=0.0)
                if DOT_F32:  # the interpreter's bf16 dot is wrong; fp32 is exact here (products fit fp32)
                    part = tl.dot(_decode(w, BITS, tl.float32), tl.trans(x.to(tl.float32)), input_precision="ieee")
                else:
                    part = tl.dot(_decode(w, BITS, x.dtype), tl.trans(x))
                if SCALE_MODE == 2:
                    part = part * sb[:, None]
                acc += part
            else:
                acc = _rows_fma(acc, _decode(w, BITS, tl.float32), sb, x_ptr, offs_k, k_ok, offs_m, M, stride_xm,
                                SCALE_MODE == 2, EVEN_K, BLOCK_M)
    if not USE_DOT and BLOCK_M == 1:
        acc += tl.sum(acc2, axis=1)[:, None]
    if not SPLIT:
        _epilogue(acc, offs_n, offs_m, M, N, s_ptr, b_ptr, y_ptr, stride_ym, SCALE_MODE, HAS_BIAS, BITS)
    else:
        _split_k_finish(acc, ws_ptr, lock_ptr, pid_n, pid_k, split_k, offs_n, offs_m, M, N, s_ptr, b_ptr, y_ptr,
                        stride_ym, SCALE_MODE, HAS_BIAS, BITS)


def _split(cfg: GemvConfig, tiles: int, k: int, device: torch.device, scale_bk: int) -> tuple[int, int]:
    """(split count, K per split): ``cfg.split_k`` or, for 0, enough splits for one program per SM,
    each split a multiple of ``block_k`` (and of the scale block along K)."""
    split = cfg.split_k
    if split == 0:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        split = max(1, min(8, -(-sms // tiles)))
    step = max(cfg.block_k, scale_bk)
    k_split = -(-k // (split * step)) * step
    return -(-k // k_split), k_split


def _scale_mode(scale: torch.Tensor, n: int, k: int, block: tuple[int, int] | None) -> int:
    if block is not None:
        bn, bk = block
        if scale.dim() != 2 or scale.shape[0] < -(-n // bn) or scale.shape[1] < -(-k // bk):
            raise ValueError(f"fp8_gemv: block scale shape {tuple(scale.shape)} does not match weight {(n, k)} "
                             f"with blocks {block}")
        return _SCALE_BLOCK
    if scale.numel() == 1:
        return _SCALE_TENSOR
    if scale.numel() != n:
        raise ValueError(f"fp8_gemv: weight scale of {scale.numel()} elements for {n} output channels")
    return _SCALE_CHANNEL


def fp8_gemv(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, *,
             block: tuple[int, int] | None = None, config: GemvConfig | None = None,
             decode: str | None = None) -> torch.Tensor:
    """``x2`` ``[M, K]`` times the FP8 ``weight`` ``[N, K]`` dequantized by ``scale`` (float32: one element,
    ``[N]``, or ``[ceil(N/bn), ceil(K/bk)]`` with ``block=(bn, bk)``), plus ``bias``: ``[M, N]`` in ``x2.dtype``.

    ``config`` defaults to :func:`pick_config`; ``decode`` (``"native"``/``"bits"``) to native on compute
    capability >= 8.9, bits elsewhere (the interpreter: native)."""
    m, k = x2.shape
    n = weight.shape[0]
    if weight.shape[1] != k or weight.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fp8_gemv: weight {tuple(weight.shape)} {weight.dtype} for input {tuple(x2.shape)}")
    y = torch.empty((m, n), device=x2.device, dtype=x2.dtype)
    if m == 0:
        return y
    cfg = config or pick_config(m, n, k)
    if cfg.use_dot and x2.dtype == torch.float32:  # tl.dot would round fp32 inputs to tf32
        cfg = dataclasses.replace(cfg, use_dot=False)
    mode = _scale_mode(scale, n, k, block)
    sbn, sbk = block or (1, 1)
    if mode == _SCALE_BLOCK and sbk % cfg.block_k:  # one scale column per K step: halve block_k until it divides
        bk = cfg.block_k
        while sbk % bk:
            bk //= 2
        cfg = dataclasses.replace(cfg, block_k=bk, use_dot=cfg.use_dot and bk >= 16)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    if decode is None:
        decode = "bits" if x2.is_cuda and torch.cuda.get_device_capability(x2.device) < (8, 9) else "native"
    tiles = triton.cdiv(n, cfg.block_n)
    split, k_split = _split(cfg, tiles, k, x2.device, sbk if mode == _SCALE_BLOCK else 1)
    ws = torch.empty((split, m, n), device=x2.device, dtype=torch.float32) if split > 1 else y
    locks = arrival_counters(x2.device, tiles) if split > 1 else y
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    w = weight.view(torch.uint8) if decode == "bits" else weight
    scale = scale.float().contiguous()
    _fp8_gemv_kernel[(tiles, split)](
        x2, w, scale, bias if bias is not None else y, y, ws, locks, m, n, k, k_split // cfg.block_k, split,
        x2.stride(0), weight.stride(0), y.stride(0), scale.stride(0) if mode == _SCALE_BLOCK else 0,
        SCALE_MODE=mode, SCALE_BN=sbn, SCALE_BK=sbk, HAS_BIAS=bias is not None, BITS=decode == "bits",
        EVEN_K=k % k_split == 0 and k_split % cfg.block_k == 0, USE_DOT=cfg.use_dot,
        DOT_F32=interpreted(_fp8_gemv_kernel),
        BLOCK_M=max(16, m_bucket(m)) if cfg.use_dot else m_bucket(m), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        SPLIT=split > 1, PREFETCH=cfg.prefetch and not cfg.use_dot, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **launch_kwargs(x2.device))
    return y
