"""Quantized MoE checkpoints (GPTQ 4- and 8-bit, block-wise and per-tensor FP8) against HF transformers running
the same checkpoints dequantized (GUIDE section 4), plus their start-up errors.

The checkpoints are written by tests/moe_quant_checkpoints.py from the tiny random MoE models. fp32 on the CPU
(the grouped path dequantizes each selected expert): greedy tokens follow HF's under the top-5 rule and the
sample logprobs agree within 1e-4; chunked prefill splits the long prompts. The Triton paths take the same
stacked weights and are checked against a loop over experts in tests/kernels/test_fused_moe_quant.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from engine_checks import (
    assert_engine_clean,
    assert_logprob_dict_close,
    compare_top5,
    greedy,
    hf_greedy,
    our_top,
    top_ids,
)
from moe_quant_checkpoints import write_quantized
from test_moe_models import CHUNKED, MOE_PROMPTS

K = 5
NEW = 12
ATOL = 1e-4
CASES = [("qwen3moe", "gptq-b4-g16-asym"), ("mixtral", "gptq-b8-gall-sym"), ("qwen2moe", "fp8-block16"),
         ("qwen3moe", "fp8-tensor-experts")]


@pytest.fixture(scope="module")
def checkpoints(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_quant")
    cache: dict[tuple[str, str], tuple] = {}

    def get(arch: str, scheme: str):
        if (arch, scheme) not in cache:
            cache[(arch, scheme)] = write_quantized(tiny.path(arch), root / arch, scheme)
        return cache[(arch, scheme)]

    return get


@pytest.mark.parametrize("arch,scheme,stacked", [(a, s, False) for a, s in CASES]
                         + [(a, s, True) for a, s in CASES if not s.startswith("fp8")])
def test_quantized_moe_matches_dequantized_hf(checkpoints, arch, scheme, stacked, monkeypatch):
    """``stacked``: integer experts in the stacked form the CUDA kernels read (the CPU otherwise keeps each
    expert's IntWeight)."""
    from transformers import AutoModelForCausalLM

    from pagoda import LLM
    from pagoda.layers.fused_moe import FusedMoE
    from pagoda.layers.fused_moe.quantized import QuantizedExperts
    from pagoda.quantization.int_weight import IntWeight

    qdir, ddir = checkpoints(arch, scheme)
    monkeypatch.setattr(QuantizedExperts, "cpu_per_expert", not stacked)
    llm = LLM(str(qdir), dtype="float32", device="cpu", **CHUNKED)
    experts = [m for m in llm.llm_engine.core.runner.model.modules() if isinstance(m, FusedMoE)]
    assert experts and all(m.quant is not None for m in experts)  # the experts really are held quantized
    if scheme.startswith("fp8"):  # stacked float8 codes
        assert experts[0].quant.w13_q.dtype == torch.float8_e4m3fn
    elif stacked:
        assert experts[0].quant.w13_q.dtype == torch.uint8 and not experts[0].quant.cpu_experts
    else:  # the CPU form of integer experts: each expert's own IntWeight, in the CPU kernels' layout
        held = experts[0].quant.cpu_experts
        assert len(held) == 3 * experts[0].routing.num_experts and all(isinstance(w, IntWeight) for w in held.values())
    outs = llm.generate(MOE_PROMPTS, greedy(max_tokens=NEW, logprobs=K), use_tqdm=False)
    assert_engine_clean(llm)
    hf = AutoModelForCausalLM.from_pretrained(ddir, dtype=torch.float32).eval()
    full = 0
    for prompt, out in zip(MOE_PROMPTS, outs, strict=True):
        comp = out.outputs[0]
        ref = hf_greedy(hf, out.prompt_token_ids, NEW)
        n = compare_top5(comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
                         [top_ids(r) for r in ref.step_logprobs], ref.step_logprobs, 1e-3,
                         what=f"{arch} {scheme} {prompt[:20]!r}")
        full += n == NEW
        for i in range(n):
            assert_logprob_dict_close(comp.logprobs[i], ref.step_logprobs[i], K, comp.token_ids[i], ATOL,
                                      f"{arch} {scheme} step {i}")
    assert full >= len(MOE_PROMPTS) - 1, f"only {full}/{len(MOE_PROMPTS)} sequences equal HF's"


def _edit(qdir, dst, edit_tensors=None, edit_cfg=None):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(qdir, dst)
    if edit_tensors:
        t = load_file(str(dst / "model.safetensors"))
        save_file(edit_tensors(t), str(dst / "model.safetensors"), metadata={"format": "pt"})
    if edit_cfg:
        cfg = json.loads((dst / "config.json").read_text())
        edit_cfg(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_missing_quantized_expert_tensor_is_named(checkpoints, tmp_path):
    from pagoda import LLM

    qdir, _ = checkpoints("qwen3moe", "gptq-b4-g16-asym")
    gone = "model.layers.1.mlp.experts.6.down_proj.qzeros"
    folder = _edit(qdir, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != gone})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.6\.down_proj\.\['qzeros'\]"):
        LLM(str(folder), dtype="float32", device="cpu")


def test_act_order_experts_are_refused(checkpoints, tmp_path):
    """desc_act with a non-trivial g_idx on an expert: a start-up error naming the expert and the cause."""
    from pagoda import LLM

    qdir, _ = checkpoints("qwen3moe", "gptq-b4-g16-asym")

    def shuffle(t):
        name = "model.layers.0.mlp.experts.2.gate_proj.g_idx"
        t[name] = t[name].flip(0).contiguous()  # every group still has 16 columns: a valid act-order g_idx
        return t

    folder = _edit(qdir, tmp_path / "actorder", shuffle, lambda c: c["quantization_config"].update(desc_act=True))
    with pytest.raises(ValueError, match=r"experts\.2\.gate_proj: act-order .* not supported"):
        LLM(str(folder), dtype="float32", device="cpu")


def test_unsupported_expert_format_is_refused(tiny):
    """A format whose linear method builds neither FP8 nor integer weights (int8 W8A8 here) is named."""
    from pagoda.layers.fused_moe import FusedMoE, RoutingConfig
    from pagoda.quantization.compressed_tensors import CompressedTensorsConfig

    qc = CompressedTensorsConfig.from_config({
        "quant_method": "compressed-tensors", "format": "int-quantized",
        "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                                                                  "strategy": "channel", "dynamic": False},
                                "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                                                      "strategy": "token", "dynamic": True}}}})
    moe = FusedMoE(RoutingConfig(4, 2, True, False), 32, 16, quant_config=qc, prefix="model.layers.0.mlp.experts")
    assert moe.quant is not None
    with pytest.raises(ValueError, match=r"experts\.0\.gate_proj: experts quantized as .* are not supported"):
        moe.quant.init_dummy(torch.Generator().manual_seed(0))


def test_online_fp8_dummy_experts(tiny):
    """``--quantization fp8 --load-format dummy`` on an MoE: experts held as FP8 codes, the engine generates."""
    from pagoda import LLM
    from pagoda.layers.fused_moe import FusedMoE

    llm = LLM(str(tiny.path("qwen3moe")), dtype="float32", device="cpu", quantization="fp8", load_format="dummy")
    moe = next(m for m in llm.llm_engine.core.runner.model.modules() if isinstance(m, FusedMoE))
    assert moe.quant is not None and moe.quant.w13_q.dtype == torch.float8_e4m3fn
    assert moe.quant.w13_q.shape == (8, 96, 64) and moe.quant.w2_scale.shape == (8, 64, 1)
    out = llm.generate(["Hello"], greedy(max_tokens=4), use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 4
