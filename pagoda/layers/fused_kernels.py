"""Triton kernels fusing the elementwise work of a decoder layer (CUDA path).

* ``rms_norm`` / ``fused_add_rms_norm``: one program per row; the residual add, the
  fp32 mean of squares, the scale and the weight multiply in one pass (HF's arithmetic:
  the sum rounded to the model dtype, the normalised row rounded before the weight).
* ``silu_and_mul``: ``silu(gate) * up`` over the fused gate/up projection output.
* With ``fp8=True`` the norms and ``silu_and_mul`` return their rows quantized per token
  (:class:`~pagoda.quantization.w8a8.Fp8Rows`) for an FP8 linear that takes them: one launch instead of two,
  the rows written as one-byte codes; the codes are those the separate quantization kernel gives on the rows
  these kernels otherwise return (same rounding to the model dtype first).
* ``rotary_inplace``: rotate-half rotary embedding applied to q and k in place, one
  program per token, all heads at once, cos/sin read from the table by position; optionally
  also writes the rotated K and V into the paged cache (FP8 caches quantized by
  :func:`pagoda.attention.fp8_triton.store_kv`), and optionally RMS-normalises each q and k
  head first (Qwen3's q_norm / k_norm, with the arithmetic of :class:`pagoda.layers.norm.RMSNorm`).
* ``rope_cos_sin``: transformers' ``apply_rotary_pos_emb`` (rotate-half, cos/sin given per token) on q and k in
  one launch, into new tensors (the transformers fallback, :mod:`pagoda.models.transformers_rotary`).

Each launches with programmatic dependent launch where the GPU has it (:mod:`pagoda.layers.pdl`). Each replaces 3
to 12 PyTorch kernels; under CUDA graphs a decode step of a small batch
is dominated by such tiny kernels. Tested against the PyTorch path on the CPU in
Triton's interpreter mode.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import triton
import triton.language as tl

from pagoda.attention.fp8_triton import fp8_code, store_kv
from pagoda.layers.pdl import launch_kwargs, pdl_launch_dependents, pdl_wait
from pagoda.layers.triton_mode import interpreted
from pagoda.quantization.kernels.triton_fp8_quant import fp8_codes, fp8_row_scale
from pagoda.quantization.w8a8 import _MIN_SCALE, FP8_DTYPE, FP8_MAX, Fp8Rows

_FP8_RULE = {"FP8_MAX": FP8_MAX, "MIN_SCALE": _MIN_SCALE}
"""The per-token FP8 rule's constants (w8a8's, as every quantizer of activations uses)."""

FP8_ROW_ELEMS = {"norm": 64, "silu": 32}
"""Elements of a row each thread holds in the kernels that hold a whole row (one program a row): the norms (with or
without FP8 rows: one width for both, since the sum of squares' order follows ``num_warps`` and the FP8 rows must
be those of the plain norm's output) and SiLU·mul with FP8 rows. ``num_warps`` is the row's power-of-two width over
32 times this, within 4..32 (``benchmarks/gpu/fp8_rows_sweep.py`` times the choices). The norms' 64 keeps their
4 warps up to 8,192 wide rows, as before the FP8 rows; 16 warps were faster alone on an H100 but not end to end
(benchmarks/RESULTS.md, session 32)."""


def fp8_row_warps(kind: str, block: int) -> int:
    """``num_warps`` of a ``kind`` ("norm" / "silu") program over a row of ``block`` (a power of two) elements."""
    return max(4, min(32, block // (32 * FP8_ROW_ELEMS[kind])))


@triton.jit
def _rms_kernel(x_ptr, res_ptr, w_ptr, out_ptr, s_ptr, stride_x, stride_r, stride_o, N, eps,
                HAS_RES: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr,
                BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    """``FP8``: the normalised row (rounded to x's dtype, as stored otherwise) is quantized per token into
    ``out_ptr`` (codes) and ``s_ptr`` (its float32 scale) by the FP8 rule of ``triton_fp8_quant``."""
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_ptr + row * stride_r + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / N
    y = (xf * tl.math.rsqrt(var + eps)).to(x_ptr.dtype.element_ty)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    if FP8:
        of = (w.to(tl.float32) * y.to(tl.float32)).to(x_ptr.dtype.element_ty).to(tl.float32)
        s = fp8_row_scale(of, FP8_MAX, MIN_SCALE)
        tl.store(out_ptr + row * stride_o + cols, fp8_codes(of, s, FP8_MAX).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr + row, s)
    else:
        out = (w.to(tl.float32) * y.to(tl.float32)).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + row * stride_o + cols, out, mask=mask)


def _fp8_out(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Buffers of :class:`Fp8Rows` for ``x2``'s rows: codes and scales. Under the interpreter (CPU tests) the codes
    buffer is float32 (the kernel stores ``clamp(x / s)`` before the cast) and :func:`_fp8_rows` casts it with torch:
    the interpreter's own float8 cast is not the hardware's (round to nearest even)."""
    m, k = x2.shape
    return (torch.empty((m, k), dtype=torch.float32 if interpreted(_rms_kernel) else FP8_DTYPE, device=x2.device),
            torch.empty((m, 1), dtype=torch.float32, device=x2.device))


def _fp8_rows(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> Fp8Rows:
    return Fp8Rows(codes if codes.dtype == FP8_DTYPE else codes.to(FP8_DTYPE), scales, dtype)


@overload
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, fp8: Literal[False] = False) -> torch.Tensor: ...
@overload
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, fp8: bool) -> torch.Tensor | Fp8Rows: ...
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, fp8: bool = False) -> torch.Tensor | Fp8Rows:
    """rms_norm(x) * weight; ``fp8``: the same rows quantized per token for an FP8 linear (2-D ``x`` only)."""
    x2 = x.reshape(-1, x.shape[-1])
    out, scales = _fp8_out(x2) if fp8 else (torch.empty_like(x2), x2)
    n = x2.shape[-1]
    _rms_kernel[(x2.shape[0],)](x2, x2, weight, out, scales, x2.stride(0), x2.stride(0), out.stride(0), n, eps,
                               HAS_RES=False, FP8=fp8, **_FP8_RULE, BLOCK=triton.next_power_of_2(n),
                               num_warps=fp8_row_warps("norm", triton.next_power_of_2(n)),
                               **launch_kwargs(x.device))
    return _fp8_rows(out, scales, x.dtype) if fp8 else out.view(x.shape)


@overload
def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       fp8: Literal[False] = False) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       fp8: bool) -> tuple[torch.Tensor | Fp8Rows, torch.Tensor]: ...
def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       fp8: bool = False) -> tuple[torch.Tensor | Fp8Rows, torch.Tensor]:
    """residual <- x + residual (in place); returns (rms_norm(residual) * weight, residual), the first as
    :class:`Fp8Rows` when ``fp8`` (x ``[T, hidden]``)."""
    assert x.is_contiguous() and residual.is_contiguous()
    n = x.shape[-1]
    out, scales = _fp8_out(x) if fp8 else (torch.empty_like(x), x)
    _rms_kernel[(x.shape[0],)](x, residual, weight, out, scales, x.stride(0), residual.stride(0), out.stride(0), n,
                              eps, HAS_RES=True, FP8=fp8, **_FP8_RULE, BLOCK=triton.next_power_of_2(n),
                              num_warps=fp8_row_warps("norm", triton.next_power_of_2(n)),
                              **launch_kwargs(x.device))
    return (_fp8_rows(out, scales, x.dtype) if fp8 else out), residual


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, stride_gu, stride_o, N, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    blk = tl.program_id(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + N + cols, mask=mask, other=0.0).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (s * u).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_fp8_kernel(gu_ptr, q_ptr, s_ptr, stride_gu, stride_q, N, FP8_MAX: tl.constexpr,
                         MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    """:func:`_silu_mul_kernel`'s row (rounded to the input dtype) quantized per token: one program per row."""
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    dt = gu_ptr.dtype.element_ty
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + N + cols, mask=mask, other=0.0).to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    of = (silu * u).to(dt).to(tl.float32)
    s = fp8_row_scale(of, FP8_MAX, MIN_SCALE)
    tl.store(q_ptr + row * stride_q + cols, fp8_codes(of, s, FP8_MAX).to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + row, s)


@overload
def silu_and_mul(gu: torch.Tensor, fp8: Literal[False] = False) -> torch.Tensor: ...
@overload
def silu_and_mul(gu: torch.Tensor, fp8: bool) -> torch.Tensor | Fp8Rows: ...
def silu_and_mul(gu: torch.Tensor, fp8: bool = False) -> torch.Tensor | Fp8Rows:
    """``silu(gate) * up`` of ``gu`` ``[T, 2 * N]``; ``fp8``: the same rows quantized per token for an FP8 linear
    (one program a row, the whole row in registers)."""
    n = gu.shape[-1] // 2
    if fp8:
        codes, scales = _fp8_out(gu[:, :n])
        block = triton.next_power_of_2(n)
        _silu_mul_fp8_kernel[(gu.shape[0],)](gu, codes, scales, gu.stride(0), codes.stride(0), n, **_FP8_RULE,
                                             BLOCK=block,
                                             num_warps=fp8_row_warps("silu", block),
                                             **launch_kwargs(gu.device))
        return _fp8_rows(codes, scales, gu.dtype)
    out = torch.empty((gu.shape[0], n), dtype=gu.dtype, device=gu.device)
    BLOCK = 1024
    _silu_mul_kernel[(gu.shape[0], triton.cdiv(n, BLOCK))](gu, out, gu.stride(0), out.stride(0), n, BLOCK=BLOCK,
                                                             num_warps=4, **launch_kwargs(gu.device))
    return out


@triton.jit
def _head_halves(base, m, w_ptr, eps, d, dm, HALF: tl.constexpr, QK_NORM: tl.constexpr):
    """Both halves of each head row ``[BH, BD]`` in float32. With ``QK_NORM`` each row is RMS-normalised
    first exactly as torch's ``rms_norm`` (what :class:`~pagoda.layers.norm.RMSNorm` runs): float32 sum of
    squares, ``rstd = rsqrt(sum / D + eps)``, ``(x * rstd) * w`` in float32, ONE rounding to the tensor's
    dtype; the rotation then reads those rounded values, as it reads a stored normalised tensor. Only the
    order of the fp32 sum is the kernel's own (and the mean's division where D is not a power of two)."""
    x1 = tl.load(base, mask=m, other=0.0)
    x2 = tl.load(base + HALF, mask=m, other=0.0)
    if QK_NORM:
        f1 = x1.to(tl.float32)
        f2 = x2.to(tl.float32)
        ss = tl.sum(f1 * f1, axis=1) + tl.sum(f2 * f2, axis=1)
        rstd = tl.math.rsqrt(ss / (2 * HALF) + eps)[:, None]
        w1 = tl.load(w_ptr + d, mask=dm, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + HALF + d, mask=dm, other=0.0).to(tl.float32)[None, :]
        x1 = (f1 * rstd * w1).to(x1.dtype)
        x2 = (f2 * rstd * w2).to(x2.dtype)
    return x1.to(tl.float32), x2.to(tl.float32)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, pos_ptr, stride_qt, stride_qh, stride_kt, stride_kh,
                 v_ptr, stride_vt, stride_vh, kc_ptr, vc_ptr, slot_ptr, k_scale, v_scale,
                 qw_ptr, kw_ptr, q_eps, k_eps,
                 skb, sks, skh, svb, svs, svh,  # the caches' strides (block, slot, head; head_dim's is 1)
                 HQ: tl.constexpr, HK: tl.constexpr, HALF: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                 BH: tl.constexpr, BD: tl.constexpr, WRITE_KV: tl.constexpr, FP8: tl.constexpr,
                 QK_NORM: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t)
    d = tl.arange(0, BD)
    dm = d < HALF
    cos = tl.load(cos_ptr + pos * HALF + d, mask=dm, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + pos * HALF + d, mask=dm, other=0.0).to(tl.float32)[None, :]
    h = tl.arange(0, BH)
    # q heads
    m = (h[:, None] < HQ) & dm[None, :]
    base = q_ptr + t * stride_qt + h[:, None] * stride_qh + d[None, :]
    x1, x2 = _head_halves(base, m, qw_ptr, q_eps, d, dm, HALF, QK_NORM)
    tl.store(base, (x1 * cos - x2 * sin).to(q_ptr.dtype.element_ty), mask=m)
    tl.store(base + HALF, (x2 * cos + x1 * sin).to(q_ptr.dtype.element_ty), mask=m)
    # k heads
    m = (h[:, None] < HK) & dm[None, :]
    base = k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :]
    x1, x2 = _head_halves(base, m, kw_ptr, k_eps, d, dm, HALF, QK_NORM)
    k1 = (x1 * cos - x2 * sin).to(k_ptr.dtype.element_ty)
    k2 = (x2 * cos + x1 * sin).to(k_ptr.dtype.element_ty)
    tl.store(base, k1, mask=m)
    tl.store(base + HALF, k2, mask=m)
    if WRITE_KV:
        # Also write this token's K (rotated) and V into its paged-cache slot (negative: skip).
        slot = tl.load(slot_ptr + t).to(tl.int64)
        wm = m & ((tl.zeros([BH, BD], dtype=tl.int64) + slot) >= 0)
        block = slot // BLOCK_SIZE
        offset = slot % BLOCK_SIZE
        dst = block * skb + offset * sks + h[:, None] * skh + d[None, :]
        store_kv(kc_ptr + dst, k1, k_scale, wm, FP8)
        store_kv(kc_ptr + dst + HALF, k2, k_scale, wm, FP8)
        vb = v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :]
        v1 = tl.load(vb, mask=m, other=0.0)
        v2 = tl.load(vb + HALF, mask=m, other=0.0)
        vdst = vc_ptr + block * svb + offset * svs + h[:, None] * svh + d[None, :]
        store_kv(vdst, v1, v_scale, wm, FP8)
        store_kv(vdst + HALF, v2, v_scale, wm, FP8)


NormArgs = tuple[torch.Tensor, float]  # an RMSNorm's weight [D] and eps


def rotary_inplace(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   positions: torch.Tensor, v: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
                   v_cache: torch.Tensor | None = None, slot_mapping: torch.Tensor | None = None,
                   k_scale: float = 1.0, v_scale: float = 1.0, q_norm: NormArgs | None = None,
                   k_norm: NormArgs | None = None) -> None:
    """q [T, Hq, D], k [T, Hk, D] (last dim contiguous); cos/sin tables [max_pos, D/2].

    With ``v``, ``k_cache``, ``v_cache`` (``[blocks, block_size, Hk, D]`` with a unit stride on D: any of the
    NHD-shaped layouts of :data:`pagoda.worker.kv_cache.KV_LAYOUTS`) and
    ``slot_mapping``, also writes the rotated K and V into the cache (the KV-write kernel
    fused in; an FP8 cache stores ``k / k_scale`` and ``v / v_scale``, saturated and rounded).

    With ``q_norm`` and ``k_norm`` (weight ``[D]`` in q's dtype, eps), each q and k head is first
    RMS-normalised in place of ``RMSNorm(q)`` / ``RMSNorm(k)`` (same rounding points; see ``_head_halves``:
    the fp32 sum of squares is the one thing whose order is the kernel's own).
    """
    T, HQ, D = q.shape
    HK = k.shape[1]
    half = D // 2
    assert q.stride(2) == 1 and k.stride(2) == 1 and cos.is_contiguous() and sin.is_contiguous()
    assert (q_norm is None) == (k_norm is None), "q_norm and k_norm go together"
    if T == 0:
        return
    write = k_cache is not None
    vv = k  # placeholders for the kernel's unused KV-write arguments
    if k_cache is not None:
        assert v is not None and v_cache is not None and slot_mapping is not None and v.stride(2) == 1
        assert k_cache.stride(3) == v_cache.stride(3) == 1 and v_cache.shape == k_cache.shape
        assert k_cache.shape[2:] == (HK, D)
        vv = v
    kst = k_cache.stride()[:3] if k_cache is not None else (0, 0, 0)
    vst = v_cache.stride()[:3] if v_cache is not None else (0, 0, 0)
    block_size = k_cache.shape[1] if k_cache is not None else 1
    qw, q_eps = q_norm if q_norm is not None else (cos, 0.0)
    kw, k_eps = k_norm if k_norm is not None else (cos, 0.0)
    if q_norm is not None:
        for w in (qw, kw):
            assert w.shape == (D,) and w.is_contiguous() and w.dtype == q.dtype == k.dtype
    _rope_kernel[(T,)](q, k, cos, sin, positions, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                       vv, vv.stride(0), vv.stride(1),
                       k_cache if write else k, v_cache if write else k, slot_mapping if write else positions,
                       float(k_scale), float(v_scale), qw, kw, float(q_eps), float(k_eps), *kst, *vst,
                       HQ=HQ, HK=HK, HALF=half, BLOCK_SIZE=block_size, BH=triton.next_power_of_2(max(HQ, HK)),
                       BD=triton.next_power_of_2(half), WRITE_KV=write,
                       FP8=fp8_code(k_cache.dtype) if k_cache is not None else 0, QK_NORM=q_norm is not None,
                       num_warps=4, **launch_kwargs(q.device))


@triton.jit
def _rope_halves(x_ptr, o_ptr, b, t, sx_b, sx_h, sx_t, so_b, so_h, so_t, c1, c2, s1, s2, d, dm,
                 H: tl.constexpr, HALF: tl.constexpr, BH: tl.constexpr):
    """One token's heads of ``x`` rotated into ``o``: ``o1 = x1 c1 - x2 s1``, ``o2 = x2 c2 + x1 s2`` in float32."""
    h = tl.arange(0, BH)
    m = (h[:, None] < H) & dm[None, :]
    src = x_ptr + b * sx_b + t * sx_t + h[:, None] * sx_h + d[None, :]
    x1 = tl.load(src, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=m, other=0.0).to(tl.float32)
    dst = o_ptr + b * so_b + t * so_t + h[:, None] * so_h + d[None, :]
    tl.store(dst, (x1 * c1 - x2 * s1).to(o_ptr.dtype.element_ty), mask=m)
    tl.store(dst + HALF, (x2 * c2 + x1 * s2).to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rope_cos_sin_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr, T,
                         sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sqo_b, sqo_h, sqo_t, sko_b, sko_h, sko_t,
                         sc_b, sc_t, ss_b, ss_t,
                         HQ: tl.constexpr, HK: tl.constexpr, HALF: tl.constexpr, BH: tl.constexpr,
                         BD: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)
    pid = tl.program_id(0)
    b = pid // T
    t = pid % T
    d = tl.arange(0, BD)
    dm = d < HALF
    cb = cos_ptr + b * sc_b + t * sc_t + d
    sb = sin_ptr + b * ss_b + t * ss_t + d
    c1 = tl.load(cb, mask=dm, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cb + HALF, mask=dm, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(sb, mask=dm, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(sb + HALF, mask=dm, other=0.0).to(tl.float32)[None, :]
    _rope_halves(q_ptr, qo_ptr, b, t, sq_b, sq_h, sq_t, sqo_b, sqo_h, sqo_t, c1, c2, s1, s2, d, dm, HQ, HALF, BH)
    _rope_halves(k_ptr, ko_ptr, b, t, sk_b, sk_h, sk_t, sko_b, sko_h, sko_t, c1, c2, s1, s2, d, dm, HK, HALF, BH)


def rope_cos_sin(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_pos_emb`` (rotate-half) in one launch: q ``[B, Hq, T, D]``, k ``[B, Hk, T, D]``
    (any strides, unit stride along D), cos/sin ``[B, T, D]`` (any values: both halves are read) -> new q and k of
    q's and k's layout (``empty_like``). Math in float32, one rounding (HF rounds each product and the sum)."""
    B, HQ, T, D = q.shape
    HK = k.shape[1]
    if D % 2 or k.shape[0] != B or k.shape[2:] != (T, D) or cos.shape != (B, T, D) or sin.shape != cos.shape:
        raise ValueError(f"rope_cos_sin: q {tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)}, "
                         f"sin {tuple(sin.shape)} do not fit [B, H, T, D] / [B, T, D]")
    if min(q.stride(3), k.stride(3), cos.stride(2), sin.stride(2)) != 1:
        raise ValueError("rope_cos_sin needs unit stride along the head dimension")
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    if B * T == 0:
        return qo, ko
    half = D // 2
    _rope_cos_sin_kernel[(B * T,)](
        q, k, qo, ko, cos, sin, T, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1),
        HQ=HQ, HK=HK, HALF=half, BH=triton.next_power_of_2(max(HQ, HK)), BD=triton.next_power_of_2(half),
        num_warps=4, **launch_kwargs(q.device))
    return qo, ko
