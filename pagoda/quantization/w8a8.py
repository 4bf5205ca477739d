"""W8A8 GEMMs: FP8 (``torch._scaled_mm``) and int8 (``torch._int_mm``) with on-the-fly activation quantization.

Weights are ``[N, K]`` (``float8_e4m3fn`` or ``int8``) with one float32 scale per output channel ``[N]``
(a per-tensor scale is expanded to channels at load time: exact, no requantization). Activations are
quantized per call: FP8 by ``absmax * (1/448)`` (per token or per tensor) or a static ``input_scale``; int8 per
token by ``absmax / 127.5`` with round-half-even and clamp to ``[-128, 127]`` — compressed-tensors' own
arithmetic (``calculate_qparams``: scale = absmax / ((q_max - q_min) / 2)); vLLM's kernels divide by 127,
a 0.4 % different scale.

GPU paths: FP8 through ``torch._scaled_mm`` with row-wise scales (``scale_a`` ``[M, 1]``, ``scale_b``
``[1, N]``, float32; bf16 output; K and N multiples of 16; compute capability >= 8.9), int8 through
``torch._int_mm`` (exact int32 accumulation; on CUDA M > 16, K and N multiples of 8: M is zero-padded).
The portable path (CPU, older GPUs, odd shapes) computes the same quantized product by dequantizing both
operands to float32 per call: the result equals the GPU's up to fp32 accumulation order.

Small batches on CUDA (at most ``triton_fp8_gemv.GEMV_MAX_M`` token rows) take the weight-only FP8 GEMV instead
(:func:`fp8_small_m_gemv`): the activations are not quantized (a static ``input_scale`` is not used), so those
steps compute the more exact W8A16 product ``x @ W_dequantized.T``; cuBLASLt's FP8 GEMM is slower than bf16 at
M = 1 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
INT8_DIVISOR = 127.5
"""compressed-tensors' symmetric int8 scale divisor ((127 - (-128)) / 2)."""
_MIN_SCALE = 1e-12
_INV_FP8_MAX = 1.0 / FP8_MAX
"""Dynamic FP8 scales are ``absmax * (1/448)``: one rounding that every device and the fused kernel share
(torch's CUDA ``tensor / scalar`` is itself a multiplication by the reciprocal; its CPU one divides)."""


class Fp8Rows(NamedTuple):
    """Activation rows already quantized per token for an FP8 linear: what a fused norm or SiLU·mul kernel returns
    when its consumer asked for it (:func:`fp8_rows_wanted`). Invariant: ``codes`` and ``scales`` are bit for bit
    what :func:`~pagoda.quantization.kernels.triton_fp8_quant.quantize_fp8_rows` gives on the ``dtype`` rows the
    producer would otherwise have returned, so the product does not depend on which path quantized them."""

    codes: torch.Tensor
    """``[M, K]`` float8_e4m3fn."""
    scales: torch.Tensor
    """``[M, 1]`` float32."""
    dtype: torch.dtype
    """The rows' dtype before quantization: the linear's output dtype."""


def fp8_rows_wanted(rows: int) -> bool:
    """Whether a CUDA FP8 linear (dynamic per-token activations, ``torch._scaled_mm``) of ``rows`` token rows
    quantizes its input at all: at most ``triton_fp8_gemv.GEMV_MAX_M`` rows take the weight-only GEMV instead
    (:func:`fp8_small_m_gemv`). A producer hands :class:`Fp8Rows` to such a linear only where this holds."""
    from pagoda.quantization.kernels import triton_fp8_gemv as gemv

    return rows > gemv.GEMV_MAX_M


def quantize_fp8(x2: torch.Tensor, input_scale: torch.Tensor | None, per_token: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x2`` ``[M, K]`` -> (float8 codes, float32 scale ``[M, 1]`` or ``[1, 1]``). ``input_scale`` (static)
    wins over the dynamic absmax."""
    xf = x2.float()
    if input_scale is not None:
        s = input_scale.float().reshape(1, 1)
    elif per_token:
        s = (xf.abs().amax(dim=-1, keepdim=True) * _INV_FP8_MAX).clamp(min=_MIN_SCALE)
    else:
        s = (xf.abs().amax() * _INV_FP8_MAX).clamp(min=_MIN_SCALE).reshape(1, 1)
    return (xf / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), s


def quantize_int8_per_token(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x2`` ``[M, K]`` -> (int8 codes, float32 scale ``[M, 1]``), compressed-tensors' symmetric rule."""
    xf = x2.float()
    s = (xf.abs().amax(dim=-1, keepdim=True) / INT8_DIVISOR).clamp(min=_MIN_SCALE)
    return torch.round(xf / s).clamp(-128, 127).to(torch.int8), s


def quantize_weight_fp8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense ``[N, K]`` weight -> (float8 ``[N, K]``, float32 scale ``[N]``), scale = row absmax / 448."""
    wf = w.float()
    s = (wf.abs().amax(dim=1) / FP8_MAX).clamp(min=_MIN_SCALE)
    return (wf / s[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), s


def scaled_mm_supported(device: torch.device, k: int, n: int) -> bool:
    """Whether ``torch._scaled_mm`` serves a ``[*, k] x [k, n]`` FP8 product on ``device``."""
    if device.type != "cuda" or k % 16 or n % 16:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_small_m_gemv(x2: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                     block: tuple[int, int] | None = None) -> torch.Tensor | None:
    """THE small-batch rule: CUDA inputs of at most ``GEMV_MAX_M`` rows run the weight-only FP8 GEMV
    (:mod:`pagoda.quantization.kernels.triton_fp8_gemv`: activations not quantized, a static ``input_scale``
    unused); returns ``None`` when the rule does not apply."""
    from pagoda.quantization.kernels import triton_fp8_gemv as gemv

    if not x2.is_cuda or fp8_rows_wanted(x2.shape[0]) or x2.shape[0] == 0:
        return None
    return gemv.fp8_gemv(x2, weight, weight_scale, bias, block=block)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               input_scale: torch.Tensor | None, per_token: bool, use_scaled_mm: bool, *,
               allow_gemv: bool = True) -> torch.Tensor:
    """``x @ (weight * weight_scale[:, None]).T (+ bias)`` with FP8-quantized activations (module docstring);
    small CUDA batches take :func:`fp8_small_m_gemv` instead (weight-only: activations, and a static
    ``input_scale``, are not quantized). ``allow_gemv=False`` keeps one path for every M (batch invariance;
    ``--deterministic`` refuses quantization on CUDA today, pagoda.layers.batch_invariant)."""
    n, k = weight.shape
    x2 = x.reshape(-1, k)
    small = fp8_small_m_gemv(x2, weight, weight_scale, bias) if allow_gemv else None
    if small is not None:
        return small.view(*x.shape[:-1], n)
    if use_scaled_mm:  # one fused launch instead of the torch form's eight (same codes and scales)
        from pagoda.quantization.kernels.triton_fp8_quant import quantize_fp8_rows

        static = input_scale
        if static is None and not per_token:  # dynamic per-tensor: the torch form's scale, used as static
            static = (x2.float().abs().amax() * _INV_FP8_MAX).clamp(min=_MIN_SCALE).reshape(1)
        xq, sx = quantize_fp8_rows(x2, static, FP8_MAX, _MIN_SCALE)
        out = scaled_fp8_mm(xq, sx, weight, weight_scale).to(x.dtype)
    else:
        xq, sx = quantize_fp8(x2, input_scale, per_token)
        out = F.linear(xq.float() * sx, weight.float() * weight_scale.view(n, 1)).to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], n)


def scaled_fp8_mm(xq: torch.Tensor, sx: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor
                  ) -> torch.Tensor:
    """THE CUDA W8A8 FP8 product, bf16 ``[M, N]``: ``torch._scaled_mm`` with row-wise scales. (A Triton GEMM with
    smaller tiles for the 4,096-wide outputs at a few hundred rows lost to it on an H100: benchmarks/RESULTS.md,
    session 32.)"""
    n = weight.shape[0]
    return torch._scaled_mm(xq, weight.t(), scale_a=sx, scale_b=weight_scale.view(1, n), out_dtype=torch.bfloat16)


def fp8_rows_linear(rows: Fp8Rows, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                    use_scaled_mm: bool) -> torch.Tensor:
    """:func:`fp8_linear`'s product on rows quantized by their producer: ``[M, N]`` in ``rows.dtype``."""
    n = weight.shape[0]
    if use_scaled_mm:
        out = scaled_fp8_mm(rows.codes, rows.scales, weight, weight_scale).to(rows.dtype)
    else:
        out = F.linear(rows.codes.float() * rows.scales, weight.float() * weight_scale.view(n, 1)).to(rows.dtype)
    return out if bias is None else out + bias


def int_mm_supported(device: torch.device, k: int, n: int) -> bool:
    """Whether ``torch._int_mm`` serves the int8 product (CPU: any shape; CUDA: K, N multiples of 8)."""
    return device.type == "cpu" or (device.type == "cuda" and k % 8 == 0 and n % 8 == 0)


def int8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ (weight * weight_scale[:, None]).T (+ bias)`` with int8 per-token activations (module docstring)."""
    n, k = weight.shape
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    xq, sx = quantize_int8_per_token(x2)
    if int_mm_supported(x.device, k, n):
        if x.device.type == "cuda" and m <= 16:
            xq = F.pad(xq, (0, 0, 0, 17 - m))
        acc = torch._int_mm(xq, weight.t())[:m].float()
    else:  # exact while K * 128 * 128 < 2**24; fp32 rounding beyond
        acc = xq.float() @ weight.float().t()
    out = (acc * sx * weight_scale.view(1, n)).to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], n)
