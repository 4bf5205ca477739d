"""Architecture review: config features real checkpoints carry, against HF transformers on the same tiny random weights.

Native cases cover what tests/test_model_config_features.py, test_model_coverage.py and test_moe_models.py leave out
(``head_dim`` unlike ``hidden_size / heads`` on Gemma 2/3, Qwen3, Qwen3-MoE and Mixtral, as gemma-2-2b, gemma-3-1b and
Qwen3-0.6B have; Qwen3's ``use_sliding_window`` with ``max_window_layers``; Gemma 3's linear rope scaling on the global
layers only; Phi-4-mini's tied head with partial rotary and longrope; a Phi-3 config.json of the ``"type": "su"``
form; Qwen2-MoE's ``decoder_sparse_step``). Each runs fp32 with chunked prefill over a prompt longer than every window
and is compared with HF's forward (``assert_matches_hf_forward``: prompt and sample logprobs within 1e-4, greedy
tokens HF's).

Transformers-fallback cases: what it runs (a checkpoint's persistent buffers, as Apertus' xIELU ``act_fn.beta``; Llama
4's text model, whose ``base_model_prefix`` names no attribute) and what it refuses by name instead of computing
something else (chunked attention, linear-attention layers, bidirectional attention, attention sinks).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_model_config_features import assert_matches_hf_forward
from tiny_models import build_tokenizer

from pagoda import LLM

LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 2.7, 3.0],
            "long_factor": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 40.0, 50.0]}


def _legacy_su(cfg: dict[str, Any]) -> None:
    """config.json as Phi-3-mini-128k ships it: ``rope_theta`` and ``rope_scaling`` ``{"type": "su"}``."""
    cfg.pop("rope_parameters", None)
    cfg.update(rope_theta=10000.0, rope_scaling={"type": "su", "short_factor": LONGROPE["short_factor"],
                                                 "long_factor": LONGROPE["long_factor"]})


# name -> (config class, model class, config kwargs, edit of the saved config.json or None)
CASES: dict[str, tuple[str, str, dict[str, Any], Callable[[dict[str, Any]], None] | None]] = {
    "gemma2_head_dim": ("Gemma2Config", "Gemma2ForCausalLM", {
        "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8}, None),
    "gemma3_head_dim": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8, "rope_local_base_freq": 100.0,
        "layer_types": ["sliding_attention", "full_attention"]}, None),
    "gemma3_linear_rope": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 8, "num_hidden_layers": 3,
        "sliding_window_pattern": 3, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, None),
    "qwen3_head_dim_window": ("Qwen3Config", "Qwen3ForCausalLM", {
        "head_dim": 32, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}, None),
    "qwen3moe_head_dim": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 32,
        "norm_topk_prob": True, "mlp_only_layers": [0]}, None),
    "mixtral_head_dim_window": ("MixtralConfig", "MixtralForCausalLM", {
        "num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 32, "sliding_window": 8}, None),
    "qwen2moe_sparse_step": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 40, "norm_topk_prob": True, "decoder_sparse_step": 2}, None),
    "phi4mini_tied_partial_longrope": ("Phi3Config", "Phi3ForCausalLM", {
        "pad_token_id": 0, "tie_word_embeddings": True, "partial_rotary_factor": 0.5, "max_position_embeddings": 1024,
        "original_max_position_embeddings": 512, "rope_scaling": {  # rotary_dim 8: 4 factors each
            "rope_type": "longrope", "short_factor": LONGROPE["short_factor"][:4],
            "long_factor": LONGROPE["long_factor"][:4]}}, None),
    "phi3_su_config": ("Phi3Config", "Phi3ForCausalLM", {
        "pad_token_id": 0, "max_position_embeddings": 1024, "original_max_position_embeddings": 512,
        "rope_scaling": LONGROPE}, _legacy_su),
    # --- the transformers fallback (no native class)
    "apertus": ("ApertusConfig", "ApertusForCausalLM", {"head_dim": 16}, None),
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM", {
        "head_dim": 16, "num_local_experts": 2, "intermediate_size_mlp": 128, "moe_layers": [],
        "attention_chunk_size": None, "pad_token_id": 0}, None),
    "llama4_chunked": ("Llama4TextConfig", "Llama4ForCausalLM", {
        "head_dim": 16, "num_local_experts": 2, "intermediate_size_mlp": 128, "moe_layers": [],
        "attention_chunk_size": 8, "pad_token_id": 0}, None),
    "gemma3_bidirectional": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "head_dim": 16, "sliding_window": 4096, "use_bidirectional_attention": True}, None),
}
NATIVE = [c for c in CASES if c not in ("apertus", "llama4_text", "llama4_chunked", "gemma3_bidirectional")]


def build(folder: Path, case: str) -> Path:
    import transformers

    cfg_cls, model_cls, extra, edit = CASES[case]
    if folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = build_tokenizer(tmp)
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 512}
    cfg = getattr(transformers, cfg_cls)(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, **{**shape, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).to(torch.float32)
    with torch.no_grad():  # larger weights than HF's init, so every feature moves the logits
        for name, p in model.named_parameters():
            if "norm" not in name and "act_fn" not in name:
                p.normal_(0.0, 0.08)
    model.save_pretrained(tmp, safe_serialization=True)
    if edit is not None:
        path = tmp / "config.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    os.replace(tmp, folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("arch_review")
    return lambda case: build(root / case, case)


def _check(folder: Path, impl: str, **kw: Any) -> None:
    llm = LLM(str(folder), dtype="float32", max_num_batched_tokens=24, max_num_seqs=4, **kw)
    try:
        assert llm.llm_engine.cfg.model_impl == impl
        assert_matches_hf_forward(folder, llm)
    finally:
        llm.shutdown()


@pytest.mark.parametrize("case", NATIVE)
def test_native_config_feature_matches_hf(models, case):
    _check(models(case), "pagoda")


def test_fallback_loads_persistent_buffers(models):
    """Apertus' xIELU activation keeps ``beta`` / ``eps`` as buffers in the checkpoint: they load like parameters
    (every checkpoint tensor had to be a parameter: 'has no place in ApertusForCausalLM')."""
    folder = models("apertus")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert any(k.endswith("act_fn.beta") for k in f.keys())
    _check(folder, "transformers")


def test_fallback_finds_llama4_decoder_stack(models):
    """Llama4ForCausalLM's base_model_prefix ('language_model') names no attribute, so ``base_model`` is the CausalLM
    itself; its decoder stack is ``model`` (it fed the LM head logits: a shape error at start-up)."""
    _check(models("llama4_text"), "transformers")


def test_fallback_refuses_chunked_attention(models):
    with pytest.raises(ValueError, match=r"Llama4ForCausalLM has layers of type chunked_attention \(config "
                                         r"layer_types\).*full_attention and sliding_attention layers only"):
        LLM(str(models("llama4_chunked")), dtype="float32")


def test_fallback_refuses_other_layer_types_and_chunk_size():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3NextConfig, Qwen3NextForCausalLM

    from pagoda.models.transformers_support import check_supported

    nxt = Qwen3NextConfig(num_hidden_layers=4, full_attention_interval=2)
    with pytest.raises(ValueError, match=r"Qwen3NextForCausalLM has layers of type linear_attention"):
        check_supported(nxt, Qwen3NextForCausalLM, "Qwen3NextForCausalLM")
    chunked = LlamaConfig(attention_chunk_size=64)  # a config that names a chunk size without layer_types
    with pytest.raises(ValueError, match=r"chunked attention \(config attention_chunk_size=64\)"):
        check_supported(chunked, LlamaForCausalLM, "LlamaForCausalLM")
    check_supported(LlamaConfig(), LlamaForCausalLM, "LlamaForCausalLM")  # full attention: runs


def test_fallback_refuses_bidirectional_attention(models):
    """Gemma 3 with use_bidirectional_attention forced through the fallback (the native class refuses it): its
    attention modules are not causal, and pagoda's backends are; it ran causally, with other logits than HF's."""
    with pytest.raises(RuntimeError, match=r"Gemma3Attention attends bidirectionally \(is_causal=False"):
        LLM(str(models("gemma3_bidirectional")), dtype="float32", model_impl="transformers")


def test_attention_sinks_named_by_shape():
    """GPT-OSS passes its sinks as ``s_aux``: the error names the feature and the tensor's shape, not its values."""
    from pagoda.models.transformers_attention import STEP_ATTR, StepContext, pagoda_attention

    module = torch.nn.Module()
    module.layer_idx = 0
    module.__dict__[STEP_ATTR] = StepContext()
    q = torch.zeros(1, 4, 3, 8)
    with pytest.raises(RuntimeError, match=r"asks for attention sinks \(s_aux=a tensor of shape \(4,\)\), which"):
        pagoda_attention(module, q, q, q, None, s_aux=torch.nn.Parameter(torch.randn(4)))
    module.is_causal = False
    with pytest.raises(RuntimeError, match=r"attends bidirectionally"):
        pagoda_attention(module, q, q, q, None)
