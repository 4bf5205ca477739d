"""The transformers fallback's RMSNorms as one fused op each, where the HF module computes exactly that.

HF's RMSNorm modules run about seven elementwise ops (upcast, square, mean, add eps, rsqrt, scale, cast,
weight); the fused op is one kernel: pagoda's Triton ``rms_norm`` on CUDA (HF's arithmetic, rounding the
normalised row before the weight, as Llama's module does), ``torch.nn.functional.rms_norm`` on the CPU (one
rounding, as the native CPU path). A module is swapped only if (a) its class name says RMSNorm, it holds one
1-D ``weight`` and nothing else, and names its epsilon ``variance_epsilon`` or ``eps``, and (b) on a random
float32 input and weight it computes ``x * rsqrt(mean(x^2) + eps) * weight``; checked once per class. Gemma's
``(1 + weight)`` norm, centred norms or any other variant fail (b) and keep the HF module.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

_EPS_NAMES = ("variance_epsilon", "eps")


class FusedRMSNorm(nn.Module):
    """``weight * x / rms(x)`` over the last dimension in one op; keeps the HF module's parameter (same name)."""

    def __init__(self, weight: nn.Parameter, eps: float, triton: bool) -> None:
        super().__init__()
        self.weight = weight
        self.eps = eps
        self.triton = triton

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.triton and x.is_cuda and x.dtype == self.weight.dtype and x.stride(-1) == 1:  # the kernel's rows
            from pagoda.layers.fused_kernels import rms_norm

            return rms_norm(x, self.weight, self.eps)
        w = self.weight if x.dtype == self.weight.dtype else self.weight.to(x.dtype)
        return F.rms_norm(x, (x.shape[-1],), w, self.eps)


def _eps(module: nn.Module) -> float | None:
    for name in _EPS_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _shape_fits(module: nn.Module) -> bool:
    params = dict(module.named_parameters())
    return ("rmsnorm" in type(module).__name__.lower() and list(params) == ["weight"]
            and params["weight"].dim() == 1 and not list(module.buffers()))


@torch.inference_mode()
def _computes_rms_norm(module: nn.Module, eps: float) -> bool:
    """(b) of the module docstring, on a float32 CPU copy with a random weight."""
    probe = copy.deepcopy(module).to(device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    weight = probe.get_parameter("weight")
    weight.copy_(torch.rand(weight.shape[0], generator=g) + 0.5)
    x = torch.randn(3, weight.shape[0], generator=g) * 3
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    try:
        got = probe(x)
    except Exception:  # any signature or arithmetic other than a plain norm of one tensor: not ours to replace
        return False
    return (isinstance(got, torch.Tensor) and got.shape == want.shape
            and torch.allclose(got, want, rtol=1e-5, atol=1e-6))


def fuse_rms_norms(model: nn.Module, triton: bool) -> int:
    """Replace every qualifying RMSNorm submodule of ``model`` in place; returns how many were replaced."""
    verdicts: dict[type, bool] = {}
    targets: list[tuple[str, nn.Parameter, float]] = []
    for name, module in model.named_modules():
        eps = _eps(module)
        if not name or eps is None or not _shape_fits(module):
            continue
        cls = type(module)
        if cls not in verdicts:
            verdicts[cls] = _computes_rms_norm(module, eps)
        if verdicts[cls]:
            targets.append((name, module.get_parameter("weight"), eps))
    for name, weight, eps in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, FusedRMSNorm(weight, eps, triton))
    return len(targets)
