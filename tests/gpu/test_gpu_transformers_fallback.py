"""The transformers fallback on the GPU (skipped without CUDA): tiny models through the Triton attention
backend against HF on the GPU, greedy (top-5 rule), with chunked prefill and a batch of prompts; eager, and
in CUDA graphs (decode, prefill-chunk) against eager and against the native Llama."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # runnable alone
from test_gpu_parity import PROMPTS, check_top5, hf_greedy_with_top5  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402


def _greedy(folder: Path, dtype: str, impl: str, eager: bool, n: int) -> tuple[list[list[int]], object]:
    from pagoda import LLM, SamplingParams

    llm = LLM(str(folder), dtype=dtype, device="cuda", model_impl=impl, enforce_eager=eager,
              kv_cache_memory_bytes=256 * 2**20, max_num_batched_tokens=32)
    runner = llm.llm_engine.core.runner
    assert runner.backend.name == "triton"
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), use_tqdm=False)
    graphs = runner.graphs
    info = (llm.llm_engine.cfg.model_impl, graphs is not None, graphs.last_size if graphs is not None else 0)
    llm.shutdown()
    del llm
    torch.cuda.empty_cache()
    return [o.outputs[0].token_ids for o in outs], info


@pytest.mark.parametrize("arch,impl", [("gpt_neox", "auto"), ("gpt2", "auto"), ("llama", "transformers")])
def test_gpu_fallback_matches_hf(tmp_path, arch, impl):
    folder = build_tiny_model(tmp_path / arch, arch)
    toks, (used_impl, has_graphs, _) = _greedy(folder, "float32", impl, eager=True, n=16)
    assert used_impl == "transformers" and not has_graphs
    for ours, (theirs, top5) in zip(toks, hf_greedy_with_top5(folder, PROMPTS, 16, torch.float32), strict=True):
        check_top5(ours, theirs, top5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_gpu_fallback_graphs_equal_eager_and_native(tmp_path, arch, dtype):
    """Fallback with CUDA graphs == fallback eager (same kernels, replayed); both follow HF (and, for Llama, the
    native class in graphs) by the top-5 rule."""
    folder = build_tiny_model(tmp_path / arch, arch)
    impl = "transformers" if arch == "llama" else "auto"
    graphed, (used_impl, has_graphs, last_size) = _greedy(folder, dtype, impl, eager=False, n=24)
    assert used_impl == "transformers" and has_graphs and last_size > 0, "the fallback's decode steps were replayed"
    eager, _ = _greedy(folder, dtype, impl, eager=True, n=24)
    assert graphed == eager, "CUDA graphs changed the fallback's output"
    refs = hf_greedy_with_top5(folder, PROMPTS, 24, getattr(torch, dtype))
    for ours, (theirs, top5) in zip(graphed, refs, strict=True):
        check_top5(ours, theirs, top5)
    if arch == "llama":
        native, (native_impl, native_graphs, _) = _greedy(folder, dtype, "auto", eager=False, n=24)
        assert native_impl == "pagoda" and native_graphs
        same = sum(ours == theirs for ours, theirs in zip(graphed, native, strict=True))
        if dtype == "float32":  # the same arithmetic up to GEMM shapes (fused q/k/v, gate/up natively)
            assert same >= len(PROMPTS) - 1, f"fp32: only {same}/{len(PROMPTS)} sequences equal the native class's"
