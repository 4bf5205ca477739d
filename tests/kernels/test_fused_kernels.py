"""Fused elementwise Triton kernels against the PyTorch path (CPU: Triton interpreter).

Also runs a whole tiny model with the fused kernels enabled and compares its greedy
tokens with the unfused model's.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from pagoda.layers import fused_kernels as fk  # noqa: E402
from pagoda.layers.norm import RMSNorm  # noqa: E402
from pagoda.layers.rotary import RotaryEmbedding  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n", [64, 96, 576])
def test_rms_norm_and_fused_add(n):
    torch.manual_seed(n)
    x = torch.randn(7, n, device=DEV)
    r = torch.randn(7, n, device=DEV)
    norm = RMSNorm(n, 1e-5).to(DEV)
    with torch.no_grad():
        norm.weight.normal_()
    ref = norm(x)
    torch.testing.assert_close(fk.rms_norm(x, norm.weight, 1e-5), ref, rtol=1e-5, atol=1e-5)
    out, res = fk.fused_add_rms_norm(x.clone(), r.clone(), norm.weight, 1e-5)
    torch.testing.assert_close(res, x + r)
    torch.testing.assert_close(out, norm(x + r), rtol=1e-5, atol=1e-5)


def test_silu_and_mul():
    gu = torch.randn(5, 2 * 1100, device=DEV)
    g, u = gu.split(1100, dim=-1)
    torch.testing.assert_close(fk.silu_and_mul(gu), torch.nn.functional.silu(g) * u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hq,hk,d", [(4, 2, 16), (9, 3, 64), (6, 6, 48)])
def test_rotary_inplace_on_qkv_views(hq, hk, d):
    torch.manual_seed(d)
    T = 11
    rope = RotaryEmbedding(d, 128, {"rope_theta": 10000.0, "rope_type": "default"}, torch.float32).to(DEV)
    qkv = torch.randn(T, (hq + 2 * hk) * d, device=DEV)
    pos = torch.randint(0, 128, (T,), device=DEV)
    q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    q, k = q.view(T, hq, d), k.view(T, hk, d)
    rq, rk = rope.rotate(rope.cos_sin(pos), q.clone(), k.clone())
    v_before = v.clone()
    fk.rotary_inplace(q, k, rope.cos, rope.sin, pos)
    torch.testing.assert_close(q, rq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k, rk, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, v_before, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="CPU interpreter check; on CUDA the engine runs fused by default and tests/gpu covers it")
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_model_fused_equals_unfused(tmp_path, arch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build_tiny_model

    from pagoda import LLM, SamplingParams

    folder = build_tiny_model(tmp_path / arch, arch)
    prompts = ["The quick brown fox", "Paris is the capital of", "héllo"]
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    llm = LLM(str(folder), dtype="float32", device="cpu", num_gpu_blocks_override=64)
    base = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    llm.llm_engine.core.runner.model.enable_fused_kernels()
    fused = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    assert fused == base


def test_rotary_with_kv_write():
    from pagoda.attention.reference import ref_write_kv

    torch.manual_seed(3)
    T, hq, hk, d, bs, nblocks = 9, 4, 2, 16, 4, 6
    rope = RotaryEmbedding(d, 64, {"rope_theta": 10000.0, "rope_type": "default"}, torch.float32).to(DEV)
    qkv = torch.randn(T, (hq + 2 * hk) * d, device=DEV)
    pos = torch.randint(0, 64, (T,), device=DEV)
    q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    q, k, v = q.view(T, hq, d), k.view(T, hk, d), v.view(T, hk, d)
    slots = torch.randperm(nblocks * bs, device=DEV)[:T].to(torch.int64)
    slots[2] = -1  # padding row: not written
    rq, rk = rope.rotate(rope.cos_sin(pos), q.clone(), k.clone())
    kc_ref = torch.zeros(nblocks, bs, hk, d, device=DEV)
    vc_ref = torch.zeros_like(kc_ref)
    ref_write_kv(rk, v.clone(), kc_ref, vc_ref, slots)
    kc, vc = torch.zeros_like(kc_ref), torch.zeros_like(vc_ref)
    fk.rotary_inplace(q, k, rope.cos, rope.sin, pos, v, kc, vc, slots)
    torch.testing.assert_close(q, rq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kc, kc_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vc, vc_ref, rtol=0, atol=0)


@pytest.mark.parametrize("hq,hk,d", [(4, 2, 16), (3, 1, 10)])  # a power-of-two half, and a half of 5 (masked)
def test_rope_cos_sin_matches_hf_rotate_half(hq, hk, d):
    """transformers' apply_rotary_pos_emb in one launch: q/k laid out as HF's projections leave them ([B, T, H, D]
    memory seen as [B, H, T, D]); random cos/sin (both halves read); output layout as torch's (empty_like)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(hq + d)
    B, T = 2, 5
    q = torch.randn(B, T, hq, d, generator=g).to(DEV).transpose(1, 2)
    k = torch.randn(B, T, hk, d, generator=g).to(DEV).transpose(1, 2)
    cos, sin = (torch.randn(B, T, d, generator=g).to(DEV) for _ in range(2))
    qo, ko = fk.rope_cos_sin(q, k, cos, sin)
    q_ref, k_ref = apply_rotary_pos_emb(q.double(), k.double(), cos.double(), sin.double())
    torch.testing.assert_close(qo.double(), q_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ko.double(), k_ref, rtol=1e-5, atol=1e-5)
    assert qo.stride() == q.stride() and ko.stride() == k.stride()
    with pytest.raises(ValueError, match="do not fit"):
        fk.rope_cos_sin(q, k, cos[:, :-1], sin)


def _separate_fp8(rows: torch.Tensor):
    """The per-token FP8 codes and scales of the separate quantization kernel (float8 cast by torch)."""
    from pagoda.quantization.kernels.triton_fp8_quant import quantize_fp8_rows
    from pagoda.quantization.w8a8 import _MIN_SCALE, FP8_DTYPE, FP8_MAX

    q, s = quantize_fp8_rows(rows, None, FP8_MAX, _MIN_SCALE, out_dtype=torch.float32 if DEV == "cpu" else FP8_DTYPE)
    return q.to(FP8_DTYPE).view(torch.uint8), s


@pytest.mark.parametrize("n", [64, 576, 4096 + 8])
def test_norms_quantize_their_rows_like_the_separate_kernel(n):
    """fp8=True: the norm's rows quantized per token equal the separate kernel's on the rows it returns otherwise,
    bit for bit (codes and scales); an all-zero row takes the minimum scale."""
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(5, n, generator=g) * torch.logspace(-2, 2, 5)[:, None]).to(torch.bfloat16).to(DEV)
    r = torch.randn(5, n, generator=g).to(torch.bfloat16).to(DEV)
    x[3], r[3] = 0, 0
    w = torch.randn(n, generator=g).to(torch.bfloat16).to(DEV)
    rows = fk.rms_norm(x, w, 1e-6, True)
    q_ref, s_ref = _separate_fp8(fk.rms_norm(x, w, 1e-6))
    assert rows.dtype == torch.bfloat16 and rows.codes.shape == (5, n)
    assert torch.equal(rows.codes.view(torch.uint8), q_ref) and torch.equal(rows.scales, s_ref)
    res = r.clone()
    rows, res_out = fk.fused_add_rms_norm(x.clone(), res, w, 1e-6, True)
    plain, res_ref = fk.fused_add_rms_norm(x.clone(), r.clone(), w, 1e-6)
    q_ref, s_ref = _separate_fp8(plain)
    assert torch.equal(res_out, res_ref)
    assert torch.equal(rows.codes.view(torch.uint8), q_ref) and torch.equal(rows.scales, s_ref)


@pytest.mark.parametrize("n", [40, 1100, 14336])
def test_silu_and_mul_quantizes_its_rows_like_the_separate_kernel(n):
    g = torch.Generator().manual_seed(n)
    gu = (torch.randn(3, 2 * n, generator=g) * 3).to(torch.bfloat16).to(DEV)
    gu[1] = 0
    rows = fk.silu_and_mul(gu, True)
    q_ref, s_ref = _separate_fp8(fk.silu_and_mul(gu))
    assert torch.equal(rows.codes.view(torch.uint8), q_ref) and torch.equal(rows.scales, s_ref)


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="CPU interpreter check; tests/gpu/test_gpu_w8a8.py runs it on scaled_mm")
def test_fp8_model_with_rows_quantized_by_the_norms_equals_linears_quantizing(tmp_path, monkeypatch):
    """A tiny FP8 llama, fused: the norms and SiLU·mul quantizing the FP8 linears' rows (forced on the CPU, whose
    FP8 linears otherwise quantize their own input) gives the same greedy tokens and logprobs, bit for bit, as
    the linears quantizing the same rows themselves; and the Fp8Rows path really ran."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build_tiny_model

    from pagoda import LLM, SamplingParams
    from pagoda.models import llama
    from pagoda.quantization import fp8, w8a8

    folder = build_tiny_model(tmp_path / "llama", "llama")
    prompts = ["The quick brown fox jumps over", "Paris is the capital of", "héllo"]
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    llm = LLM(str(folder), dtype="float32", device="cpu", quantization="fp8", num_gpu_blocks_override=64)
    model = llm.llm_engine.core.runner.model
    monkeypatch.setattr(fp8.Fp8LinearMethod, "takes_fp8_rows", lambda self, layer: self.act == "token")
    monkeypatch.setattr(llama, "fp8_rows_wanted", lambda rows: True)
    calls = []
    real = fp8.fp8_rows_linear
    monkeypatch.setattr(fp8, "fp8_rows_linear", lambda *a: calls.append(1) or real(*a))

    def run():
        outs = llm.generate(prompts, sp, use_tqdm=False)
        return [(o.outputs[0].token_ids, [sorted(d.items()) for d in o.outputs[0].logprobs]) for o in outs]

    monkeypatch.setattr(llama, "FP8_ROWS", False)
    model.enable_fused_kernels()
    base = run()
    assert not calls
    monkeypatch.setattr(llama, "FP8_ROWS", True)
    model.enable_fused_kernels()
    assert all(layer.fp8_rows_attn and layer.fp8_rows_mlp and layer.mlp.fp8_rows_down for layer in model.layers)
    assert run() == base
    assert calls
    assert w8a8.fp8_rows_wanted(9) and not w8a8.fp8_rows_wanted(8)
