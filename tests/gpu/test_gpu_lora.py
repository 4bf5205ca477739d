"""LoRA adapters on the GPU (skipped without CUDA): the tiny Llama with two PEFT-layout adapters, against HF on the
GPU with each adapter merged into its weights (``W + lora_alpha / r * B @ A``), fp32, greedy, token for token.

The adapters are written in PEFT's layout here (``adapter_config.json`` and ``adapter_model.safetensors`` with
``base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight``), so the GPU machine needs no
``peft``; tests/test_lora.py checks the same loader against ``PeftModel`` itself on the CPU. One batch mixes both
adapters and the base model, with ``max_loras=1`` too (requests of the other adapter wait for the slot), with CUDA
graphs and eager.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build_tiny_model  # noqa: E402

PROMPTS = [[1, 5, 9, 33, 70, 12], [1, 40, 41, 42, 7, 300, 8, 90, 11], [1, 250, 3, 17]]
NEW = 16
TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def _write_adapter(base: Path, out: Path, seed: int, r: int, alpha: float) -> dict[str, tuple[torch.Tensor, ...]]:
    """A random adapter on every target of every layer, saved in PEFT's layout; returns its tensors by HF name."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base)
    g = torch.Generator().manual_seed(seed)
    hid, inter = cfg.hidden_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or hid // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    dims = {"q_proj": (hid, q), "k_proj": (hid, kv), "v_proj": (hid, kv), "o_proj": (q, hid),
            "gate_proj": (hid, inter), "up_proj": (hid, inter), "down_proj": (inter, hid)}
    tensors, weights = {}, {}
    for layer in range(cfg.num_hidden_layers):
        for name, parent in TARGETS.items():
            fan_in, fan_out = dims[name]
            a = torch.randn(r, fan_in, generator=g) / fan_in**0.5
            b = torch.randn(fan_out, r, generator=g) * 0.5 / r**0.5
            key = f"model.layers.{layer}.{parent}.{name}"
            tensors[f"base_model.model.{key}.lora_A.weight"] = a
            tensors[f"base_model.model.{key}.lora_B.weight"] = b
            weights[f"{key}.weight"] = (a, b)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "bias": "none",
        "target_modules": list(TARGETS), "base_model_name_or_path": str(base), "fan_in_fan_out": False}))
    return {k: (a, b, torch.tensor(alpha / r)) for k, (a, b) in weights.items()}


def _hf_greedy(base: Path, adapter: dict | None) -> list[list[int]]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        sd = model.state_dict()
        with torch.no_grad():
            for key, (a, b, scale) in adapter.items():
                sd[key].add_(scale * b @ a)
    model = model.cuda().eval()
    model.generation_config.eos_token_id = None
    gc = GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
    outs = []
    with torch.no_grad():
        for p in PROMPTS:
            out = model.generate(torch.tensor([p], device="cuda"), generation_config=gc)
            outs.append(out[0, len(p):].tolist())
    return outs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_lora")
    base = build_tiny_model(root / "llama", "llama")
    a1 = _write_adapter(base, root / "a1", seed=1, r=8, alpha=16)
    a2 = _write_adapter(base, root / "a2", seed=2, r=4, alpha=4)
    refs = {None: _hf_greedy(base, None), "a1": _hf_greedy(base, a1), "a2": _hf_greedy(base, a2)}
    assert refs["a1"] != refs[None] and refs["a2"] != refs[None], "the adapters must change the greedy tokens"
    return root, base, refs


@pytest.mark.parametrize("max_loras, eager", [(2, False), (1, False), (2, True)])
def test_gpu_lora_mixed_batch_matches_merged_hf(setup, max_loras, eager):
    """CUDA graphs (decode and mixed steps) replay the hooks with each step's row mask; eager steps agree."""
    from pagoda import LLM, SamplingParams
    from pagoda.lora.request import LoRARequest

    root, base, refs = setup
    reqs = {None: None, "a1": LoRARequest("a1", 1, str(root / "a1")), "a2": LoRARequest("a2", 2, str(root / "a2"))}
    order = [name for name in ("a1", None, "a2") for _ in PROMPTS]
    prompts = [{"prompt_token_ids": p} for _ in ("a1", None, "a2") for p in PROMPTS]
    with LLM(str(base), dtype="float32", enable_lora=True, max_loras=max_loras, max_lora_rank=8,
             device="cuda", kv_cache_memory_bytes=256 * 2**20, enforce_eager=eager) as llm:
        assert llm.llm_engine.cfg.device.type == "cuda"
        assert (llm.llm_engine.core.runner.graphs is None) == eager
        outs = llm.generate(prompts, SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True),
                            lora_request=[reqs[n] for n in order], use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outs]
    want = [refs[n][i % len(PROMPTS)] for i, n in enumerate(order)]
    assert got == want
