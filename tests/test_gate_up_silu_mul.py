"""The MLP's gate_up GEMV with its own SiLU·mul store (``Linear.silu_mul``, issue 12): the MLP takes it where the
gate_up method offers one, and never while the layer has forward hooks (LoRA's), whose output change it would skip.

The kernel itself is tested bit for bit against the GEMV then ``silu_and_mul`` in tests/kernels/test_w4_gemv_triton.py
(interpreter) and tests/gpu/test_gpu_int4_kernels.py (compiled); here a stand-in method computes the same thing in
torch, so only the routing is under test."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import pagoda.layers.fused_kernels as fk
from pagoda.layers.linear import Linear, UnquantizedLinearMethod
from pagoda.models.llama import MLP, LlamaShape


def _silu_mul(gu: torch.Tensor, fp8: bool = False) -> torch.Tensor:
    assert not fp8
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


class _OneStep(UnquantizedLinearMethod):
    """A method with a one-step SiLU·mul (what the 4-bit GEMV's gated store gives), counting its calls."""

    def __init__(self) -> None:
        self.calls = {"apply": 0, "silu_mul": 0}

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        self.calls["apply"] += 1
        return F.linear(x, layer.weight, layer.bias)

    def apply_silu_mul(self, layer: Linear, x: torch.Tensor) -> torch.Tensor | None:
        self.calls["silu_mul"] += 1
        return _silu_mul(F.linear(x, layer.weight, layer.bias))


def _mlp(monkeypatch) -> tuple[MLP, _OneStep]:
    monkeypatch.setattr(fk, "silu_and_mul", _silu_mul)  # the Triton kernel's arithmetic, in torch, on the CPU
    s = LlamaShape(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2, num_kv_heads=1,
                   head_dim=8, rms_norm_eps=1e-6, max_position=64, tie_word_embeddings=False, qkv_bias=False,
                   qk_norm=False, hidden_act="silu")
    torch.manual_seed(0)
    mlp = MLP(s)
    method = _OneStep()
    mlp.gate_up_proj.linear_method = method
    for p in mlp.parameters():
        p.data = torch.randn_like(p) / 4
    mlp.fused = True
    return mlp, method


def test_mlp_takes_the_gate_up_silu_mul_step(monkeypatch) -> None:
    mlp, method = _mlp(monkeypatch)
    x = torch.randn(3, 16)
    ref = F.linear(_silu_mul(F.linear(x, mlp.gate_up_proj.weight)), mlp.down_proj.weight)
    torch.testing.assert_close(mlp(x), ref)
    assert method.calls == {"apply": 0, "silu_mul": 1}


def test_mlp_skips_it_while_the_layer_has_forward_hooks(monkeypatch) -> None:
    """A forward hook (LoRA's delta) changes gate_up's output: the one-step store never forms that output, so the
    MLP runs the linear (and its hook) and SiLU·mul apart."""
    mlp, method = _mlp(monkeypatch)
    mlp.gate_up_proj.register_forward_hook(lambda mod, args, out: out + 1.0)
    x = torch.randn(3, 16)
    ref = F.linear(_silu_mul(F.linear(x, mlp.gate_up_proj.weight) + 1.0), mlp.down_proj.weight)
    torch.testing.assert_close(mlp(x), ref)
    assert method.calls == {"apply": 1, "silu_mul": 0}


def test_methods_without_the_step_keep_the_two_kernels(monkeypatch) -> None:
    mlp, _ = _mlp(monkeypatch)
    mlp.gate_up_proj.linear_method = UnquantizedLinearMethod()
    x = torch.randn(2, 16)
    assert mlp.gate_up_proj.silu_mul(x) is None
    ref = F.linear(_silu_mul(F.linear(x, mlp.gate_up_proj.weight)), mlp.down_proj.weight)
    torch.testing.assert_close(mlp(x), ref)
