"""Write a random PEFT LoRA adapter for a model folder (its ``config.json``): rank ``--rank`` on q/k/v/o/gate/up/down
of every layer, in PEFT's file layout (``adapter_config.json`` + ``adapter_model.safetensors``), without ``peft``
(the GPU machine has none). A: N(0, 1/in), B: N(0, 0.5/r) so the delta is of the base output's order.

    python benchmarks/gpu/make_lora_adapter.py MODEL_DIR OUT_DIR [--rank 16] [--alpha 32] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def write_adapter(model: Path, out: Path, rank: int, alpha: float, dtype: torch.dtype, seed: int = 0) -> None:
    cfg = json.loads((model / "config.json").read_text())
    hid, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or hid // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * hd
    dims = {"q_proj": (hid, q), "k_proj": (hid, kv), "v_proj": (hid, kv), "o_proj": (q, hid),
            "gate_proj": (hid, inter), "up_proj": (hid, inter), "down_proj": (inter, hid)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, parent in TARGETS.items():
            fan_in, fan_out = dims[name]
            key = f"base_model.model.model.layers.{layer}.{parent}.{name}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=g) / fan_in**0.5).to(dtype)
            tensors[f"{key}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=g) * 0.5 / rank**0.5).to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "bias": "none",
        "target_modules": list(TARGETS), "base_model_name_or_path": str(model), "fan_in_fan_out": False}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    write_adapter(a.model, a.out, a.rank, a.alpha, getattr(torch, a.dtype))


if __name__ == "__main__":
    main()
