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
from pagoda.pooling.config import FROM_TOKEN_IDS_KEY, from_token_classifier, num_labels

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
    """``score`` [num_labels, H] (no bias) applied to the pooled row.

    A classifier converted from LM-head token rows (config ``classifier_from_token``,
    :class:`pagoda.pooling.config.FromTokenClassifier`) is a causal-LM checkpoint with no ``score`` tensor: its
    ``score`` rows are built from the tokens' rows of ``lm_head.weight`` (of ``embed_tokens`` when the embeddings
    are tied) in float32, as vLLM builds them (``lm_head[true] - lm_head[false]`` for ``from_2_way_softmax``), and
    the rest of the LM head is never kept."""

    _skip = ("lm_head.",)

    def __init__(self, hf_config: dict[str, Any], arch: str, dtype: torch.dtype, quant_config: Any = None) -> None:
        super().__init__(hf_config, arch, dtype, quant_config)
        self.score = Linear(self.shape.hidden_size, num_labels(hf_config), bias=False)
        self._from_token = from_token_classifier(hf_config, arch, "classify")
        self._token_ids: list[int] = list(hf_config.get(FROM_TOKEN_IDS_KEY) or [])
        self._tied_head = bool(hf_config.get("tie_word_embeddings", False))
        if self._from_token is not None and len(self._token_ids) != len(self._from_token.tokens):
            raise ValueError(f"classifier_from_token {list(self._from_token.tokens)}: their vocabulary ids were not "
                             f"resolved at start-up (build the engine config with pagoda.pooling.setup.resolve_runner "
                             f"and use the hf_config it returns).")

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.score(pooled.to(self.score.weight.dtype))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if self._from_token is None:
            return super().load_weights(weights)
        rows: list[torch.Tensor] = []

        def keep_head_rows(ws: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
            for n, t in ws:
                if n == "lm_head.weight" and not self._tied_head:
                    rows.append(t[self._token_ids].float())
                elif n == "score.weight":
                    raise ValueError("classifier_from_token is set, but the checkpoint has its own score.weight "
                                     "(an already converted classifier): drop classifier_from_token / method / "
                                     "is_original_qwen3_reranker from --hf-overrides.")
                else:
                    yield n, t

        loaded = super().load_weights(keep_head_rows(weights))
        table = getattr(self.embed_tokens, "weight", None)
        if self._tied_head and isinstance(table, torch.Tensor):
            rows.append(table.detach()[self._token_ids].float())
        if not rows:
            src = "an unquantized token embedding (tied LM head)" if self._tied_head else "lm_head.weight"
            raise ValueError(f"classifier_from_token {list(self._from_token.tokens)}: the checkpoint has no {src} "
                             f"to take the tokens' rows from.")
        head = rows[-1]
        if self._from_token.method == "from_2_way_softmax":  # [false, true] -> one label: true - false
            head = head[1:2] - head[0:1]
        self.score.weight.data = head.to(self.score.weight.device)  # float32, as vLLM's score layer
        return loaded | {"score.weight"}
