"""The fused q/k RMSNorm + rotary (+KV write) kernel compiled on a GPU (skipped without CUDA), at the Qwen3
model shapes, against the three launches it replaces (``RMSNorm(q)``, ``RMSNorm(k)`` = torch's CUDA
``rms_norm``, then ``rotary_inplace``).

Bitwise in bfloat16/float16/float32 where the float32 sum of squares is exact in any order (the one step
whose order is the kernel's own; see tests/kernels/test_fused_qk_norm_rope.py); on general bfloat16 inputs
torch's and Triton's sum orders may move a row's rstd by an ulp, so a few values may differ by a bfloat16
ulp (measured on the CPU: about 3 in a million). Then a tiny Qwen3 model end to end: fused norm vs norm
modules, same greedy tokens by the top-5 rule.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))

# Qwen3-30B-A3B (32 q heads, 4 KV heads), Qwen3-8B (32, 8), Qwen3-32B (64, 8); head_dim 128.
SHAPES = [(32, 4, 128), (32, 8, 128), (64, 8, 128)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("hq,hk,d", SHAPES)
@pytest.mark.parametrize("T", [1, 64])
@pytest.mark.parametrize("cache", ["none", "model", "fp8"])
def test_gpu_fused_qk_norm_bitwise(dtype, hq, hk, d, T, cache):
    from test_fused_qk_norm_rope import assert_same_bits, make_case, run

    cache_dtype = {"none": None, "model": dtype, "fp8": torch.float8_e4m3fn}[cache]
    qkv, qn, kn, rope, pos = make_case(T, hq, hk, d, dtype, grid=True, seed=T + hq + hk, device="cuda")
    scales = (0.5, 0.25) if cache == "fp8" else (1.0, 1.0)
    want = run(qkv, hq, hk, d, qn, kn, rope, pos, cache_dtype, fused=False, scales=scales)
    got = run(qkv, hq, hk, d, qn, kn, rope, pos, cache_dtype, fused=True, scales=scales)
    assert_same_bits(got, want)


@pytest.mark.parametrize("hq,hk,d", SHAPES[:2])
def test_gpu_fused_qk_norm_general_bf16(hq, hk, d):
    """General inputs: at most a bf16 ulp apart where they differ, and rarely (here: at most 1e-4 of values)."""
    from test_fused_qk_norm_rope import make_case, run

    qkv, qn, kn, rope, pos = make_case(256, hq, hk, d, torch.bfloat16, grid=False, seed=11, device="cuda")
    want = run(qkv, hq, hk, d, qn, kn, rope, pos, torch.bfloat16, fused=False)
    got = run(qkv, hq, hk, d, qn, kn, rope, pos, torch.bfloat16, fused=True)
    for a, b in zip(got, want, strict=True):
        diff = a != b
        print(f"{diff.sum().item()} of {a.numel()} values differ")
        assert diff.float().mean().item() <= 1e-4
        torch.testing.assert_close(a, b, rtol=2**-6, atol=2**-5)


def test_gpu_qwen3_fused_norm_same_tokens(tmp_path, monkeypatch):
    """A tiny Qwen3 in bf16 under CUDA graphs: the fused norm path against the norm modules (the old path)."""
    from engine_checks import PROMPTS, compare_top5, greedy, our_top
    from tiny_models import build_tiny_model

    from pagoda import LLM
    from pagoda.models import llama
    from pagoda.models.llama import Attention

    folder = build_tiny_model(tmp_path / "qwen3", "qwen3")
    calls = {"fused": 0}
    orig = Attention._fused_qk_norm_args

    def counting(self, q):
        args = orig(self, q)
        calls["fused"] += bool(args)
        return args

    outs = []
    monkeypatch.setattr(Attention, "_fused_qk_norm_args", counting)
    for fused_norm in (True, False):
        monkeypatch.setattr(llama, "FUSED_QK_NORM", fused_norm)
        llm = LLM(str(folder), dtype="bfloat16", device="cuda", kv_cache_memory_bytes=2**26)
        outs.append(llm.generate(PROMPTS, greedy(logprobs=5), use_tqdm=False))
        llm.shutdown()
    assert calls["fused"] > 0, "the fused q/k norm path did not run"
    compared = 0
    for a, b in zip(*outs, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        compared += compare_top5(ca.token_ids, cb.token_ids, [our_top(d) for d in ca.logprobs],
                                 [our_top(d) for d in cb.logprobs], what="fused q/k norm")
    assert compared >= len(PROMPTS) * 4
