"""FP8 KV cache on the GPU (skipped without CUDA): the Triton path end to end (fused rotary+KV write,
unified and split-KV attention, CUDA graphs, host tier), against the model-dtype cache and the torch
backend. The kernel-level checks (tests/kernels/test_kv_fp8_kernels.py) also run compiled on a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine_checks import PROMPTS, compare_top5, greedy, our_top  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402

KV_BYTES = 2**24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("gpu_kv_fp8") / "llama", "llama")


def _llm(folder, **kw):
    from pagoda import LLM

    kw.setdefault("kv_cache_memory_bytes", KV_BYTES)
    return LLM(str(folder), device="cuda", **kw)


def _top5_compare(got, want, what):
    compared = 0
    for a, b in zip(got, want, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        compared += compare_top5(ca.token_ids, cb.token_ids, [our_top(d) for d in ca.logprobs],
                                 [our_top(d) for d in cb.logprobs], what=what)
    return compared


@pytest.mark.parametrize("kv_dtype", ["fp8", "fp8_e5m2"])
def test_fp8_kv_on_gpu_doubles_blocks_and_keeps_tokens(folder, kv_dtype):
    sp = greedy(logprobs=5)
    base = _llm(folder, dtype="bfloat16")
    want = base.generate(PROMPTS, sp, use_tqdm=False)
    nb_base = base.llm_engine.core.runner.num_blocks
    base.shutdown()
    llm = _llm(folder, dtype="bfloat16", kv_cache_dtype=kv_dtype)
    runner = llm.llm_engine.core.runner
    assert runner.kv_caches[0][0].dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    assert runner.num_blocks == 2 * nb_base
    assert runner.graphs is not None, "CUDA graphs should be on"
    got = llm.generate(PROMPTS, sp, use_tqdm=False)
    assert _top5_compare(got, want, f"gpu {kv_dtype}") >= len(PROMPTS) * 4
    llm.shutdown()


def test_fp8_graphs_equal_eager_and_torch_backend_agrees(folder):
    """fp32 model, FP8 cache: CUDA graphs (fused rotary+KV write, split-KV decode) give the eager tokens;
    the torch backend (its own FP8 write and read) agrees by the top-5 rule."""
    sp = greedy(logprobs=5)
    graphs = _llm(folder, dtype="float32", kv_cache_dtype="fp8")
    a = graphs.generate(PROMPTS, sp, use_tqdm=False)
    graphs.shutdown()
    eager = _llm(folder, dtype="float32", kv_cache_dtype="fp8", enforce_eager=True)
    b = eager.generate(PROMPTS, sp, use_tqdm=False)
    eager.shutdown()
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]
    torch_be = _llm(folder, dtype="float32", kv_cache_dtype="fp8", attention_backend="torch")
    c = torch_be.generate(PROMPTS, sp, use_tqdm=False)
    torch_be.shutdown()
    assert _top5_compare(c, a, "torch backend vs triton, fp8") >= len(PROMPTS) * 8


def test_fp8_host_tier_round_trip_on_gpu(folder):
    from pagoda import SamplingParams

    prompt = "PagedAttention stores the key value cache in fixed size blocks. Continuous batching lets " * 2
    ref = _llm(folder, dtype="float32", kv_cache_dtype="fp8", enable_prefix_caching=False)
    prompts = [prompt[: 40 + 17 * i] for i in range(6)]
    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in ref.generate(prompts, sp, use_tqdm=False)]
    ref.shutdown()
    llm = _llm(folder, dtype="float32", kv_cache_dtype="fp8", kv_cache_memory_bytes=None,
               num_gpu_blocks_override=16, max_num_seqs=6, kv_offloading_size=0.002)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    again = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    kv = llm.llm_engine.core.kv
    assert kv.host.num_stored > 0 and kv.host.num_loaded > 0
    assert got == want and again == want
    llm.shutdown()
