"""Native CPU kernels for a bf16 decoder layer's small ops (``cpu_fused.c`` beside this file).

On the CPU a batch-1 decode step of a small model is dominated by per-op cost, not by arithmetic: torch's
``rms_norm`` on one 576-wide row is six ops (~20 µs), plus the weight's and the output's casts and the
residual add; the rotary embedding is seven ops per tensor. :func:`add_rms_norm` and :func:`rope` do each in
one ctypes call (a few µs). Used by :mod:`pagoda.models.llama` for bf16 models on the CPU
(:func:`available`); float32 and float16 models keep torch's ops.

* :func:`rope` is bitwise torch's rotary path (the same bf16 roundings, operation for operation).
* :func:`add_rms_norm` rounds like torch's RMSNorm but sums the squares in another order, so a row's rstd
  may differ from torch's by an ulp; every row is computed alike at every batch size (row-independent).
* :func:`silu_mul` is ``F.silu(g) * u`` in bf16 with torch's two roundings and its own exp (within an ulp of the
  true value), so a result may differ from torch's by a bf16 ulp at a rounding tie of silu.

Like the native int4 kernel, the library is compiled on first use (``pagoda.native``) and used only after a
self-check against torch on random rows; no compiler or a mismatch leaves torch's ops in place (logged once).
"""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from pathlib import Path

import torch

logger = logging.getLogger("pagoda")

_SOURCE = Path(__file__).with_name("cpu_fused.c")
ENABLED = True
"""False: bf16 models on the CPU use torch's ops for norms and rotary (the A/B switch; read at model load)."""

_P = ctypes.c_void_p
_I = ctypes.c_int64


def _flags() -> tuple[str, ...]:
    """The vector width is free (no result depends on it: no FMA contraction, IEEE operations only)."""
    from pagoda.native import isa_flags

    isa = isa_flags()
    wide = ("-mprefer-vector-width=512",) if "-mavx512f" in isa else ()  # GCC's default tuning stops at 256 bits
    return ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", *isa, *wide, "-shared", "-fPIC")


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    from pagoda.native import load_library

    lib = load_library(_SOURCE, _flags(), "the fused CPU norm/rotary kernels")
    if lib is None:
        return None
    lib.pagoda_rms_norm.restype = ctypes.c_int
    lib.pagoda_rms_norm.argtypes = [_P, _I, _P, _I, _P, _P, _P, _I, _I, _I, ctypes.c_float]
    lib.pagoda_rope.restype = ctypes.c_int
    lib.pagoda_rope.argtypes = [_P, _I, _I, _P, _I, _I, _P, _P, _P, _P, _I, _I]
    lib.pagoda_silu_mul.restype = ctypes.c_int
    lib.pagoda_silu_mul.argtypes = [_P, _I, _P, _I, _I, _I]
    if not _self_check(lib):
        logger.warning("CPU: the fused norm/rotary kernels disagree with torch on this machine; torch's ops are used")
        return None
    return lib


def available() -> bool:
    return ENABLED and _lib() is not None


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as [rows, d] with unit stride along d (a view when possible)."""
    if x.dim() != 2:
        x = x.reshape(-1, x.shape[-1])
    return x if x.stride(1) == 1 else x.contiguous()


_BF16, _F32 = torch.bfloat16, torch.float32


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float,
                 lib: ctypes.CDLL | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h + delta, rms_norm(h + delta) * weight)``: ``h`` the float32 residual stream [T, d], ``delta`` a bf16
    layer output [T, d] or None (then the first result is ``h`` itself), ``weight`` bf16 [d]; the normalised rows
    in bf16 [T, d]. The sum is a new tensor (``h`` is not modified). (Called per layer: kept lean.)"""
    fn = (lib or _lib()).pagoda_rms_norm  # type: ignore[union-attr]
    h2 = _rows(h)
    rows, d = h2.shape
    out = torch.empty((rows, d), dtype=_BF16)
    if delta is None:
        fn(h2.data_ptr(), h2.stride(0), None, 0, None, weight.data_ptr(), out.data_ptr(), d, rows, d, eps)
        return h, out
    d2 = _rows(delta)
    summed = torch.empty((rows, d), dtype=_F32)
    fn(h2.data_ptr(), h2.stride(0), d2.data_ptr(), d2.stride(0), summed.data_ptr(), weight.data_ptr(),
       out.data_ptr(), d, rows, d, eps)
    return summed, out


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
         lib: ctypes.CDLL | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary of q [T, H, D] and k [T, Hk, D] (bf16; each token's heads contiguous, e.g. views into
    the qkv projection's output) by contiguous cos/sin [T, 1, D/2] (bf16): new contiguous tensors, bitwise
    :meth:`pagoda.layers.rotary.RotaryEmbedding.rotate`."""
    fn = (lib or _lib()).pagoda_rope  # type: ignore[union-attr]
    T, H, D = q.shape
    Hk = k.shape[1]
    if q.stride(2) != 1 or q.stride(1) != D:
        q = q.contiguous()
    if k.stride(2) != 1 or k.stride(1) != D:
        k = k.contiguous()
    q_out = torch.empty((T, H, D), dtype=_BF16)
    k_out = torch.empty((T, Hk, D), dtype=_BF16)
    fn(q.data_ptr(), q.stride(0), H, k.data_ptr(), k.stride(0), Hk, cos.data_ptr(), sin.data_ptr(), q_out.data_ptr(),
       k_out.data_ptr(), T, D)
    return q_out, k_out


def silu_mul(gu: torch.Tensor, inter: int, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """``F.silu(gu[:, :inter]) * gu[:, inter:2 inter]`` for bf16 rows [T, >= 2 inter] (unit last stride): a new
    bf16 [T, inter] (module docstring for its rounding)."""
    fn = (lib or _lib()).pagoda_silu_mul  # type: ignore[union-attr]
    gu = _rows(gu)
    out = torch.empty((gu.shape[0], inter), dtype=_BF16)
    fn(gu.data_ptr(), gu.stride(0), out.data_ptr(), inter, gu.shape[0], inter)
    return out


def _torch_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.nn.functional.rms_norm(h, (h.shape[-1],), weight.float(), eps).to(torch.bfloat16)


def _self_check(lib: ctypes.CDLL) -> bool:
    """Rotary bitwise torch's; norms within one bf16 ulp of torch's rms_norm on every element, and exact on
    most (the sum order is the only difference)."""
    from pagoda.layers.rotary import _apply

    gen = torch.Generator().manual_seed(7)
    for rows, d in ((1, 576), (5, 64), (3, 100), (2, 17)):
        h = torch.randn(rows, d, generator=gen) * 3
        delta = (torch.randn(rows, d, generator=gen)).to(torch.bfloat16)
        w = (torch.randn(d, generator=gen)).to(torch.bfloat16)
        s, out = add_rms_norm(h, delta, w, 1e-5, lib)
        if not (torch.equal(s, h + delta) and torch.equal(add_rms_norm(s, None, w, 1e-5, lib)[1], out)):
            return False
        ref = _torch_norm(h + delta, w, 1e-5)
        ulps = (out.view(torch.int16).int() - ref.view(torch.int16).int()).abs()
        if int(ulps.max()) > 1 or float((ulps > 0).float().mean()) > 0.05:
            return False
    for T, H, Hk, D in ((1, 9, 3, 64), (4, 4, 2, 16), (3, 2, 1, 128)):
        qkv = (torch.randn(T, (H + 2 * Hk) * D, generator=gen) * 2).to(torch.bfloat16)
        q, k, _ = qkv.split([H * D, Hk * D, Hk * D], dim=-1)
        q, k = q.view(T, H, D), k.view(T, Hk, D)
        ang = torch.rand(T, 1, D // 2, generator=gen) * 50
        cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
        qo, ko = rope(q, k, cos, sin, lib)
        if not (torch.equal(qo, _apply(q, cos, sin)) and torch.equal(ko, _apply(k, cos, sin))):
            return False
    for rows, inter in ((1, 1536), (3, 40), (2, 7)):  # silu * up: within a bf16 ulp of torch's, nearly always equal
        gu = (torch.randn(rows, 2 * inter, generator=gen) * 4).to(torch.bfloat16)
        got = silu_mul(gu, inter, lib)
        ref = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
        ulps = (got.view(torch.int16).int() - ref.view(torch.int16).int()).abs()
        if int(ulps.max()) > 1 or float((ulps > 0).float().mean()) > 0.02 or \
                not torch.equal(torch.cat([silu_mul(gu[i : i + 1], inter, lib) for i in range(rows)]), got):
            return False
    return True
