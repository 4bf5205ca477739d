"""BERT-family encoders (BERT, RoBERTa, XLM-R and the MiniLM / BGE / E5 / GTE models built on them), for
pooling: absolute position embeddings (RoBERTa's offset by ``padding_idx + 1``), token types, post-LN
layers with GELU, and bidirectional attention within each sequence of the flattened batch
(:mod:`pagoda.attention.encoder`; no KV cache, so ``needs_kv_cache`` is False).

``forward`` has the signature of every pagoda model (the KV caches and backend are unused) plus
``token_type_ids``, and returns the last hidden state ``[T, H]``. Sequence classifiers add ``classify``
(the head on the pooled CLS row): BERT's pooler (dense + tanh) then a linear classifier; RoBERTa's
``classifier.dense`` + tanh + ``classifier.out_proj``. q/k/v are fused into one ``qkv`` linear.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagoda.attention.encoder import EncoderPlan, encoder_attention, plan_encoder_attention, to_flat, to_grouped
from pagoda.attention.metadata import AttentionMetadata
from pagoda.layers.fused_linear import ACTIVATIONS, linear_act, linear_add
from pagoda.layers.linear import Linear
from pagoda.models.weight_loading import load_weights, missing_weights
from pagoda.pooling.config import num_labels

BERT_ARCHS = ("BertModel", "BertForSequenceClassification", "RobertaModel", "RobertaForSequenceClassification",
              "XLMRobertaModel", "XLMRobertaForSequenceClassification")


@dataclass(frozen=True)
class BertShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position: int
    type_vocab_size: int
    eps: float
    hidden_act: str
    position_offset: int  # RoBERTa / XLM-R: padding_idx + 1


def _act(name: str) -> str:
    if name not in ACTIVATIONS or name == "identity":
        raise ValueError(f"hidden_act {name!r} is not supported by the BERT encoder ({', '.join(ACTIVATIONS)})")
    return name


class BertLayer(nn.Module):
    def __init__(self, s: BertShape) -> None:
        super().__init__()
        h = s.hidden_size
        self.qkv = Linear(h, 3 * h, bias=True, output_sizes=(h, h, h))
        self.attn_out = Linear(h, h, bias=True)
        self.attn_norm = nn.LayerNorm(h, eps=s.eps)
        self.intermediate = Linear(h, s.intermediate_size, bias=True)
        self.out = Linear(s.intermediate_size, h, bias=True)
        self.out_norm = nn.LayerNorm(h, eps=s.eps)
        self.num_heads = s.num_heads
        self.scale = 1.0 / math.sqrt(h // s.num_heads)
        self.act = _act(s.hidden_act)

    def forward(self, h: torch.Tensor, plan: EncoderPlan) -> torch.Tensor:
        a = encoder_attention(linear_act(h, self.qkv, "identity"), plan, self.num_heads, self.scale)
        h = self.attn_norm(linear_add(a, self.attn_out, h))
        return self.out_norm(linear_add(linear_act(h, self.intermediate, self.act), self.out, h))


# HF module names -> ours (after the model prefix is dropped).
_RENAMES = (
    (".attention.self.", ".", ), (".attention.output.dense.", ".attn_out."), (".attention.output.LayerNorm.",
                                                                               ".attn_norm."),
    (".intermediate.dense.", ".intermediate."), (".output.dense.", ".out."), (".output.LayerNorm.", ".out_norm."),
)
_SKIP = ("embeddings.position_ids", "lm_head.", "cls.predictions", "cls.seq_relationship")


class BertModel(nn.Module):
    """An encoder for embeddings (no head). ``pooler`` weights in the checkpoint are not needed and skipped."""

    packed_modules_mapping = {"qkv": ["query", "key", "value"]}
    stacked_params = {"query": ("qkv", 0), "key": ("qkv", 1), "value": ("qkv", 2)}
    needs_kv_cache = False
    uses_token_type_ids = True

    def __init__(self, hf_config: dict[str, Any], arch: str, dtype: torch.dtype, quant_config: Any = None) -> None:
        super().__init__()
        if quant_config is not None:
            raise ValueError(f"{arch}: quantized encoder checkpoints are not supported")
        roberta = arch.startswith(("Roberta", "XLMRoberta"))
        s = BertShape(
            vocab_size=int(hf_config["vocab_size"]), hidden_size=int(hf_config["hidden_size"]),
            intermediate_size=int(hf_config["intermediate_size"]), num_layers=int(hf_config["num_hidden_layers"]),
            num_heads=int(hf_config["num_attention_heads"]),
            max_position=int(hf_config.get("max_position_embeddings", 512)),
            type_vocab_size=int(hf_config.get("type_vocab_size", 2)), eps=float(hf_config.get("layer_norm_eps", 1e-12)),
            hidden_act=str(hf_config.get("hidden_act", "gelu")),
            position_offset=int(hf_config.get("pad_token_id", 1)) + 1 if roberta else 0,
        )
        pe = hf_config.get("position_embedding_type", "absolute")
        if pe != "absolute":
            raise ValueError(f"{arch}: position_embedding_type {pe!r} is not supported (absolute only)")
        self.shape = s
        self.word_embeddings = nn.Embedding(s.vocab_size, s.hidden_size)
        self.position_embeddings = nn.Embedding(s.max_position, s.hidden_size)
        self.token_type_embeddings = nn.Embedding(max(s.type_vocab_size, 1), s.hidden_size)
        self.emb_norm = nn.LayerNorm(s.hidden_size, eps=s.eps)
        self.layers = nn.ModuleList([BertLayer(s) for _ in range(s.num_layers)])

    # What the engine asks every model (no KV cache is allocated for an encoder).
    num_layers = 0
    num_kv_heads = 1
    head_dim = 1

    @property
    def max_positions(self) -> int:
        """Longest sequence the position table holds (RoBERTa loses ``position_offset`` of it)."""
        return self.shape.max_position - self.shape.position_offset

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: Any, meta: AttentionMetadata,
                backend: Any, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        plan = plan_encoder_attention(meta.query_lens_cpu, meta.query_start_loc, self.emb_norm.weight.dtype)
        input_ids, positions = to_grouped(input_ids, plan), to_grouped(positions, plan)
        h = self.word_embeddings(input_ids)
        h += self.position_embeddings(positions + self.shape.position_offset)
        if token_type_ids is None:
            h += self.token_type_embeddings.weight[0]
        else:
            h += self.token_type_embeddings(to_grouped(token_type_ids, plan))
        h = self.emb_norm(h)
        for layer in self.layers:
            h = layer(h, plan)
        return to_flat(h, plan)  # the step's rows in their flat order (padding dropped)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("an encoder has no language-model head: it serves pooling requests only")

    # ----------------------------------------------------------- weights
    def _rename(self, name: str) -> str | None:
        for prefix in ("bert.", "roberta.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name.startswith(_SKIP) or (name.startswith("pooler.") and not hasattr(self, "pooler")):
            return None
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
        name = name.replace("embeddings.LayerNorm.", "emb_norm.")
        if name.startswith("embeddings."):
            name = name[len("embeddings."):]
        name = name.replace("encoder.layer.", "layers.")
        for a, b in _RENAMES:
            name = name.replace(a, b)
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        renamed = ((n2, t) for n, t in weights if (n2 := self._rename(n)) is not None)
        return load_weights(self, renamed, self.stacked_params, prefix="")

    def missing_weights(self, loaded: set[str]) -> list[str]:
        return missing_weights(self, loaded)


class BertForSequenceClassification(BertModel):
    """BERT with its pooler (dense + tanh on CLS) and a linear classifier; RoBERTa / XLM-R with their
    ``classifier.dense`` + tanh + ``classifier.out_proj`` head."""

    def __init__(self, hf_config: dict[str, Any], arch: str, dtype: torch.dtype, quant_config: Any = None) -> None:
        super().__init__(hf_config, arch, dtype, quant_config)
        h, n = self.shape.hidden_size, num_labels(hf_config)
        self.roberta_head = arch.startswith(("Roberta", "XLMRoberta"))
        if self.roberta_head:
            self.classifier = nn.Module()
            self.classifier.dense = Linear(h, h, bias=True)
            self.classifier.out_proj = Linear(h, n, bias=True)
        else:
            self.pooler = nn.Module()
            self.pooler.dense = Linear(h, h, bias=True)
            self.classifier = Linear(h, n, bias=True)

    def classify(self, cls_rows: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_labels] from the CLS rows [B, H]."""
        c = self.classifier
        if self.roberta_head:
            return c.out_proj(torch.tanh(c.dense(cls_rows)))  # type: ignore[operator]
        return c(torch.tanh(self.pooler.dense(cls_rows)))  # type: ignore[operator]
