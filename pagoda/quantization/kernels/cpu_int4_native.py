"""A multi-row int4 matmul that computes exactly what ``aten::_weight_int4pack_mm_for_cpu`` computes, faster.

torch's AVX-512 int4pack kernel re-dequantizes the weight for every 4-row block and multiplies at about half the
fp32 FMA rate; ``cpu_int4_gemm.c`` (next to this file) dequantizes each 32-column panel once and runs 12 rows at a
time at about the full rate (9+ rows), or dequantizes in registers with fewer operations and applies each weight
vector to all rows at once (1..8 rows: a decode step, a speculative verify), with the same operations in the same
order per output element (its header comment states the arithmetic), so its output is bitwise the torch kernel's at
every batch size. On a CPU with AVX2 but no AVX-512 torch's kernel has another layout (32-column blocks) and
another arithmetic (the zero point folded first); ``cpu_int4_gemm_avx2.c`` reproduces that one the same way (16
columns per task, up to 4 rows in registers, 6-row tiles over an fp32 panel above). Compiled on first use
with the system C compiler into ``$PAGODA_CACHE/kernels/`` (OpenMP from the libgomp torch already loaded) and
loaded with ctypes.

It is used only after a self-check against the torch kernel on random weights and activations (several row
counts, both nibbles, group sizes 32 and 128) returns identical bits; anything else (no compiler, not x86-64
AVX-512 or AVX2, torch's packing neither layout, a failed compile, a mismatch) leaves the torch kernel in
place (logged once). Measured (2-core dev VM, default model's shapes, one thread): AVX-512: 1.7-1.8x faster at 32
rows, 1.14x at 1 row (hot weights; not inside a step, see :data:`MIN_ROWS`), 1.3x at 4, 1.6x at 5; AVX2
(2026-12-04, ``benchmarks/results/cpu-avx2-int4-2026-12-04/``): 2.4x at 32 rows, 1.7x at 4 and 5, 1.27x at 1.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from functools import lru_cache
from pathlib import Path

import torch

logger = logging.getLogger("pagoda")

_COMMON_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
_VARIANTS = {
    64: (Path(__file__).with_name("cpu_int4_gemm.c"), ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"),
         ("AVX512", "AMX")),
    32: (Path(__file__).with_name("cpu_int4_gemm_avx2.c"), ("-mavx2", "-mfma"), ("AVX2",)),
}
"""By torch's int4pack block width (:func:`cpu_woq.block_width`): the C source, its ISA flags, and the CPU
capabilities (``torch.backends.cpu.get_cpu_capability()``) whose torch kernel that source reproduces bit for bit."""

MIN_ROWS = 2
"""From this many rows the native kernel runs (bitwise the same values as torch's). Measured 2026-12-01 on the
default model's shapes (``benchmarks/int4_small_m_bench.py``, 30 layers, hot weights, min of 100, 2 threads): torch /
native ms M=1 3.16 / 2.99, M=4 5.75 / 4.80, M=5 10.98 / 6.34, M=8 11.28 / 8.47; but inside a decode step (weights
streamed from memory, ``benchmarks/spec_cpu_profile.py``) the int4 linears of a 1-row step took 8.1 ms with torch's
kernel against 10.8 ms with this one (its per-call ctypes cost), so 1 row stays on torch's; 5 rows: 14.9 -> 13.2 ms."""

MIN_ROWS_AVX2 = 1
""":data:`MIN_ROWS` for the AVX2 kernel: there torch's 1-row int4pack is compute-bound (~17 ms per 30 layers on one
thread against ~13 ms native, hot weights), and in-engine A/B runs (one LLM, arms alternating, batch 1, 64 tokens,
6 rounds each; ``benchmarks/results/cpu-avx2-onethread-2026-12-04/min_rows_ab*.txt``, 2026-12-04) gave 1.12x and
1.13x tok/s with identical outputs (11 of 12 round pairs favoured the native kernel)."""


def min_rows() -> int:
    """From this many rows :func:`int4_mm` is used for this CPU's kernel (:data:`MIN_ROWS`, :data:`MIN_ROWS_AVX2`)."""
    return MIN_ROWS_AVX2 if width() == 32 else MIN_ROWS


@lru_cache(maxsize=1)
def width() -> int:
    """The int4pack block width the native kernel handles here (64: AVX-512, 32: AVX2), 0 where none does."""
    from pagoda.quantization.kernels import cpu_woq

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return 0
    w = cpu_woq.block_width()
    return w if w in _VARIANTS and torch.backends.cpu.get_cpu_capability() in _VARIANTS[w][2] else 0


@lru_cache(maxsize=1)
def _kernel() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]  # ctypes' private base class
    if not width():
        return None
    from pagoda.native import load_library

    source, isa, _ = _VARIANTS[width()]
    lib = load_library(source, (*_COMMON_FLAGS, *isa), "the native int4 kernel")
    if lib is None:
        return None
    fn = lib.pagoda_int4_mm
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 5
    if not _self_check(fn):
        logger.warning("CPU: the native int4 kernel disagrees with torch's int4pack kernel on this machine; "
                       "torch's is used")
        return None
    return fn


def _call(fn, x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor | None:
    m, k = x.shape
    out = torch.empty(m, packed.shape[0], dtype=x.dtype)
    rc = fn(x.data_ptr(), packed.data_ptr(), sz.data_ptr(), out.data_ptr(), m, packed.shape[0], k, group_size,
            torch.get_num_threads())
    return out if rc == 0 else None


def _self_check(fn) -> bool:
    gen = torch.Generator().manual_seed(1234)
    for n, k, g in ((128, 256, 32), (192, 128, 128), (64, 64, 64)):
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = (torch.randn(k // g, n, 2, generator=gen) * 0.1).to(torch.bfloat16)
        sz[0, :4, 1] = torch.tensor([0.0, -0.0, 1e-38, 3e4])  # zeros, a denormal-range and a large zero point
        for m in (1, 2, 3, 4, 5, 8, 12, 13, 30):
            x = (torch.randn(m, k, generator=gen) * 4).to(torch.bfloat16)
            x[0, :2] = torch.tensor([0.0, 1e-39])
            ref = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, g, sz)
            got = _call(fn, x, packed, g, sz)
            if got is None or not torch.equal(ref.view(torch.int16), got.view(torch.int16)):
                return False
    return True


def available() -> bool:
    return _kernel() is not None


def int4_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor | None:
    """``aten::_weight_int4pack_mm_for_cpu(x, packed, group_size, sz)`` bit for bit (bf16 ``x`` contiguous, out
    features a multiple of :func:`width`), or None where this kernel does not apply (the caller runs torch's)."""
    if x.dtype != torch.bfloat16 or sz.dtype != torch.bfloat16 or x.device.type != "cpu" or not width() or \
            packed.shape[0] % width():
        return None
    fn = _kernel()
    if fn is None:
        return None
    return _call(fn, x.contiguous(), packed.contiguous(), group_size, sz.contiguous())
