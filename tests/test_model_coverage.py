"""Gemma 2, Gemma 3 (text), Phi-3 and the rope variants against HF transformers (GUIDE section 4).

Tiny random models (tests/tiny_models.py) whose sliding windows (8-16 keys) are far shorter than
the prompts (up to ~275 tokens) and the 32 decoded tokens; prefill is chunked 24 tokens at a time,
so chunks attend over cached prefixes through the window. fp32, greedy: tokens equal HF's (the
top-5 rule, at most one near-tie cut short), prompt and sample logprobs within 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from engine_checks import (
    NEW_TOKENS,
    PROMPTS,
    assert_engine_clean,
    assert_logprob_dict_close,
    compare_top5,
    greedy,
    our_top,
    top_ids,
)

ATOL = 1e-4
NEAR_TIE = 1e-3
K = 5
# A short prompt, and three longer than every window (keeps the HF references cheap).
COVERAGE_PROMPTS = [PROMPTS[2], PROMPTS[7], PROMPTS[8], PROMPTS[9]]
ARCHS = ["gemma2-tied", "gemma3-tied", "phi3", "qwen2yarn", "llamalinear", "llamadynamic", "mistralsw"]


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_hf_with_windows_chunked_prefill(tiny, arch):
    llm = tiny.llm(arch, max_num_batched_tokens=24, max_num_seqs=4)
    outs = llm.generate(COVERAGE_PROMPTS, greedy(logprobs=K, prompt_logprobs=K), use_tqdm=False)
    assert_engine_clean(llm)
    full = 0
    for prompt, out in zip(COVERAGE_PROMPTS, outs, strict=True):
        comp = out.outputs[0]
        assert len(comp.token_ids) == NEW_TOKENS
        ref = tiny.hf_ref(arch, out.prompt_token_ids)
        n = compare_top5(comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
                         [top_ids(r) for r in ref.step_logprobs], ref.step_logprobs, NEAR_TIE,
                         what=f"{arch} {prompt[:20]!r}")
        full += n == NEW_TOKENS
        for i in range(n):
            assert_logprob_dict_close(comp.logprobs[i], ref.step_logprobs[i], K, comp.token_ids[i], ATOL,
                                      f"{arch} step {i}")
        ids = out.prompt_token_ids
        for i in range(1, len(ids)):
            assert_logprob_dict_close(out.prompt_logprobs[i], ref.prompt_logprobs[i - 1], K, ids[i], ATOL,
                                      f"{arch} prompt pos {i}")
    assert full >= len(COVERAGE_PROMPTS) - 1, f"only {full}/{len(COVERAGE_PROMPTS)} sequences equal HF's"


def test_window_changes_the_output(tiny):
    """The window is really applied: the same weights without it give other logprobs on long prompts."""
    import json
    import shutil

    src = tiny.path("mistralsw")
    dst = src.parent / "mistralsw-nowindow"
    if not dst.exists():
        shutil.copytree(src, dst)
        cfg = json.loads((dst / "config.json").read_text())
        cfg["sliding_window"] = None
        (dst / "config.json").write_text(json.dumps(cfg))
    from pagoda import LLM

    prompt = PROMPTS[-1]
    with_w = tiny.llm("mistralsw", max_num_batched_tokens=24, max_num_seqs=4)
    a = with_w.generate([prompt], greedy(max_tokens=1, prompt_logprobs=1), use_tqdm=False)[0]
    b = LLM(str(dst), dtype="float32").generate([prompt], greedy(max_tokens=1, prompt_logprobs=1),
                                                use_tqdm=False)[0]
    assert with_w.llm_engine.cfg.max_model_len == 512  # the window no longer caps the context
    la = [next(iter(d.values())).logprob for d in a.prompt_logprobs[1:]]
    lb = [next(iter(d.values())).logprob for d in b.prompt_logprobs[1:]]
    assert la[:7] == pytest.approx(lb[:7], abs=1e-5)  # inside the window: identical
    assert max(abs(x - y) for x, y in zip(la[8:], lb[8:], strict=True)) > 1e-2


def test_unknown_rope_type_is_a_startup_error(tmp_path, tiny):
    import json
    import shutil

    from pagoda import LLM

    dst = tmp_path / "badrope"
    shutil.copytree(tiny.path("llamalinear"), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "wobbly", "rope_theta": 10000.0}
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope type 'wobbly' is not supported"):
        LLM(str(dst), dtype="float32")


def test_gemma3_multimodal_refused():
    from pagoda.models.registry import resolve_architecture

    with pytest.raises(ValueError, match="Gemma3ForConditionalGeneration"):
        resolve_architecture({"architectures": ["Gemma3ForConditionalGeneration"]})


def test_layer_windows_rules():
    from pagoda.models.sliding_window import layer_sliding_windows as lw

    assert lw({"sliding_window": 4}, "Gemma2ForCausalLM", 4) == [4, None, 4, None]
    assert lw({"sliding_window": 4, "sliding_window_pattern": 3}, "Gemma3ForCausalLM", 6) == [4, 4, None, 4, 4, None]
    assert lw({"sliding_window": 4, "use_sliding_window": False}, "Qwen2ForCausalLM", 2) == [None, None]
    assert lw({"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 1},
              "Qwen2ForCausalLM", 3) == [None, 4, 4]
    assert lw({"sliding_window": 4, "layer_types": ["full_attention"] * 2}, "MistralForCausalLM", 2) == [4, 4]
    assert lw({"sliding_window": None}, "Phi3ForCausalLM", 2) == [None, None]
    with pytest.raises(ValueError, match="layer_types"):
        lw({"sliding_window": 4, "layer_types": ["full_attention"]}, "Gemma3ForCausalLM", 2)


def _hf_config(kind: str, **kw):
    import transformers

    return getattr(transformers, kind)(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **kw)


@pytest.mark.parametrize("kind,kw", [
    ("LlamaConfig", {"rope_scaling": {"rope_type": "linear", "factor": 3.0}}),
    ("LlamaConfig", {"rope_scaling": {"rope_type": "dynamic", "factor": 3.0}}),
    ("LlamaConfig", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    ("Qwen2Config", {"max_position_embeddings": 32768, "rope_theta": 1e6,
                     "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}),
    ("LlamaConfig", {"max_position_embeddings": 4096, "rope_scaling": {
        "rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 256, "beta_fast": 16,
        "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.5}}),
    ("Phi3Config", {"max_position_embeddings": 4096, "original_max_position_embeddings": 256,
                    "partial_rotary_factor": 0.5,
                    "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0 + i / 8 for i in range(4)],
                                     "long_factor": [2.0 + i for i in range(4)]}}),
])
def test_rope_tables_match_transformers(kind, kw):
    """cos/sin tables equal transformers' ROPE_INIT_FUNCTIONS (and its attention factor) per position;
    longrope: short factors below original_max_position_embeddings, long ones from there on."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from pagoda.layers.rotary import RotaryEmbedding, rope_max_position, rope_parameters

    hf = _hf_config(kind, **kw)
    cfg = hf.to_dict()
    params = rope_parameters(cfg)
    rt = params["rope_type"]
    max_pos = min(rope_max_position(cfg), 4096)
    rope = RotaryEmbedding(16, max_pos, params, torch.float32)
    positions = torch.tensor([0, 1, 7, 63, 255, 256, max_pos - 1])
    for p in positions.tolist():
        seq_len = p + 1 if rt == "longrope" else None
        inv, attn = ROPE_INIT_FUNCTIONS[rt](hf, None, seq_len=seq_len)
        ref = torch.tensor(float(p)) * inv
        torch.testing.assert_close(rope.cos[p], ref.cos() * attn, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(rope.sin[p], ref.sin() * attn, rtol=1e-6, atol=1e-6)
    if rt == "yarn":
        assert rope_max_position(cfg) == int(cfg["rope_parameters"]["original_max_position_embeddings"]
                                             * cfg["rope_parameters"]["factor"]) or max_pos == 4096
