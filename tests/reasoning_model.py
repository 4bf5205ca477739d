"""A tiny scripted "thinking" model for reasoning + structured-output tests (built here, no download).

Its tokenizer (the tiny BPE of tests/tiny_models.py) has ``<think>`` and ``</think>`` as single, non-special
tokens (as Qwen3's), and a Qwen3-like chat template: ``enable_thinking: false`` closes the thinking in the
prompt (``<think>\\n\\n</think>\\n\\n``). The model is one Llama layer whose attention and MLP outputs are zero, so
the next-token logits depend on the last token only: one-hot embeddings (hidden size >= vocabulary) and an
``lm_head`` that maps each token to its scripted successor (logit sqrt(hidden) ~ 19, every other token 0):

    any token -> <think> -> "}" -> "{" -> "]" -> </think> -> "]" -> </think> -> ...

Greedy and unconstrained it thinks ``}{]`` (no JSON can start so) and then loops; constrained after
``</think>``, every scripted token is refused and greedy takes the lowest allowed id, so the answer is
whatever the grammar allows, deterministically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

THINK, END = "<think>", "</think>"
REASONING = "}{]"
"""What the model thinks (greedy) before ``</think>``."""

QWEN3_LIKE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)


def build_thinking_model(folder: Path) -> Path:
    import transformers
    from tiny_models import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder)
    tok.add_tokens([THINK, END])
    tok.chat_template = QWEN3_LIKE
    tok.save_pretrained(folder)
    V = len(tok)
    H = 64 * ((V + 63) // 64)
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=1, num_attention_heads=H // 64,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float32)
    ids = {s: tok.convert_tokens_to_ids(s) for s in (THINK, END, "}", "{", "]")}
    succ = {ids[THINK]: ids["}"], ids["}"]: ids["{"], ids["{"]: ids["]"], ids["]"]: ids[END], ids[END]: ids["]"]}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()
        model.model.embed_tokens.weight[:, :V] = torch.eye(V)
        for t in range(V):
            model.lm_head.weight[succ.get(t, ids[THINK]), t] = 1.0
    model.save_pretrained(folder, safe_serialization=True)
    with open(folder / "generation_config.json", "w") as f:
        json.dump({"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}, f)
    return folder
