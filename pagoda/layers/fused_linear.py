"""Linear layers with their epilogue fused into the GEMM on the CPU: bias plus an activation (GELU, tanh-GELU,
ReLU) or bias plus a residual add, through oneDNN's ``mkldnn._linear_pointwise`` (the op torch.compile's CPU
backend emits). One pass over the output instead of two or three (addmm copies the bias into the output
before the GEMM, then the activation or the add reads and writes it again), which counts on a CPU whose
memory bandwidth is shared.

Same arithmetic as ``F.linear`` followed by the activation / add (fp32 accumulation; the tests compare against
HF transformers and sentence-transformers). Anything else (CUDA, other dtypes, a quantized layer, no oneDNN)
takes the plain path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from pagoda.layers.linear import Linear, UnquantizedLinearMethod

# hidden_act names -> (oneDNN post-op, its algorithm)
ACTIVATIONS = {"identity": ("none", ""), "gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"),
               "gelu_pytorch_tanh": ("gelu", "tanh"), "relu": ("relu", "")}


def _fusable(x: torch.Tensor, layer: Linear) -> bool:
    """oneDNN's fused CPU linear serves fp32 anywhere, bf16 only where oneDNN has a bf16 path (AVX-512 / AMX)."""
    return (x.device.type == "cpu" and x.dim() == 2 and isinstance(layer.linear_method, UnquantizedLinearMethod)
            and torch.backends.mkldnn.is_available()
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _onednn_bf16())))


@functools.cache
def _onednn_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _plain_act(y: torch.Tensor, act: str) -> torch.Tensor:
    op, algo = ACTIVATIONS[act]
    if op == "none":
        return y
    return F.relu(y) if op == "relu" else F.gelu(y, approximate=algo)


def linear_act(x: torch.Tensor, layer: Linear, act: str) -> torch.Tensor:
    """``act(x Wᵀ + b)``; ``act`` is a key of ``ACTIVATIONS`` (``identity``: the bias only)."""
    if not _fusable(x, layer):
        return _plain_act(layer(x), act)
    op, algo = ACTIVATIONS[act]
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), layer.weight, layer.bias, op, [], algo)


def linear_add(x: torch.Tensor, layer: Linear, residual: torch.Tensor) -> torch.Tensor:
    """``x Wᵀ + b + residual``."""
    if not _fusable(x, layer) or residual.dtype != x.dtype:
        return layer(x).add_(residual)
    return torch.ops.mkldnn._linear_pointwise.binary(x.contiguous(), residual.contiguous(), layer.weight,
                                                     layer.bias, "add")
