"""MoE models (Mixtral, Qwen2-MoE with a shared expert and with a dense layer, Qwen3-MoE) against HF
transformers on the same tiny random weights (GUIDE section 4), plus their start-up errors.

fp32: short and long prompts in one batch with chunked prefill (a 32-token step budget splits the
long ones), greedy tokens equal HF's under the top-5 rule, prompt and sample logprobs within
1e-4. bf16: the top-5 rule against HF in fp32. (Against HF in bf16 it fails for a reason on HF's
side: HF rounds its residual stream to bf16, which on the tiny Mixtral flips a router choice and
moves HF's own bf16 greedy token out of its fp32 top-5 — "Hi", token 2 — while ours, with the
float32 residual stream, equals HF fp32's tokens there.) Loading: transformers' fused 3-D expert names load like the
per-expert ones; a checkpoint missing one expert tensor fails naming it.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from engine_checks import (
    PROMPTS,
    assert_engine_clean,
    assert_logprob_dict_close,
    compare_top5,
    greedy,
    our_top,
    top_ids,
)

MOE_ARCHS = ["mixtral", "qwen2moe", "qwen2moe_dense", "qwen3moe"]
ATOL = 1e-4
NEAR_TIE = 1e-3
K = 5
NEW = 16
CHUNKED = {"max_num_batched_tokens": 32, "max_num_seqs": 8}
MOE_PROMPTS = [PROMPTS[i] for i in (0, 2, 4, 7, 8)]  # 1 to ~70 tokens


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_moe_fp32_matches_hf_with_chunked_prefill(tiny, arch):
    llm = tiny.llm(arch, **CHUNKED)
    outs = llm.generate(MOE_PROMPTS, greedy(max_tokens=NEW, logprobs=K, prompt_logprobs=K), use_tqdm=False)
    assert_engine_clean(llm)
    full = 0
    for prompt, out in zip(MOE_PROMPTS, outs, strict=True):
        comp = out.outputs[0]
        ref = tiny.hf_ref(arch, out.prompt_token_ids, max_new_tokens=NEW)
        n = compare_top5(comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
                         [top_ids(r) for r in ref.step_logprobs], ref.step_logprobs, NEAR_TIE,
                         what=f"{arch} {prompt[:20]!r}")
        full += n == NEW
        for i in range(n):
            assert_logprob_dict_close(comp.logprobs[i], ref.step_logprobs[i], K, comp.token_ids[i], ATOL,
                                      f"{arch} step {i}")
        ids = out.prompt_token_ids
        for i in range(1, len(ids)):
            assert_logprob_dict_close(out.prompt_logprobs[i], ref.prompt_logprobs[i - 1], K, ids[i], ATOL,
                                      f"{arch} prompt pos {i}")
    assert full >= len(MOE_PROMPTS) - 1, f"only {full}/{len(MOE_PROMPTS)} sequences equal HF's"


@pytest.mark.parametrize("arch", ["mixtral", "qwen3moe"])
def test_moe_bf16_top5_rule(tiny, arch):
    llm = tiny.llm(arch, dtype="bfloat16")
    outs = llm.generate(MOE_PROMPTS, greedy(max_tokens=NEW, logprobs=K), use_tqdm=False)
    compared = 0
    for prompt, out in zip(MOE_PROMPTS, outs, strict=True):
        comp = out.outputs[0]
        ref = tiny.hf_ref(arch, out.prompt_token_ids, max_new_tokens=NEW)
        compared += compare_top5(comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
                                 [top_ids(r) for r in ref.step_logprobs], what=f"{arch} bf16 {prompt[:20]!r}")
    assert compared >= len(MOE_PROMPTS) * 4


def test_dense_layers_follow_mlp_only_layers(tiny):
    from pagoda.layers.fused_moe import FusedMoE
    from pagoda.models.llama import MLP

    model = tiny.llm("qwen2moe_dense", **CHUNKED).llm_engine.core.runner.model
    kinds = [type(layer.mlp.experts if hasattr(layer.mlp, "experts") else layer.mlp) for layer in model.layers]
    assert kinds == [FusedMoE, MLP, FusedMoE]  # mlp_only_layers=[1]
    assert model.layers[0].mlp.shared_expert is not None


def _rewrite_checkpoint(src, dst, edit):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file(edit(tensors), str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_fused_expert_names_load(tiny, tmp_path):
    """transformers 5's in-memory names (experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I])."""
    from pagoda import LLM

    def fuse(t):
        out = {k: v for k, v in t.items() if ".experts." not in k}
        for layer in range(2):
            p = f"model.layers.{layer}.mlp.experts"
            out[f"{p}.gate_up_proj"] = torch.stack(
                [torch.cat([t[f"{p}.{e}.gate_proj.weight"], t[f"{p}.{e}.up_proj.weight"]]) for e in range(8)])
            out[f"{p}.down_proj"] = torch.stack([t[f"{p}.{e}.down_proj.weight"] for e in range(8)])
        return out

    folder = _rewrite_checkpoint(tiny.path("qwen3moe"), tmp_path / "fused", fuse)
    sp = greedy(max_tokens=8)
    ours = LLM(str(folder), dtype="float32", device="cpu", **CHUNKED).generate(MOE_PROMPTS, sp, use_tqdm=False)
    ref = tiny.llm("qwen3moe", **CHUNKED).generate(MOE_PROMPTS, sp, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in ours] == [o.outputs[0].token_ids for o in ref]


def test_missing_expert_tensor_is_named(tiny, tmp_path):
    from pagoda import LLM

    gone = "model.layers.1.block_sparse_moe.experts.5.w3.weight"
    folder = _rewrite_checkpoint(tiny.path("mixtral"), tmp_path / "missing",
                                 lambda t: {k: v for k, v in t.items() if k != gone})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.block_sparse_moe\.experts\.5\.up_proj \(w3\)"):
        LLM(str(folder), dtype="float32", device="cpu")
