"""The prefill's dense weight from 4-bit int4pack planes in one native pass (``cpu_int4_dequant.c``, AVX-512).

Above :func:`cpu_woq.takes_dense_gemm`'s row count a 4-bit linear is dequantized once per call and multiplied by
oneDNN's dense GEMM. torch's ops for that dequantization (unpack the nibbles, ``addcmul`` the scale and zero, one
tensor per step) cost more than the GEMM itself: measured on the 2-core AMX dev VM, the default model's 120 linears
dequantized in ~270 ms a prefill chunk, the bf16 GEMM of 512 rows ~70 ms (``benchmarks/RESULTS.md``, session 39).
This kernel writes the same values (bit for bit: :func:`_agrees` checks it at load against
:func:`cpu_woq._dequantized_t_torch`) in one pass over the codes.

Invariant: :func:`dequantized_t` returns exactly what torch's ops return for the same planes, or None where it does
not apply (no AVX-512, a layout other than 64-column blocks, scales not in bf16, an output dtype other than bf16 /
float32); callers then run torch's ops. ``ENABLED = False`` is the A/B switch (read at every call).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("cpu_int4_dequant.c")
_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl",
          "-mavx512dq", "-mavx2")
_ARGS = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 6
ENABLED = True
"""False: the dense weight comes from torch's ops (the A/B switch)."""


def dequantized_t(parts: list[tuple[torch.Tensor, torch.Tensor]], n: int, k: int, group_size: int,
                  dtype: torch.dtype) -> torch.Tensor | None:
    """``W.T`` ``[K, N]`` in ``dtype`` from int4pack planes (64-column blocks) with bf16 ``(scale, zero)``: each
    plane's ``(q - 8) * s + z``, the planes summed, as :func:`cpu_woq._dequantized_t_torch` computes them; None where
    this kernel does not apply."""
    if not ENABLED or dtype not in (torch.bfloat16, torch.float32) or n % 64 or k % group_size:
        return None
    if any(sz.dtype != torch.bfloat16 or packed.numel() * 2 != n * k for packed, sz in parts):
        return None
    lib = _library()
    if lib is None:
        return None
    return _run(lib, parts, n, k, group_size, dtype)


def _run(lib: ctypes.CDLL, parts: list[tuple[torch.Tensor, torch.Tensor]], n: int, k: int, group_size: int,
         dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(k, n, dtype=dtype)
    for i, (packed, sz) in enumerate(parts):
        packed, sz = packed.contiguous(), sz.contiguous()
        rc = lib.pagoda_int4_dequant_t(packed.data_ptr(), sz.data_ptr(), out.data_ptr(), n, k, group_size,
                                       int(dtype == torch.bfloat16), int(i > 0), torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"native 4-bit dequantization refused a [{n}, {k}] weight (group {group_size})")
    return out


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernel after it matched torch's ops bit for bit on this machine, or None (no AVX-512, torch's
    int4pack layout not 64-column blocks, no compiler)."""
    from pagoda.native import cpu_has, load_checked
    from pagoda.quantization.kernels import cpu_woq

    if cpu_woq.block_width() != 64 or not cpu_has("avx512f", "avx512bw", "avx512vl", "avx512dq"):
        return None
    return load_checked(_SOURCE, _FLAGS, "the native 4-bit dequantization", "pagoda_int4_dequant_t", _ARGS, _agrees)


def _agrees(lib: ctypes.CDLL) -> bool:
    """Bit for bit torch's ops on random planes: one plane and two (a 5-8 bit weight), bf16 and float32 outputs,
    groups of 32 and 128, scales and zeros of both signs and several binades."""
    from pagoda.quantization.kernels import cpu_woq

    g = torch.Generator().manual_seed(5)
    for n, k, group, planes in ((128, 256, 32, 1), (192, 256, 128, 2), (64, 64, 32, 2)):
        parts = []
        for _ in range(planes):
            q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            sz = torch.randn(k // group, n, 2, generator=g) * torch.exp2(torch.randint(-12, 4, (k // group, n, 2),
                                                                                       generator=g).float())
            parts.append((packed, sz.to(torch.bfloat16)))
        for dtype in (torch.bfloat16, torch.float32):
            want = cpu_woq._dequantized_t_torch(parts, n, k, group, dtype, 64)
            got = _run(lib, parts, n, k, group, dtype)
            if not torch.equal(got.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                               want.view(torch.int16 if dtype == torch.bfloat16 else torch.int32)):
                return False
    return True
