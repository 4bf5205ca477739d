"""The transformers fallback's CUDA fusions, checked on the CPU (models/transformers_mlp.py, transformers_rotary.py,
layers/dense_gemv.py ``adopt_linears``): only modules / functions that compute the fused formula are replaced, HF's
functions are back after pagoda's forward, and a fallback model with every fusion enabled computes HF's logits
(float32; on the CPU each fused module runs its torch form, the CUDA kernels are tested in tests/kernels)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from test_transformers_fallback_norms import prompt_logits
from torch import nn

from pagoda.models.transformers_mlp import FusedGatedMLP, fuse_gated_mlps
from pagoda.models.transformers_rotary import RotaryFusion, computes_rope


class _GeluMLP(nn.Module):  # Gemma's shape with another activation: must stay
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 12), nn.Linear(8, 12), nn.Linear(12, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x)) * self.up_proj(x))


def test_only_silu_gated_mlps_are_fused_and_keep_their_parameters():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    model = nn.Module()
    model.llama = LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=12, num_attention_heads=2, mlp_bias=True))
    model.gelu = _GeluMLP()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    names = [n for n, _ in model.named_parameters()]
    x = torch.randn(3, 8, generator=g)
    before = [model.llama(x), model.gelu(x)]
    assert fuse_gated_mlps(model) == 1 and fuse_gated_mlps(model) == 0
    assert isinstance(model.llama, FusedGatedMLP) and isinstance(model.gelu, _GeluMLP)
    assert [n for n, _ in model.named_parameters()] == names
    fused = model.llama
    assert fused.gate_proj.weight.data_ptr() == fused.gate_up.data_ptr()  # views: no memory added
    assert fused.up_proj.weight.data_ptr() == fused.gate_up[12:].data_ptr()
    for want, got in zip(before, [model.llama(x), model.gelu(x)], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _gptj_rope(q, k, cos, sin, unsqueeze_dim=1):  # interleaved pairs: not the rotate-half formula
    def rot(x):
        return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)

    c, s = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * c + rot(q) * s, k * c + rot(k) * s


def test_rotary_fusion_takes_rotate_half_only_and_is_scoped(monkeypatch):
    from transformers.models.llama import modeling_llama

    assert computes_rope(modeling_llama.apply_rotary_pos_emb)
    assert not computes_rope(_gptj_rope)
    assert not computes_rope(lambda q, k: (q, k))  # another signature
    fake = types.ModuleType("pagoda_test_gptj_modeling")
    fake.apply_rotary_pos_emb = _gptj_rope
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    cls = type("GptjLayer", (nn.Module,), {"__module__": fake.__name__})
    model = nn.Sequential(modeling_llama.LlamaRMSNorm(4), cls())
    fusion = RotaryFusion(model)
    assert [m for m, _, _ in fusion.swaps] == [modeling_llama]
    original = modeling_llama.apply_rotary_pos_emb
    with pytest.raises(RuntimeError, match="boom"), fusion.active():
        assert modeling_llama.apply_rotary_pos_emb is not original and fake.apply_rotary_pos_emb is _gptj_rope
        # on the CPU the fused function runs HF's own
        q, k, cs = torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 3, 4)
        for got, want in zip(modeling_llama.apply_rotary_pos_emb(q, k, cs, cs), original(q, k, cs, cs), strict=True):
            assert torch.equal(got, want)
        raise RuntimeError("boom")
    assert modeling_llama.apply_rotary_pos_emb is original  # restored, also after an error
    assert len(RotaryFusion.none()) == 0


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
@torch.inference_mode()
def test_fallback_with_every_fusion_follows_hf(tiny, arch):
    from transformers import AutoModelForCausalLM

    from pagoda.config import EngineArgs
    from pagoda.layers.dense_gemv import GemvLinear
    from pagoda.models.loader import load_model

    path = tiny.path(arch)
    model = load_model(EngineArgs(model=str(path), model_impl="transformers", dtype="float32").create_config())
    model.enable_fused_kernels()  # what the loader does on CUDA
    assert sum(isinstance(m, FusedGatedMLP) for m in model.modules()) == model.num_layers
    assert len(model._rotary) >= 1 and any(isinstance(m, GemvLinear) for m in model.modules())
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids, ours = prompt_logits(model, torch.float32)
    torch.testing.assert_close(ours, hf(input_ids=ids[None]).logits[0].float(), rtol=1e-4, atol=1e-4)


def test_partial_rotary_calls_keep_hf_function():
    """GPT-NeoX's function passes the check (with a whole-head cos it is rotate-half) but rotates only the first
    ``rotary_pct`` of each head when given a narrower cos: such calls must not reach the kernel (``_fits``)."""
    from transformers.models.gpt_neox import modeling_gpt_neox

    from pagoda.models.transformers_rotary import _fits

    assert computes_rope(modeling_gpt_neox.apply_rotary_pos_emb)
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16)
    assert _fits(q, k, torch.randn(1, 5, 16), torch.randn(1, 5, 16))
    assert not _fits(q, k, torch.randn(1, 5, 4), torch.randn(1, 5, 4))  # rotary_pct 0.25
    assert not _fits(q, k[:, :, :3], torch.randn(1, 5, 16), torch.randn(1, 5, 16))
