"""GGUF models run quantized on the GPU (skipped without CUDA): the Triton W4A16/W8A16 kernels at the default
model's shapes (SmolLM2-135M: hidden 576, 3 KV heads of 64, intermediate 1536, a 49,152-row Q8_0 table) in fp32
and bf16 against the dequantize reference, at the row counts a decode, a verify, a prefill chunk and the memory
profile's dummy step use; and a tiny quantized GGUF Llama (tests/test_gguf.py's, tied and untied) with CUDA
graphs against its own dequantized conversion, the same weights in fp32: same tokens, same logprobs.

Why: the CPU runs a GGUF with its own kernels (int4pack / a dense table), so the CPU tests never ran the GPU's
quantized GGUF path end to end; the default model on an H200 answered wrongly in bf16 and failed to start in fp32
(RESULTS.md, session 8).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))

SHAPES = [  # bits, group, out, in: the default model's linears
    (4, 32, 576, 576), (4, 32, 192, 576), (4, 32, 1536, 576), (4, 32, 576, 1536), (8, 32, 49152, 576),
]


@pytest.mark.parametrize("bits,group,out_f,in_f", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_model_shapes(bits, group, out_f, in_f, dtype):
    from test_int_weight_cpu import random_weight, reference

    from pagoda.quantization.int_weight import int_weight_linear, make_int_weight

    sym = bits == 8  # Q8_0 is symmetric, Q4_1 is not
    codes, scales, offsets = random_weight(bits, group, out_f, in_f, sym, seed=out_f + in_f)
    w = make_int_weight(codes.cuda(), scales.cuda(), offsets.cuda(), bits, group, dtype)
    assert w.layout == "triton"
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for m in (1, 5, 40, 300, 2048):
        x = torch.randn(m, in_f, generator=torch.Generator().manual_seed(m)).to(dtype)
        ref = reference(x, codes, scales, offsets, bits, group, dtype, None, None)
        out = int_weight_linear(x.cuda(), w).cpu()
        err = (out.float() - ref).abs().max().item()
        assert err <= tol * ref.abs().max().item(), (m, err)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_tiny_gguf_quantized_on_gpu_matches_its_dequantized_conversion(tmp_path, monkeypatch, tie):
    """fp32: the same tokens and logprobs as the dequantized conversion; bf16 (what `pagoda serve` runs): the
    guide's top-5 rule against the fp32 run."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from engine_checks import compare_top5, our_top
    from test_gguf import _tiny_quantized_gguf

    from pagoda import LLM, SamplingParams

    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", tie)
    prompts = [{"prompt_token_ids": p} for p in ([1, 40, 60, 70, 80, 90, 100], [5, 6, 7, 8])]
    sp = SamplingParams(temperature=0.0, max_tokens=12, logprobs=5)

    def run(**kw):
        llm = LLM(model=str(path), max_model_len=128, gpu_memory_utilization=0.2, **kw)
        try:
            return llm.generate(prompts, sp, use_tqdm=False)
        finally:
            llm.shutdown()

    dense = run(dtype="float32", load_format="safetensors")
    quant = run(dtype="float32")
    quant_bf16 = run(dtype="bfloat16")
    for q, d, b in zip(quant, dense, quant_bf16, strict=True):
        assert q.outputs[0].token_ids == d.outputs[0].token_ids
        for lq, ld in zip(q.outputs[0].logprobs, d.outputs[0].logprobs, strict=True):
            for tok, entry in ld.items():
                assert lq[tok].logprob == pytest.approx(entry.logprob, abs=1e-3)
        compare_top5(list(b.outputs[0].token_ids), list(d.outputs[0].token_ids),
                     [our_top(x) for x in b.outputs[0].logprobs], [our_top(x) for x in d.outputs[0].logprobs],
                     what="bf16 quantized vs fp32 dequantized")
