"""GPU checks (skipped without CUDA): sliding windows and logit soft-caps in the compiled Triton kernels
at real sizes, and tiny Gemma 2 / Gemma 3 / Phi-3 models on the GPU against HF on the GPU.

Kernel shapes: Gemma-2-9B (H=16, Hkv=8, D=256, window 4096, soft-cap 50) and Gemma-3-1B-like
(H=8, Hkv=4, D=256, window 512), bf16, contexts past the window, in the unified kernel (prefill
chunks, with and without KV splits) and the split-KV decode kernel; the oracle is
``ref_paged_attention`` with the same window and cap.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import build_tiny_model  # noqa: E402

SHAPES = {"gemma2-9b": (16, 8, 256, 4096, 50.0), "gemma3-1b": (8, 4, 256, 512, None)}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("num_splits", [1, 4])
def test_unified_kernel_window_softcap_real_sizes(shape, num_splits):
    from test_triton_attention import TOL, make_batch, run_unified

    from pagoda.attention.reference import ref_paged_attention

    H, Hkv, D, window, cap = SHAPES[shape]
    reqs = [(700, 5000), (1, 4800), (300, 300), (1, 4097), (64, 4160)]
    q, kc, vc, meta = make_batch(reqs, 16, Hkv, D, H // Hkv, torch.bfloat16, seed=1)
    out = run_unified(q, kc, vc, meta, 256**-0.5, num_splits=num_splits, sliding_window=window, logits_soft_cap=cap)
    ref = ref_paged_attention(q, kc, vc, meta, 256**-0.5, sliding_window=window, logits_soft_cap=cap)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[torch.bfloat16])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_split_decode_window_softcap_real_sizes(shape):
    from test_triton_attention import TOL, make_batch, run_split

    from pagoda.attention.reference import ref_paged_attention

    H, Hkv, D, window, cap = SHAPES[shape]
    reqs = [(1, 9000), (1, 4096), (1, 4097), (1, 513), (1, 100)]
    q, kc, vc, meta = make_batch(reqs, 16, Hkv, D, H // Hkv, torch.bfloat16, seed=2)
    out = run_split(q, kc, vc, meta, 256**-0.5, 8, sliding_window=window, logits_soft_cap=cap)
    ref = ref_paged_attention(q, kc, vc, meta, 256**-0.5, sliding_window=window, logits_soft_cap=cap)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[torch.bfloat16])


@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "phi3", "mistralsw"])
def test_gpu_tiny_models_match_hf(tmp_path, arch):
    """fp32, Triton backend, CUDA graphs on and off: greedy tokens equal HF's on the GPU (top-5 rule)."""
    from test_gpu_parity import PROMPTS, check_top5, hf_greedy_with_top5

    from pagoda import LLM, SamplingParams

    folder = build_tiny_model(tmp_path / arch, arch, tie=arch.startswith("gemma"))
    prompts = PROMPTS + [" ".join(["Continuous batching lets new requests join a running batch."] * 12)]
    ref = hf_greedy_with_top5(folder, prompts, 32, torch.float32)
    sp = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outs = {}
    for eager in (True, False):
        llm = LLM(str(folder), dtype="float32", device="cuda", enforce_eager=eager, max_num_batched_tokens=64,
                  kv_cache_memory_bytes=256 * 2**20)
        assert llm.llm_engine.core.runner.backend.name == "triton"
        outs[eager] = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
        del llm
        torch.cuda.empty_cache()
    assert outs[True] == outs[False], "CUDA graphs changed the output"
    exact = 0
    for ours, (theirs, top5) in zip(outs[True], ref, strict=True):
        check_top5(ours, theirs, top5)
        exact += ours == theirs
    assert exact >= len(prompts) - 1, f"only {exact}/{len(prompts)} fp32 sequences token-exact"
