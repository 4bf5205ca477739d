"""The KV cache's storage dtype (``--kv-cache-dtype``) and its FP8 quantization rule.

``auto`` stores K/V in the model dtype. ``fp8`` (= ``fp8_e4m3``, vLLM's meaning on CUDA) and
``fp8_e5m2`` store one byte per element, halving KV memory (about twice the blocks for the
same budget). Invariants shared by every writer and reader (Triton kernels, the PyTorch
backend, the reference oracle):

* an FP8 cache slot holds ``clamp(x / scale, -max, max)`` rounded to nearest-even in the FP8
  format (``max`` = 448 for e4m3, 57344 for e5m2: saturation, never inf/NaN);
* a read upcasts the byte and multiplies by ``scale`` (kernels fold ``k_scale`` into the
  softmax scale and ``v_scale`` into the output, which is the same arithmetic);
* ``k_scale``/``v_scale`` are per-layer scalars (default 1.0, vLLM's default; checkpoints may
  carry ``self_attn.k_scale``/``v_scale``). A cache in the model dtype ignores them.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pagoda.config import KV_CACHE_DTYPES

logger = logging.getLogger("pagoda")

FP8_KV_DTYPES: dict[str, torch.dtype] = {
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
"""``--kv-cache-dtype`` values other than ``auto`` and the storage dtype each one means."""

FLAG = "--kv-cache-dtype"
# Triton converts to/from float8e4nv (e4m3) in hardware from compute capability 8.9 (Ada, Hopper) on.
_MIN_CUDA_CAPABILITY = (8, 9)


def kv_cache_torch_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The cache's storage dtype for a ``--kv-cache-dtype`` value."""
    if kv_cache_dtype == "auto":
        return model_dtype
    if kv_cache_dtype not in FP8_KV_DTYPES:
        raise ValueError(f"kv_cache_dtype ({FLAG}) must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}.")
    return FP8_KV_DTYPES[kv_cache_dtype]


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def dtype_name(dtype: torch.dtype) -> str:
    """A short name for logs: fp8_e4m3, fp8_e5m2, bfloat16, ..."""
    names = {torch.float8_e4m3fn: "fp8_e4m3", torch.float8_e5m2: "fp8_e5m2"}
    return names.get(dtype, str(dtype).removeprefix("torch."))


def quantize(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as stored in a cache of ``dtype`` (the module's rule; a plain cast for non-FP8 dtypes)."""
    if not is_fp8(dtype):
        return x.to(dtype)
    fmax = torch.finfo(dtype).max
    return (x.float() / scale).clamp_(-fmax, fmax).to(dtype)


def dequantize(x: torch.Tensor, scale: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Cache contents back to ``dtype`` (times ``scale`` for an FP8 cache)."""
    if not is_fp8(x.dtype):
        return x.to(dtype)
    return (x.float() * scale).to(dtype)


def raw(t: torch.Tensor) -> torch.Tensor:
    """A byte view of an FP8 tensor (gathers and scatters run on it on every device and torch
    version), else ``t`` itself."""
    return t.view(torch.uint8) if is_fp8(t.dtype) else t


def check_supported(kv_dtype: torch.dtype, device: torch.device, backend: str) -> None:
    """Start-up check: FP8 KV on the Triton backend needs a GPU of compute capability >= 8.9."""
    if not is_fp8(kv_dtype) or device.type != "cuda" or backend != "triton":
        return
    cap = torch.cuda.get_device_capability(device)
    if cap < _MIN_CUDA_CAPABILITY:
        raise ValueError(
            f"{FLAG} {dtype_name(kv_dtype)} needs a GPU of compute capability >= "
            f"{_MIN_CUDA_CAPABILITY[0]}.{_MIN_CUDA_CAPABILITY[1]} with the triton attention backend (this one is "
            f"{cap[0]}.{cap[1]}); use {FLAG} auto, or --attention-backend torch (slower)."
        )


def log_scales(model: nn.Module, kv_dtype: torch.dtype) -> None:
    """Start-up note on the per-layer scales (attention modules expose ``kv_scales``)."""
    scales = [m.kv_scales for m in model.modules() if hasattr(m, "kv_scales")]
    custom = sum(s != (1.0, 1.0) for s in scales)
    if is_fp8(kv_dtype):
        logger.info("KV cache in %s: k/v scales from the checkpoint in %d of %d layers, 1.0 in the others",
                    dtype_name(kv_dtype), custom, len(scales))
    elif custom:
        logger.info("The checkpoint has k/v scales in %d layers; they apply with %s fp8 only", custom, FLAG)
