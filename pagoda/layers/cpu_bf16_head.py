"""A bf16 LM head for CPUs without native bf16 (``cpu_bf16_head.c`` beside this file): float32 logits from bf16
hidden rows and a bf16 weight, reading the weight's 2 bytes per element once per call.

Where oneDNN cannot prepack a bf16 weight (an AVX2-only CPU: no AVX512-BF16/AMX), torch's bf16 matmul of the
default model's 49152 x 576 head measured 3.8 ms at 1 row, 54 ms at 16 and 107 ms at 32 rows (a GEMV per row;
2026-12-04, AVX2 dev VM), against 9.6 / 24.5 / 33.9 ms for float32 on a float32 copy (twice the memory). This
kernel converts the weight on the fly and accumulates in float32, so its logits need no float32 refinement of the
leading entries (:mod:`pagoda.layers.logits`), and every row's logits are bitwise the same at every batch size
(the C file's header states the arithmetic). Compiled on first use (``pagoda.native``) and used only after a
self-check (float32 reference within rounding, rows alone == rows in a batch); otherwise torch's matmul runs.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from functools import lru_cache
from pathlib import Path

import torch

logger = logging.getLogger("pagoda")

_SOURCE = Path(__file__).with_name("cpu_bf16_head.c")
_FLAGS = ("-O3", "-ffp-contract=off", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")


@lru_cache(maxsize=1)
def _kernel() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]  # ctypes' private base class
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64") or \
            torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512", "AMX"):
        return None
    from pagoda.native import load_library

    lib = load_library(_SOURCE, _FLAGS, "the bf16 LM head kernel")
    if lib is None:
        return None
    fn = lib.pagoda_bf16_head
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4
    if not _self_check(fn):
        logger.warning("CPU: the bf16 LM head kernel failed its self-check on this machine; torch's matmul is used")
        return None
    return fn


def _call(fn, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    out = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32)
    rc = fn(x.data_ptr(), w.data_ptr(), out.data_ptr(), x.shape[0], w.shape[0], x.shape[1], torch.get_num_threads())
    return out if rc == 0 else None


def _self_check(fn) -> bool:
    gen = torch.Generator().manual_seed(4321)
    w = torch.randn(103, 64, generator=gen).to(torch.bfloat16)
    x = (torch.randn(7, 64, generator=gen) * 3).to(torch.bfloat16)
    got = _call(fn, x, w)
    if got is None:
        return False
    ref = x.double() @ w.double().t()
    if not torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-4):
        return False
    rows = [_call(fn, x[i : i + 1], w) for i in range(x.shape[0])]
    return all(r is not None and torch.equal(r[0], got[i]) for i, r in enumerate(rows))


def available() -> bool:
    return _kernel() is not None


def head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """float32 ``x @ w.T`` for bf16 ``x`` [M, K] and ``w`` [N, K] on the CPU, or None where the kernel does not apply
    (the caller runs torch's matmul)."""
    if x.dtype != torch.bfloat16 or w.dtype != torch.bfloat16 or x.device.type != "cpu" or x.dim() != 2 or \
            w.device.type != "cpu" or x.shape[1] != w.shape[1] or x.shape[1] % 8:
        return None
    fn = _kernel()
    if fn is None:
        return None
    return _call(fn, x.contiguous(), w.contiguous())
