"""Linear layers whose weights and matmul come from a swappable method (quantization's seam).

A model builds every linear layer through :class:`Linear`, which asks its
:class:`LinearMethod` to create the parameters (``create_weights``), to post-process them
once the checkpoint is in (``process_weights_after_loading``) and to run the product
(``apply``). :class:`UnquantizedLinearMethod` is a plain ``y = x Wᵀ + b`` with a ``weight``
``[out, in]`` and an optional ``bias`` (the same parameter names, order and arithmetic as
``nn.Linear``); a quantized method would register its own packed weights and scales instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearMethod:
    """How a :class:`Linear` stores its weights and computes its output."""

    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        """Register the layer's parameters (on the current default device and dtype)."""
        raise NotImplementedError

    def process_weights_after_loading(self, layer: Linear) -> None:
        """Called once after the checkpoint is loaded (repacking, transposes); default: nothing."""

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class UnquantizedLinearMethod(LinearMethod):
    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        layer.register_parameter("weight", nn.Parameter(torch.empty(out_features, in_features)))
        layer.register_parameter("bias", nn.Parameter(torch.empty(out_features)) if bias else None)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight, layer.bias)


class Linear(nn.Module):
    """``y = x Wᵀ (+ b)``, stored and computed by ``linear_method`` (default: unquantized)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 linear_method: LinearMethod | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.linear_method = linear_method or UnquantizedLinearMethod()
        self.linear_method.create_weights(self, in_features, out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_method.apply(self, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"method={type(self.linear_method).__name__}"


def process_weights_after_loading(model: nn.Module) -> None:
    """Let every :class:`Linear` under ``model`` finish its weights (after loading)."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.linear_method.process_weights_after_loading(m)
