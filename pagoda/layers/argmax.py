"""Row-wise argmax of logits: on CUDA by :mod:`pagoda.layers.argmax_triton` (two Triton launches), on an AVX-512 CPU
by ``cpu_argmax.c`` (float32 rows), elsewhere torch.

Why: torch's ``argmax(-1)`` over one 128k-wide row runs as one reduction kernel that leaves most SMs idle (36 µs of
a 4.97 ms Llama-3-8B batch-1 decode step on an H200, RESULTS.md session 3), where the 256 KB it reads take ~0.1 µs
at the memory bandwidth. On the CPU, torch's ``max(dim)`` (2-3x faster than its ``argmax`` there) took ~44 µs for
one 49152-wide row and 0.7 ms for 32 (2-core dev VM), the native kernel 6 µs and 0.1 ms (RESULTS.md, session 27).

Invariant: the same index as ``torch.argmax(logits, -1)``: the first maximal value of a row, where a NaN counts
as larger than any number (the first NaN wins)."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("cpu_argmax.c")

ENABLED = True
"""False: :func:`argmax_rows` is torch's (``max(dim)`` on the CPU, ``argmax`` elsewhere: the A/B switch of the
benchmarks; read at call time)."""


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)``, int64: 2-D float rows with unit stride along the vocabulary take the Triton kernels
    (CUDA) or the native one (float32 on an AVX-512 CPU); anything else (and :data:`ENABLED` off) goes to torch."""
    if (ENABLED and logits.dim() == 2 and logits.stride(-1) == 1 and 0 < logits.shape[1] < 2**31
            and logits.shape[0] > 0):
        if logits.is_cuda and logits.dtype in (torch.bfloat16, torch.float16, torch.float32):
            from pagoda.layers.argmax_triton import argmax_triton

            return argmax_triton(logits)
        if logits.device.type == "cpu" and logits.dtype == torch.float32 and (
                logits.shape[0] == 1 or logits.stride(0) >= logits.shape[1]):  # rows that do not overlap
            lib = _cpu_lib()
            if lib is not None:
                return _cpu_argmax(lib, logits)
    if logits.device.type == "cpu" and logits.dim() == 2 and logits.shape[-1] > 0:
        # max(dim) documents the same first-index rule and runs 2-3x faster than argmax on the CPU
        return logits.max(dim=-1).indices
    return logits.argmax(dim=-1)


def _cpu_argmax(lib: ctypes.CDLL, logits: torch.Tensor) -> torch.Tensor:
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    stride = logits.stride(0) if logits.shape[0] > 1 else logits.shape[1]
    if lib.pagoda_argmax_rows(logits.data_ptr(), logits.shape[0], logits.shape[1], stride, out.data_ptr()) != 0:
        raise RuntimeError(f"native argmax refused logits of shape {tuple(logits.shape)}")
    return out


@lru_cache(maxsize=1)
def _cpu_lib() -> ctypes.CDLL | None:
    """``cpu_argmax.c`` compiled (AVX-512 CPUs) and checked against ``torch.argmax`` (NaNs, ties, infinities), or
    None."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return None
    from pagoda.native import load_checked

    def agrees(lib: ctypes.CDLL) -> bool:
        g = torch.Generator().manual_seed(7)
        x = torch.randn(9, 1037, generator=g)
        x[1, 5] = x[1, 700] = float("nan")  # the first NaN wins
        x[2] = float("-inf")
        x[3, 3] = x[3, 900] = 1e9  # a tie: the first index
        x[4, 1030] = float("nan")  # in the tail past the last 16 lanes
        x[5, 2] = float("inf")
        x[6] = 0.0
        x[6, 17] = -0.0
        x[7, 1036] = 50.0
        return torch.equal(_cpu_argmax(lib, x), x.argmax(-1)) and \
            torch.equal(_cpu_argmax(lib, x[:, :16]), x[:, :16].argmax(-1))

    return load_checked(_SOURCE, ("-O3", "-shared", "-fPIC", "-mavx512f", "-mavx512dq"), "the native argmax",
                        "pagoda_argmax_rows", [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                               ctypes.c_void_p], agrees)
