"""The transformers fallback's gated MLPs (``down(silu(gate(x)) * up(x))``) with gate and up as one matmul.

HF's Llama-style MLP runs gate and up as two matmuls, SiLU and the product as two more kernels. On CUDA pagoda
runs it as the native layers do: one matmul over the concatenated ``[gate; up]`` weight (pagoda's GEMV where
:data:`~pagoda.layers.dense_gemv.GEMV_TABLE` has the shape), then :func:`~pagoda.layers.fused_kernels.silu_and_mul`
in one kernel, then ``down_proj``.

A module is replaced only if (a) it has ``nn.Linear`` children ``gate_proj``, ``up_proj`` and ``down_proj`` of
matching shapes (gate and up both with or both without a bias) and (b) on random float32 CPU inputs and weights
it computes ``down(silu(gate(x)) * up(x))``; checked once per class. Other activations (Gemma's GELU), other
structures or any extra arithmetic fail (b) and keep the HF module. The replacement keeps ``gate_proj`` /
``up_proj`` / ``down_proj`` as children with the same parameter names: gate's and up's weights become views of
the concatenated weight, so no memory is added.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

_NAMES = ("gate_proj", "up_proj", "down_proj")


class FusedGatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with one ``[gate; up]`` matmul and a fused SiLU-and-product (CUDA)."""

    def __init__(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear) -> None:
        super().__init__()
        self.inter = gate.out_features
        with torch.no_grad():
            self.gate_up = torch.cat([gate.weight, up.weight])
            gate.weight = nn.Parameter(self.gate_up[: self.inter], requires_grad=False)
            up.weight = nn.Parameter(self.gate_up[self.inter:], requires_grad=False)
            self.gate_up_bias: torch.Tensor | None = None
            if gate.bias is not None and up.bias is not None:
                self.gate_up_bias = torch.cat([gate.bias, up.bias])
                gate.bias = nn.Parameter(self.gate_up_bias[: self.inter], requires_grad=False)
                up.bias = nn.Parameter(self.gate_up_bias[self.inter:], requires_grad=False)
        self.gate_proj, self.up_proj, self.down_proj = gate, up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        h: torch.Tensor | None = None
        if x2.is_cuda:
            from pagoda.layers import dense_gemv

            rule = dense_gemv.gemv_rule(x2, self.gate_up)
            if rule is not None:
                h = dense_gemv.dense_gemv(x2, self.gate_up, self.gate_up_bias, rule)
        if h is None:
            h = F.linear(x2, self.gate_up, self.gate_up_bias)
        if h.is_cuda and h.stride(-1) == 1:
            from pagoda.layers.fused_kernels import silu_and_mul

            a = silu_and_mul(h)
        else:
            a = F.silu(h[:, : self.inter]) * h[:, self.inter:]
        return self.down_proj(a.view(*shape[:-1], self.inter))


def _shape_fits(module: nn.Module) -> bool:
    children = [getattr(module, n, None) for n in _NAMES]
    if not all(isinstance(c, nn.Linear) for c in children):
        return False
    gate, up, down = children
    assert isinstance(gate, nn.Linear) and isinstance(up, nn.Linear) and isinstance(down, nn.Linear)
    return (gate.weight.shape == up.weight.shape and down.in_features == gate.out_features
            and (gate.bias is None) == (up.bias is None))


@torch.inference_mode()
def _computes_gated_silu(module: nn.Module) -> bool:
    """(b) of the module docstring, on a float32 CPU copy with random weights."""
    probe = copy.deepcopy(module).to(device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    for p in probe.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    gate, up, down = (getattr(probe, n) for n in _NAMES)
    x = torch.randn(3, gate.in_features, generator=g)
    want = down(F.silu(gate(x)) * up(x))
    try:
        got = probe(x)
    except Exception:  # another signature: not ours to replace
        return False
    return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want, rtol=1e-5,
                                                                                        atol=1e-5)


def fuse_gated_mlps(model: nn.Module) -> int:
    """Replace every qualifying gated MLP of ``model`` in place; returns how many were replaced."""
    verdicts: dict[type, bool] = {}
    targets: list[str] = []
    for name, module in model.named_modules():
        if not name or isinstance(module, FusedGatedMLP) or not _shape_fits(module):
            continue
        cls = type(module)
        if cls not in verdicts:
            verdicts[cls] = _computes_gated_silu(module)
        if verdicts[cls]:
            targets.append(name)
    for name in targets:
        module = model.get_submodule(name)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr,
                FusedGatedMLP(module.gate_proj, module.up_proj, module.down_proj))  # type: ignore[arg-type]
    return len(targets)
