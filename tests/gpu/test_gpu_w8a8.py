"""GPU W8A8 GEMMs (skipped without CUDA): ``torch._scaled_mm`` FP8 and ``torch._int_mm`` int8 against the
portable path (the same quantized operands, dequantized to float32), plus a dummy-weight FP8 model run."""

from __future__ import annotations

import pytest
import torch

from pagoda.quantization.w8a8 import (
    fp8_linear,
    int8_linear,
    quantize_weight_fp8_per_channel,
    scaled_mm_supported,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("m", [1, 7, 16, 17, 300])
@pytest.mark.parametrize("static", [False, True])
def test_scaled_mm_matches_portable(m, static):
    dev = torch.device("cuda")
    if not scaled_mm_supported(dev, 256, 512):
        pytest.skip("compute capability < 8.9")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(m, 256, device=dev, generator=g).bfloat16()
    w = torch.randn(512, 256, device=dev, generator=g) * 0.05
    q, s = quantize_weight_fp8_per_channel(w)
    iscale = x.float().abs().amax() / 448 if static else None
    bias = torch.randn(512, device=dev, generator=g).bfloat16()
    y = fp8_linear(x, q, s, bias, iscale, True, use_scaled_mm=True, allow_gemv=False)  # the W8A8 path at every M
    ref = fp8_linear(x.float(), q, s, bias.float(), iscale, True, use_scaled_mm=False, allow_gemv=False)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("m", [1, 16, 17, 64])
def test_int_mm_matches_portable(m):
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(m, 256, device=dev, generator=g).bfloat16()
    w = torch.randint(-127, 128, (512, 256), device=dev, dtype=torch.int8, generator=g)
    s = torch.rand(512, device=dev, generator=g) * 1e-3
    y = int8_linear(x, w, s, None)
    ref = int8_linear(x.float().cpu(), w.cpu(), s.cpu(), None)  # CPU: exact int32 products as well
    torch.testing.assert_close(y.float().cpu(), ref, rtol=1e-2, atol=1e-2)


def test_fp8_dummy_model_runs(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build_tiny_model

    from pagoda import LLM, SamplingParams

    folder = build_tiny_model(tmp_path / "llama", "llama")
    llm = LLM(str(folder), dtype="bfloat16", quantization="fp8", load_format="dummy")
    out = llm.generate(["Hi"], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_fp8_rows_from_the_norms_change_nothing(tmp_path, monkeypatch):
    """FP8 weights on scaled_mm, fused: the norms and SiLU·mul quantizing the linears' rows (llama.FP8_ROWS) give
    the same greedy tokens and logprobs, bit for bit, as the linears quantizing their own input: prefill rows and
    decode steps of 12 sequences (over the FP8 GEMV's 8 rows), in CUDA graphs and eagerly."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build_tiny_model

    from pagoda import LLM, SamplingParams
    from pagoda.models import llama

    if not scaled_mm_supported(torch.device("cuda"), 64, 64):
        pytest.skip("compute capability < 8.9")
    folder = build_tiny_model(tmp_path / "llama", "llama")
    prompts = [f"Prompt number {i} asks about the weather in town {i * 7}" for i in range(12)]
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=3)
    results = {}
    for on in (False, True):
        for eager in (False, True):
            monkeypatch.setattr(llama, "FP8_ROWS", on)
            llm = LLM(str(folder), dtype="bfloat16", quantization="fp8", load_format="dummy", enforce_eager=eager,
                      gpu_memory_utilization=0.2)
            layer = llm.llm_engine.core.runner.model.layers[0]
            assert layer.fp8_rows_attn == layer.fp8_rows_mlp == layer.mlp.fp8_rows_down == on
            outs = llm.generate(prompts, sp, use_tqdm=False)
            results[on, eager] = [(o.outputs[0].token_ids, [sorted(d.items()) for d in o.outputs[0].logprobs])
                                  for o in outs]
            del llm
            torch.cuda.empty_cache()
    assert results[True, False] == results[False, False]
    assert results[True, True] == results[False, True]
