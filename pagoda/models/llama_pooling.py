"""Pooling variants of the native Llama family (Llama, Mistral, Qwen2, Qwen3): decoder embedding models
(``--convert embed`` of a ``*ForCausalLM``, or a base ``*Model`` checkpoint such as a Qwen3-Embedding
export) and ``*ForSequenceClassification`` (a ``score`` linear on the pooled, usually last, token).

They are :class:`LlamaForCausalLM` without its LM head: the same causal forward over the paged KV cache
(a pooling request is one whole-prompt step, then finishes), returning the final normed hidden states.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from pagoda.layers.linear import Linear
from pagoda.models.llama import LlamaForCausalLM
from pagoda.models.weight_loading import load_weights
from pagoda.pooling.config import num_labels

DECODER_POOLING_ARCHS = {  # architecture -> the causal-LM architecture whose flags it shares
    "LlamaForSequenceClassification": "LlamaForCausalLM",
    "MistralForSequenceClassification": "MistralForCausalLM",
    "Qwen2ForSequenceClassification": "Qwen2ForCausalLM",
    "Qwen3ForSequenceClassification": "Qwen3ForCausalLM",
    "LlamaModel": "LlamaForCausalLM",
    "MistralModel": "MistralForCausalLM",
    "Qwen2Model": "Qwen2ForCausalLM",
    "Qwen3Model": "Qwen3ForCausalLM",
}


class LlamaForEmbedding(LlamaForCausalLM):
    """The decoder's final hidden states; any ``lm_head`` / ``score`` tensor in the checkpoint is skipped."""

    needs_kv_cache = True
    _skip: tuple[str, ...] = ("lm_head.", "score.")

    def __init__(self, hf_config: dict[str, Any], arch: str, dtype: torch.dtype, quant_config: Any = None) -> None:
        base = DECODER_POOLING_ARCHS.get(arch, arch)
        super().__init__({**hf_config, "tie_word_embeddings": True}, base, dtype, quant_config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        kept = ((n, t) for n, t in weights if not n.startswith(self._skip))
        return load_weights(self, kept, self.stacked_params)

    def compute_logits_raw(self, hidden: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a pooling model has no language-model head: it serves pooling requests only")

    def pack_for_cpu(self, batch_hint: int) -> int:
        from pagoda.layers.cpu_linear import pack_model_linears
        from pagoda.quantization.gguf import take_q8_head

        take_q8_head(self.embed_tokens, build=False)  # no LM head here
        return pack_model_linears(self.layers, batch_hint)


class LlamaForSequenceClassification(LlamaForEmbedding):
    """``score`` [num_labels, H] (no bias) applied to the pooled row."""

    _skip = ("lm_head.",)

    def __init__(self, hf_config: dict[str, Any], arch: str, dtype: torch.dtype, quant_config: Any = None) -> None:
        super().__init__(hf_config, arch, dtype, quant_config)
        self.score = Linear(self.shape.hidden_size, num_labels(hf_config), bias=False)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.score(pooled.to(self.score.weight.dtype))
