"""The native CPU norm/rotary/silu kernels (pagoda/layers/cpu_fused.c) against torch's ops, and a bf16 model using
them."""

import pytest
import torch

from pagoda.layers import cpu_fused
from pagoda.layers.norm import RMSNorm
from pagoda.layers.rotary import _apply

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="no C compiler: the torch ops are used")


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


@pytest.mark.parametrize("rows,d", [(1, 576), (7, 64), (3, 100), (2, 2048), (4, 15)])
def test_add_rms_norm_against_torch_and_row_independent(rows, d):
    g = torch.Generator().manual_seed(d)
    h = torch.randn(rows, d, generator=g) * 2
    delta = torch.randn(rows, d, generator=g).to(torch.bfloat16)
    norm = RMSNorm(d, 1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(d, generator=g))
        summed, out = cpu_fused.add_rms_norm(h, delta, norm.weight, norm.eps)
        assert torch.equal(summed, h + delta)  # torch's float32 add, bit for bit
        assert summed.data_ptr() != h.data_ptr()  # the stream entering the layer is left alone
        ref = norm(h + delta)  # RMSNorm's float32 path, rounded to bf16 once
        assert out.dtype == torch.bfloat16 and out.shape == ref.shape
        ulps = _ulps(out, ref)
        assert int(ulps.max()) <= 1  # only the sum of squares is added in another order
        assert float((ulps > 0).float().mean()) < 0.05
        same, alone = cpu_fused.add_rms_norm(summed, None, norm.weight, norm.eps)
        assert same is summed and torch.equal(alone, out)
        for r in range(rows):  # each row alone gives the batch's bits
            assert torch.equal(cpu_fused.add_rms_norm(h[r:r + 1], delta[r:r + 1], norm.weight, norm.eps)[1],
                               out[r:r + 1])


@pytest.mark.parametrize("T,H,Hk,D", [(1, 9, 3, 64), (5, 4, 2, 16), (2, 8, 8, 128)])
def test_rope_bitwise_torch(T, H, Hk, D):
    g = torch.Generator().manual_seed(T * H + D)
    qkv = (torch.randn(T, (H + 2 * Hk) * D, generator=g) * 3).to(torch.bfloat16)
    q, k, _ = qkv.split([H * D, Hk * D, Hk * D], dim=-1)
    q, k = q.view(T, H, D), k.view(T, Hk, D)  # strided views into the projection's output, as in the model
    ang = torch.rand(T, 1, D // 2, generator=g) * 100
    cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
    qo, ko = cpu_fused.rope(q, k, cos, sin)
    assert qo.is_contiguous() and ko.is_contiguous()
    assert torch.equal(qo, _apply(q, cos, sin)) and torch.equal(ko, _apply(k, cos, sin))


@pytest.mark.parametrize("rows,inter", [(1, 1536), (6, 40), (3, 7)])
def test_silu_mul_against_torch_and_row_independent(rows, inter):
    g = torch.Generator().manual_seed(rows + inter)
    gu = (torch.randn(rows, 2 * inter + 3, generator=g) * 4).to(torch.bfloat16)[:, : 2 * inter]  # strided rows
    gu[0, :4] = torch.tensor([-100.0, 100.0, float("inf"), float("nan")])  # saturated exp, inf, NaN
    out = cpu_fused.silu_mul(gu, inter)
    ref = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert torch.equal(out.isnan(), ref.isnan())
    ulps = _ulps(out.nan_to_num(), ref.nan_to_num())
    assert int(ulps.max()) <= 1  # only exp differs from torch's (SLEEF), by at most an ulp before two roundings
    assert float((ulps > 0).float().mean()) < 0.01
    for r in range(rows):
        assert torch.equal(cpu_fused.silu_mul(gu[r : r + 1], inter).nan_to_num(), out[r : r + 1].nan_to_num())


def test_bf16_model_uses_the_kernels_and_follows_hf(tiny, monkeypatch):
    """A tiny bf16 Llama on the CPU switches every layer's norms and rotary to the native kernels, and its greedy
    tokens follow HF transformers in bf16 by the top-5 rule (GUIDE §4), as the torch-ops engine's do (the norm sums in
    another order, so identical tokens are not the standard); the switch off leaves torch's ops everywhere."""
    from engine_checks import PROMPTS, compare_top5, greedy, our_top, top_ids

    from pagoda import LLM

    sp = greedy(max_tokens=12, logprobs=5)

    def assert_follows_hf_bf16(outputs) -> None:  # test_hf_parity's bf16 rule: the top-5 rule against HF in bf16
        for out in outputs:
            ref = tiny.hf_ref("llama", out.prompt_token_ids, dtype=torch.bfloat16, max_new_tokens=12)
            comp = out.outputs[0]
            compare_top5(comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
                         [top_ids(r) for r in ref.step_logprobs], what=out.prompt[:20])

    native = LLM(str(tiny.path("llama")), dtype="bfloat16", device="cpu")
    runner = native.llm_engine.core.runner
    assert all(layer.cpu_native and layer.self_attn.cpu_native and layer.mlp.cpu_native
               for layer in runner.model.layers)
    assert_follows_hf_bf16(native.generate(PROMPTS[:4], sp, use_tqdm=False))
    monkeypatch.setattr(cpu_fused, "ENABLED", False)
    plain = LLM(str(tiny.path("llama")), dtype="bfloat16", device="cpu")
    assert not any(layer.cpu_native for layer in plain.llm_engine.core.runner.model.layers)
    assert_follows_hf_bf16(plain.generate(PROMPTS[:4], sp, use_tqdm=False))
