"""RMSNorm computed in float32, returned in the weight's (the model's) dtype.

Same-dtype input (fp32 models, Qwen3's q/k norms) is bit-compatible with HF Llama's RMSNorm in
fp32. A wider input (the float32 residual stream of a bf16/fp16 model, see models/llama.py) is
normalised and scaled by the weight in float32 and rounded to the model dtype once.
``torch.nn.functional.rms_norm`` does this in one fused op instead of seven, so it is used when
present.
"""

from __future__ import annotations

import torch

_HAS_FUSED = hasattr(torch.nn.functional, "rms_norm")


class RMSNorm(torch.nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.weight.dtype
        w = self.weight if x.dtype == dtype else self.weight.to(x.dtype)
        if _HAS_FUSED:
            return torch.nn.functional.rms_norm(x, (x.shape[-1],), w, self.eps).to(dtype)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (w * h.to(x.dtype)).to(dtype)
