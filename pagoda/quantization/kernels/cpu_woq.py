"""CPU weight-only integer matmuls through torch's packed kernels.

* ``_weight_int4pack_mm_for_cpu(x, packed, group, scales_zeros)`` computes ``W = (q - 8) * s + z`` per
  group (checked by experiment on torch 2.13: ``scales_zeros`` is ``[K/G, N, 2]`` in the activation
  dtype, groups 32/64/128/256 only, N a multiple of 16, ``packed`` is uint8 ``[N, K/2]`` in an opaque
  blocked order). The canonical ``q * s + o`` maps to it exactly with ``z = o + 8 s`` (exact for
  symmetric weights, one rounding of ``z`` in the activation dtype otherwise).
* 5..8-bit codes are split into nibbles, ``q = 16 hi + lo``, and run as two int4 matmuls:
  ``hi``: scale ``16 s``, zero ``o + 128 s``; ``lo``: scale ``s``, zero ``8 s`` (both exact when
  ``o = -128 s``, as in GGUF Q8_0). Same bytes as int8 codes.
* ``_weight_int8pack_mm(x, int8 [N, K], scales [N])``: per-channel only; used for 8-bit codes with one
  group per row and symmetric offsets (``o = -128 s``): ``W = (q - 128) * s``.

Measured on the 2-core dev VM (Xeon with AMX/AVX512-BF16), bf16 activations, torch 2.13, Q4_1-like weights
(group 32), one thread, minimum of repeats, the VM loaded by other jobs (load 10-16: only ratios within one
run count; ``benchmarks/int_weight_cpu_bench.py`` reproduces the table). ms per call::

    linear (N x K)        M   int4pack        bf16 oneDNN-prepacked   int8pack*   dequantize + F.linear
    qkv 960 x 576         1     0.034            0.027                0.016        2.4
    o 576 x 576           1     0.027            0.019                0.011        0.43
    gate_up 3072 x 576    1     0.093            0.150                0.045        1.2-1.8 (unloaded run)
    down 576 x 1536       1     0.055            0.054                0.022        1.3
    lm_head 49152 x 576   1    16.7 (Q8_0, 2 planes) 14.1             (16, 2 thr)  >800
    qkv 960 x 576        32     0.39             0.042                             13.9
    gate_up 3072 x 576   32     1.25             0.18                 0.74         56
    down 576 x 1536      32     0.66             0.077                0.39         1.3
    lm_head 49152 x 576  32   187 (2 planes)    28                   (90, 2 thr)   800
    whole step (30 layers x 4 linears with their own weights + LM head):
        M=1:  int_weight 47 ms, bf16 oneDNN 105 ms        M=32: int_weight 461 ms, bf16 oneDNN 154 ms
    int4pack vs dequantize-once + torch.mm (gate_up / down / qkv):
        M=32: 1.25 / 0.61 / 0.38 vs 13.8 / 1.9 / 1.2;   M=128: 6.9 / 2.5 / 1.5 vs 12.7 / 2.1 / 1.2
    (* int8pack is per-channel only: the column shows its speed, not a usable path for grouped weights)

So: int4pack for every supported M up to :data:`DEQUANT_MIN_M` rows (it is a GEMV per row: ~2x faster than
bf16 at M=1 where bytes dominate, but its cost grows linearly with M, ~3x slower than bf16 AMX at M=32), a
dequantize-once dense GEMM above (prefill). A dequantize-per-call fallback loses everywhere; int8pack is used
only where it is exact (per-channel symmetric 8-bit). Known gap: at M=32 no 4-bit path here matches the bf16
AMX GEMM; keeping bf16 weights would, at 4x the memory: a small model keeps such copies for steps of
:data:`DENSE_MIN_M` rows or more (:func:`pagoda.layers.cpu_linear.pack_int_weight_copies`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from pagoda.quantization.kernels import cpu_int4_dequant, cpu_int4_dot, cpu_int4_native

INT4_GROUPS = (32, 64, 128, 256)


def _has(op: str) -> bool:
    return hasattr(torch.ops.aten, op)


def int4_supported(bits: int, group_size: int, out_features: int) -> bool:
    return bits <= 8 and group_size in INT4_GROUPS and out_features % 16 == 0 and \
        _has("_weight_int4pack_mm_for_cpu") and _has("_convert_weight_to_int4pack_for_cpu")


def int8_per_channel(bits: int, group_size: int, in_features: int, scales: torch.Tensor,
                     offsets: torch.Tensor) -> bool:
    return bits == 8 and group_size == in_features and _has("_weight_int8pack_mm") and \
        bool(torch.equal(offsets.float(), -128.0 * scales.float()))


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)


def _scales_zeros(scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([scales.float(), zeros.float()], -1).transpose(0, 1).contiguous().to(dtype)


def pack_int4(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, bits: int,
              dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (packed, scales_zeros) pair for bits <= 4, two (low nibble, high nibble) for 5..8 bits."""
    s, o = scales.float(), offsets.float()
    if bits <= 4:
        return [(_pack_nibbles(codes), _scales_zeros(s, o + 8 * s, dtype))]
    return [(_pack_nibbles(codes & 15), _scales_zeros(s, 8 * s, dtype)),
            (_pack_nibbles(codes >> 4), _scales_zeros(16 * s, o + 128 * s, dtype))]


DENSE_MIN_M = 8
"""From this many rows an :class:`~pagoda.quantization.int_weight.IntWeight` that has a bf16 oneDNN copy
(:func:`pagoda.layers.cpu_linear.pack_int_weight_copies`) multiplies by the copy: measured 2026-12-01 on the
default model's shapes (medians, loaded VM), int4pack vs bf16 prepacked ms: M=1 qkv 0.069 / 0.069, gate_up
0.159 / 0.219, down 0.093 / 0.098; M=8 qkv 0.144 / 0.079, o 0.105 / 0.073, gate_up 0.423 / 0.389, down
0.209 / 0.103; M=32 qkv 0.457 / 0.079, gate_up 1.42 / 0.255, down 0.711 / 0.133."""

DENSE_COPY_MAX_BYTES = 0
"""The bf16 copies are kept only when all of a model's int-weight linears fit this many bytes of copies
(the default model's take 212 MB). Off (0) by default: a bf16 copy rounds the weights, so a step that crosses
``DENSE_MIN_M`` rows computed with other weight values than one below it, and outputs came to depend on the
batch and on prefix-cache hits (the default model's greedy answer to "What is the capital of France?" flipped
between a full prefill and a cache hit: a 0.009-nat near-tie). Measured gain when on: batch 32 0.29x -> 1.14x
HF bf16 (benchmarks/RESULTS.md). Making the int kernels fast at 8+ rows is the way to get both."""

DEQUANT_MIN_M = 128
"""Above this many rows (prefill) the weight is dequantized once and multiplied by oneDNN's bf16/fp32 GEMM:
int4pack's cost grows linearly with M (it is a GEMV per row); measured crossover 64..128 rows."""

DEQUANT_MIN_M_NATIVE = 256
""":data:`DEQUANT_MIN_M` for 4-bit planes the native kernel (:mod:`cpu_int4_native`, bf16) multiplies: it stays
ahead of dequantize + GEMM longer. Measured 2026-12-01 (default model's 4 shapes x 30 layers, min of 15, 2 threads):
native / dequantize + mm ms M=128 94 / 160, M=192 123 / 165, M=256 165 / 167 (a 150-token prompt's prefill went
0.29 -> ~0.2 s). Re-measured 2026-12-06 on the AMX dev VM with the native dequantization (:mod:`cpu_int4_dequant`)
against the AMX int4 kernel (``benchmarks/results/cpu-2026-12-06-session39/prefill_linears.txt``, two runs): the
crossover lies between 128 and 384 rows; 256 kept."""

DEQUANT_MIN_M_NATIVE_AVX2 = 2048
""":data:`DEQUANT_MIN_M_NATIVE` for the AVX2 native kernel (``cpu_int4_gemm_avx2.c``), whose rival is an fp32 GEMM
(:func:`dense_dtype`). Measured 2026-12-04 on the AVX2-only dev VM (default model's 4 shapes x 30 layers, min of
5, 2 threads; ``benchmarks/results/cpu-avx2-int4-2026-12-04/prefill_crossover.txt``): native / dequantize + fp32
mm ms M=128 229 / 596, M=256 414 / 731, M=512 805 / 1132, M=1024 1543 / 1840: ahead up to ~2k rows."""


BLOCK_WIDTHS = (64, 32)
"""Column-block widths of torch's int4pack layouts that :func:`block_width` recognizes (AVX-512: 64, AVX2: 32)."""


@lru_cache(maxsize=1)
def block_width() -> int:
    """The width ``B`` of torch's int4pack layout on this CPU, 0 if it is none of :data:`BLOCK_WIDTHS`: each
    ``B``-column block stored as ``[K, B/2]`` bytes, column ``j`` of the block in the low and ``j + B/2`` in the
    high nibble of byte ``j`` (torch 2.13: 64 in its AVX-512 kernel, 32 in its AVX2 one). Checked on a probe,
    never assumed."""
    n, k = 64, 32
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    except RuntimeError:
        return 0
    if packed.numel() * 2 != n * k:
        return 0
    for width in BLOCK_WIDTHS:
        if torch.equal(_unpack_blocks(packed, n, k, width).t(), q.to(torch.uint8)):
            return width
    return 0


def _unpack_blocks(packed: torch.Tensor, n: int, k: int, width: int) -> torch.Tensor:
    """Codes transposed, uint8 ``[K, N]``, from the block layout of :func:`block_width` ``width``."""
    p = packed.view(n // width, k, width // 2)
    return torch.cat([p & 15, p >> 4], -1).permute(1, 0, 2).reshape(k, n)


@lru_cache(maxsize=1)
def _native_bf16() -> bool:
    from pagoda.config import cpu_supports_bf16

    return cpu_supports_bf16()


def dense_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a dequantize-once GEMM runs in: bf16 activations run in float32 on a CPU without native bf16
    (AVX2: torch's bf16 GEMM there was ~30x slower than dequantizing to float32; measured 2026-12-04, default
    model, 16 prompts of 64 tokens, prefill 159 s in bf16 against 4.9 s on int4pack), rounded back once."""
    return torch.float32 if dtype == torch.bfloat16 and not _native_bf16() else dtype


def _dequantized_t(parts: list[tuple[torch.Tensor, torch.Tensor]], n: int, k: int, group_size: int,
                   dtype: torch.dtype, width: int) -> torch.Tensor:
    """``W.T`` ``[K, N]`` in ``dtype``: ``(q - 8) * s + z`` per nibble plane, summed: by the native pass of
    :mod:`cpu_int4_dequant` where it applies (the same bits), else :func:`_dequantized_t_torch`."""
    if width == 64:
        w = cpu_int4_dequant.dequantized_t(parts, n, k, group_size, dtype)
        if w is not None:
            return w
    return _dequantized_t_torch(parts, n, k, group_size, dtype, width)


def _dequantized_t_torch(parts: list[tuple[torch.Tensor, torch.Tensor]], n: int, k: int, group_size: int,
                         dtype: torch.dtype, width: int) -> torch.Tensor:
    """:func:`_dequantized_t` by torch's ops (the reference the native pass is checked against)."""
    w = None
    for packed, sz in parts:
        q = _unpack_blocks(packed, n, k, width).view(k // group_size, group_size, n).to(dtype)
        s = sz[..., 0].to(dtype).unsqueeze(1)
        z = (sz[..., 1].float() - 8 * sz[..., 0].float()).to(dtype).unsqueeze(1)
        plane = torch.addcmul(z, q, s).view(k, n)
        w = plane if w is None else w.add_(plane)
    assert w is not None
    return w


def takes_dense_gemm(rows: int, n: int, per_row: bool, native: bool) -> bool:
    """Whether :func:`int4_matmul` multiplies ``rows`` rows by a dequantize-once dense GEMM (prefill) rather than
    an int4 kernel (``native``: a native int4 kernel serves these bf16 rows; ``n``: out features)."""
    width = block_width()
    dequant_min_m = (DEQUANT_MIN_M_NATIVE if width == 64 else DEQUANT_MIN_M_NATIVE_AVX2) if native else DEQUANT_MIN_M
    return not per_row and rows > dequant_min_m and bool(width) and n % width == 0


def int4_matmul(x: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]], group_size: int,
                per_row: bool = False, one_kernel: bool = False) -> torch.Tensor:
    """``x @ W.T`` for int4pack planes: up to the dequantize-once dense path, by :mod:`cpu_int4_dot` at every row
    count where it is available (else :mod:`cpu_int4_native` / torch's int4pack, the same bits); ``per_row``: never
    the dense path (each row computed alone: batch-invariant); ``per_row`` or ``one_kernel``: one build of
    :mod:`cpu_int4_dot` for one row too (:func:`cpu_int4_dot.one_row_library`)."""
    x = x.contiguous()
    n, k = parts[0][0].shape[0], x.shape[1]
    dot = x.dtype == torch.bfloat16 and cpu_int4_dot.available()
    native = dot or (x.dtype == torch.bfloat16 and cpu_int4_native.available())
    if takes_dense_gemm(x.shape[0], n, per_row, native):
        dt = dense_dtype(x.dtype)
        return torch.mm(x.to(dt), _dequantized_t(parts, n, k, group_size, dt, block_width())).to(x.dtype)
    out = None
    for packed, sz in parts:
        if sz.dtype != x.dtype:
            sz = sz.to(x.dtype)
        if dot:  # every row count (its rows do not depend on the batch); None only for this weight's shape
            y = cpu_int4_dot.int4_dot_mm(x, packed, group_size, sz, one_kernel=per_row or one_kernel)
        else:
            y = cpu_int4_native.int4_mm(x, packed, group_size, sz) if x.shape[0] >= cpu_int4_native.min_rows() \
                else None
        if y is None:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, sz)
        out = y if out is None else out.add_(y)
    assert out is not None
    return out


def unpack_int4(parts: list[tuple[torch.Tensor, torch.Tensor]], in_features: int, group_size: int) -> torch.Tensor:
    """uint8 codes ``[N, K]`` back from the opaque packing: each nibble plane is multiplied by the identity
    with scale 1 and zero 8 (exact small integers). For tests and device moves; costs K GEMV rows."""
    codes = None
    for i, (packed, sz) in enumerate(parts):
        ones = torch.stack([torch.ones_like(sz[..., 0]), torch.full_like(sz[..., 0], 8.0)], -1).float()
        eye = torch.eye(in_features, dtype=torch.float32)
        plane = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, group_size, ones.contiguous())
        q = plane.round().to(torch.uint8).t() << (4 * i)
        codes = q if codes is None else codes | q
    assert codes is not None
    return codes.contiguous()


def dequantize_int4(parts: list[tuple[torch.Tensor, torch.Tensor]], in_features: int, group_size: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """The dense weight the int4 kernel multiplies by (identity through the kernel itself)."""
    eye = torch.eye(in_features, dtype=parts[0][1].dtype)
    return int4_matmul(eye, parts, group_size).t().to(dtype).contiguous()


def pack_int8(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (codes.to(torch.int16) - 128).to(torch.int8).contiguous(), scales[:, 0].contiguous()


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    if not per_row and x.shape[0] > DEQUANT_MIN_M:  # a GEMV per row as well: dequantize once for prefill
        dt = dense_dtype(x.dtype)
        return F.linear(x.to(dt), q.to(dt) * scales.to(dt).unsqueeze(-1)).to(x.dtype)
    return torch.ops.aten._weight_int8pack_mm(x.contiguous(), q, scales.to(x.dtype))
