"""config.json features of the native models against HF transformers on the same tiny random weights.

Each case builds a tiny random model whose config carries one feature (projection biases, a GELU MLP, a
sliding window an architecture reads or ignores), runs it through pagoda (fp32, greedy, chunked prefill
over a prompt longer than every window) and compares with HF's forward: every prompt position's logprob
within 1e-4, and each generated token HF's greedy choice (or a near-tie of it) with HF's logprob.
HF's forward is the reference rather than ``generate``: transformers builds a sliding-window KV cache
from any ``sliding_window`` in the config, even for a model whose attention ignores it (Llama).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import build_tokenizer

from pagoda import LLM, SamplingParams

ATOL = 1e-4
NEAR_TIE = 1e-3
NEW_TOKENS = 8
PROMPT = " ".join(["Continuous batching lets new requests join a running batch."] * 4)  # ~60 tokens, windows of 8

MOE2 = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 40}
MOE3 = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16}


def _hub_window(**kw: Any) -> Callable[[dict[str, Any]], None]:
    """A config.json as transformers 4.x wrote it (no layer_types), with ``kw`` set."""
    def edit(cfg: dict[str, Any]) -> None:
        cfg.pop("layer_types", None)
        cfg.update(kw)
    return edit


# name -> (config class, model class, config kwargs, edit of the saved config.json or None)
CASES: dict[str, tuple[str, str, dict[str, Any], Callable[[dict[str, Any]], None] | None]] = {
    # Llama: attention_bias puts a bias on q/k/v *and* o_proj; mlp_bias on gate/up/down.
    "llama_biases": ("LlamaConfig", "LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}, None),
    "qwen3_attention_bias": ("Qwen3Config", "Qwen3ForCausalLM", {"attention_bias": True, "head_dim": 16}, None),
    "gemma2_attention_bias": ("Gemma2Config", "Gemma2ForCausalLM", {
        "attention_bias": True, "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 8}, None),
    "qwen2moe_no_qkv_bias": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {**MOE2, "qkv_bias": False}, None),
    "llama_gelu": ("LlamaConfig", "LlamaForCausalLM", {"hidden_act": "gelu"}, None),
    # HF Llama's attention has no window: a sliding_window key changes nothing.
    "llama_sliding_window_key": ("LlamaConfig", "LlamaForCausalLM", {}, lambda c: c.update(sliding_window=8)),
    # Qwen-MoE hub configs carry a sliding_window that use_sliding_window=false turns off.
    "qwen2moe_window_off": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", MOE2,
                            _hub_window(sliding_window=8, use_sliding_window=False)),
    "qwen3moe_window_off": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", MOE3,
                            lambda c: c.update(sliding_window=8, use_sliding_window=False)),
    # Qwen2-MoE with the window on and no layer_types: even layers below max_window_layers slide.
    "qwen2moe_window_on": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {
        **MOE2, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 3, "num_hidden_layers": 3},
        _hub_window()),
}


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
    with torch.no_grad():  # larger weights than HF's init (biases included), so every feature moves the logits
        for name, p in model.named_parameters():
            if "norm" not in name:
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
    root = tmp_path_factory.mktemp("config_features")
    return lambda case: build(root / case, case)


def assert_matches_hf_forward(folder: Path, llm: LLM) -> None:
    """Prompt logprobs and greedy tokens of ``llm`` against HF's forward over the prompt and pagoda's tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder)(PROMPT)["input_ids"]
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1, prompt_logprobs=1)
    out = llm.generate({"prompt_token_ids": ids}, sp, use_tqdm=False)[0]
    ours = list(out.outputs[0].token_ids)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids + ours]), use_cache=False).logits[0].float(), dim=-1)
    for i in range(1, len(ids)):
        got, ref = out.prompt_logprobs[i][ids[i]].logprob, float(lp[i - 1, ids[i]])
        assert math.isclose(got, ref, abs_tol=ATOL), f"prompt position {i}: {got} vs HF {ref}"
    for j, tok in enumerate(ours):
        row = lp[len(ids) - 1 + j]
        got = out.outputs[0].logprobs[j][tok].logprob
        assert math.isclose(got, float(row[tok]), abs_tol=ATOL), f"token {j}: {got} vs HF {float(row[tok])}"
        assert float(row.max() - row[tok]) <= NEAR_TIE, f"token {j}: {tok} is not HF's greedy {int(row.argmax())}"


@pytest.mark.parametrize("case", list(CASES))
def test_config_feature_matches_hf(models, case):
    folder = models(case)
    llm = LLM(str(folder), dtype="float32", max_num_batched_tokens=24, max_num_seqs=4)
    try:
        assert_matches_hf_forward(folder, llm)
    finally:
        llm.shutdown()


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="CPU interpreter check; on CUDA the engine runs the fused kernels by default")
def test_gelu_mlp_with_fused_kernels(models):
    """The fused elementwise path (CUDA's default) computes the config's activation, not always SiLU."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter (set by tests/conftest.py on a machine without CUDA)")
    folder = models("llama_gelu")
    llm = LLM(str(folder), dtype="float32", max_num_batched_tokens=24, max_num_seqs=4)
    try:
        llm.llm_engine.core.runner.model.enable_fused_kernels()
        assert_matches_hf_forward(folder, llm)
    finally:
        llm.shutdown()


def _variant(src, dst, **changes):
    """A copy of model folder ``src`` at ``dst`` with config.json fields changed."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_unsupported_activation_names_the_key(models, tmp_path):
    dst = _variant(models("llama_gelu"), tmp_path / "relu", hidden_act="relu")
    with pytest.raises(ValueError, match=r"hidden_act.*'relu' is not supported"):
        LLM(str(dst), dtype="float32")


def test_layer_windows_follow_each_architecture():
    from pagoda.models.sliding_window import layer_sliding_windows as lw

    hub_qwen = {"sliding_window": 4, "use_sliding_window": False, "max_window_layers": 2}
    for arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        assert lw(hub_qwen, arch, 4) == [None] * 4, arch
    on = {**hub_qwen, "use_sliding_window": True}
    assert lw(on, "Qwen2ForCausalLM", 4) == [None, None, 4, 4]
    assert lw(on, "Qwen2MoeForCausalLM", 4) == [4, None, None, None]
    assert lw({**on, "max_window_layers": 4}, "Qwen2MoeForCausalLM", 4) == [4, None, 4, None]
    assert lw(on, "Qwen3MoeForCausalLM", 3) == [4, 4, 4]
    assert lw({"sliding_window": 4}, "LlamaForCausalLM", 2) == [None, None]
    assert lw({"sliding_window": 4, "layer_types": ["sliding_attention"] * 2}, "LlamaForCausalLM", 2) == [None, None]
    assert lw({"sliding_window": 4, "layer_types": ["full_attention"] * 2}, "MixtralForCausalLM", 2) == [4, 4]
    assert lw({"sliding_window": 4}, "Phi3ForCausalLM", 2) == [4, 4]


def test_biases_under_tensor_parallelism(models):
    """o_proj's and down_proj's biases are added once after the row-parallel all-reduce (TP=2, CPU, gloo)."""
    folder = models("llama_biases")
    llm = LLM(str(folder), dtype="float32", device="cpu", tensor_parallel_size=2, max_num_batched_tokens=24,
              max_num_seqs=4)
    try:
        assert_matches_hf_forward(folder, llm)
    finally:
        llm.shutdown()


def test_bias_tensor_the_config_leaves_off_is_a_startup_error(models, tmp_path):
    """A checkpoint holding biases its config.json turns off is refused naming the tensor and the keys."""
    dst = _variant(models("llama_biases"), tmp_path / "biases_off", attention_bias=False, mlp_bias=False)
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.0\..*\.bias' has no place.*attention_bias"):
        LLM(str(dst), dtype="float32")
