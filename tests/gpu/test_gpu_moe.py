"""MoE models on the GPU (skipped without CUDA): the fused Triton MoE path, eager and in CUDA graphs; the
small-batch path against the grouped one in a CUDA graph.

fp32: greedy tokens equal HF's on the GPU (top-5 rule at a divergence, all but one sequence exact);
fp32 and bf16: CUDA graphs on and off give identical tokens (the fused path has no host sync).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_gpu_parity import PROMPTS, check_top5, hf_greedy_with_top5  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402


def eager_and_graph_tokens(folder, max_tokens: int, **kw) -> dict[bool, list[list[int]]]:
    """Greedy tokens of ``PROMPTS`` with ``enforce_eager`` True and False (one engine each, freed after); the MoE
    layers run the fused path."""
    from pagoda import LLM, SamplingParams

    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    outs = {}
    for eager in (True, False):
        llm = LLM(str(folder), device="cuda", enforce_eager=eager, kv_cache_memory_bytes=256 * 2**20, **kw)
        assert any(getattr(m, "fused", False) for m in llm.llm_engine.core.runner.model.modules())
        outs[eager] = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        del llm
        torch.cuda.empty_cache()
    return outs


def assert_follows_hf(tokens: list[list[int]], ref_folder, max_tokens: int) -> None:
    """fp32 HF on ``ref_folder``: the top-5 rule at a divergence, all but one sequence token-exact."""
    ref = hf_greedy_with_top5(ref_folder, PROMPTS, max_tokens, torch.float32)
    exact = 0
    for ours, (theirs, top5) in zip(tokens, ref, strict=True):
        check_top5(ours, theirs, top5)
        exact += ours == theirs
    assert exact >= len(PROMPTS) - 1, f"only {exact}/{len(PROMPTS)} fp32 sequences token-exact"


@pytest.mark.parametrize("arch", ["mixtral", "qwen2moe_dense", "qwen3moe"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_moe_matches_hf_and_graphs(tmp_path, arch, dtype):
    folder = build_tiny_model(tmp_path / arch, arch)
    outs = eager_and_graph_tokens(folder, 32, dtype=dtype)
    assert outs[True] == outs[False], "CUDA graphs changed the output"
    if dtype == "float32":
        assert_follows_hf(outs[True], folder, 32)


QWEN3_30B_LAYER = (128, 8, 2048, 768, True)
MIXTRAL_LIKE_LAYER = (8, 2, 1024, 3584, False)  # float32 routing weights; at most 4 tokens: pairs <= experts


@pytest.mark.parametrize("T,E,K,H,inter,cast", [(t, *QWEN3_30B_LAYER) for t in (1, 3, 8)]
                         + [(t, *MIXTRAL_LIKE_LAYER) for t in (1, 4)])
def test_gpu_small_moe_path_in_graph_matches_grouped(T, E, K, H, inter, cast):
    """The small-batch path captured with the routing in a CUDA graph: replays equal the eager call bit for
    bit, follow new routing written into the static inputs, and agree with the grouped path within bf16
    tolerance (Qwen3-30B-A3B's layer, and a Mixtral-like one)."""
    from pagoda.layers.fused_moe import small_moe as sm
    from pagoda.layers.fused_moe import triton_moe as tm
    from pagoda.layers.fused_moe.routing import RoutingConfig

    # the table's launches where it covers the batch, else the pre-sweep defaults (valid whatever table is pasted)
    rules = sm.small_moe_rules(T * K, E) or (sm.MoeGemvRule(8, 256), sm.MoeGemvRule(4, 128))
    torch.manual_seed(T)
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    w13, w2 = torch.randn(E, 2 * inter, H, **bf) * 0.02, torch.randn(E, H, inter, **bf) * 0.02
    x, logits = torch.randn(T, H, **bf), torch.randn(T, E, **bf)
    rc = RoutingConfig(E, K, True, cast)

    def layer():
        wts, ids = tm.fused_topk(logits, rc)
        return tm.fused_experts(x, w13, w2, wts, ids, small_rules=rules)

    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        layer()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer()
    for _ in range(2):  # the second pass: new tokens and routing in the static inputs
        graph.replay()
        torch.cuda.synchronize()
        eager = layer()
        assert torch.equal(out, eager)
        wts, ids = tm.fused_topk(logits, rc)
        grouped = tm.fused_experts(x, w13, w2, wts, ids, rules=tm.moe_rules(T * K))
        torch.testing.assert_close(out.float(), grouped.float(), rtol=2e-2, atol=1e-2)
        x.copy_(torch.randn(T, H, **bf))
        logits.copy_(torch.randn(T, E, **bf))


@pytest.mark.parametrize("arch,scheme", [("qwen3moe", "gptq-b4-g16-asym"), ("mixtral", "gptq-b8-gall-sym"),
                                         ("qwen2moe", "fp8-block16"), ("qwen3moe", "fp8-tensor-experts")])
def test_gpu_quantized_moe_matches_hf_and_graphs(tmp_path, arch, scheme):
    """Quantized experts on the GPU (the Triton paths dequantizing in flight), fp32: CUDA graphs on and off give
    the same tokens, which follow HF's on the dequantized checkpoint (top-5 rule, all but one exact)."""
    from moe_quant_checkpoints import write_quantized

    qdir, ddir = write_quantized(build_tiny_model(tmp_path / arch, arch), tmp_path / "q", scheme)
    outs = eager_and_graph_tokens(qdir, 24, dtype="float32")
    assert outs[True] == outs[False], "CUDA graphs changed the output"
    assert_follows_hf(outs[True], ddir, 24)


def test_gpu_quantized_moe_dummy_bf16_runs_in_graphs(tmp_path):
    """--load-format dummy with online -q fp8 on a bf16 MoE: graphs and eager agree."""
    folder = build_tiny_model(tmp_path / "qwen3moe", "qwen3moe")
    outs = eager_and_graph_tokens(folder, 16, dtype="bfloat16", quantization="fp8", load_format="dummy")
    assert outs[True] == outs[False]


@pytest.mark.parametrize("case", ["qwen3moe", "qwen2moe"])
def test_gpu_gguf_moe_matches_hf_and_graphs(tmp_path, monkeypatch, case):
    """A Qwen MoE GGUF run quantized on the GPU (qwen3moe: Q4_K gate/up, Q6_K down experts; qwen2moe: Q4_0 / Q5_1
    experts and a shared expert), fp32: graphs on and off agree and follow HF on its dequantized conversion."""
    from test_gguf_qwen import _write

    from pagoda.models.model_files import ensure_gguf_weights, resolve_model

    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    path = _write(tmp_path / f"{case}.gguf", case)
    outs = eager_and_graph_tokens(path, 24, dtype="float32")
    assert outs[True] == outs[False], "CUDA graphs changed the output"
    folder = resolve_model(str(path))
    ensure_gguf_weights(folder)  # HF reads the dequantized conversion
    assert_follows_hf(outs[True], folder, 24)
