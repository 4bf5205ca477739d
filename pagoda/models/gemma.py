"""Gemma 2 and Gemma 3 (text): the Llama layout with Gemma's differences, as transformers computes them.

* RMSNorm scales by ``1 + weight`` (checkpoints store the offset from 1), in float32;
* four norms per layer: input, post-attention (on the attention output, before the residual add),
  pre- and post-feed-forward;
* token embeddings times ``sqrt(hidden_size)``, that factor rounded to the model dtype first (as HF);
* GeGLU MLP (``hidden_activation``, gelu_pytorch_tanh);
* scores scaled by ``query_pre_attn_scalar ** -0.5`` instead of ``head_dim ** -0.5``;
* sliding-window layers interleaved with global ones (:mod:`pagoda.models.sliding_window`);
* Gemma 2: attention logit soft-cap (``attn_logit_softcapping``) and final logit soft-cap
  (``final_logit_softcapping``);
* Gemma 3: q/k norms, and sliding layers rotate with their own rope base (``rope_local_base_freq``,
  or the ``sliding_attention`` entry of ``rope_parameters``); final soft-cap when configured.
  transformers' Gemma 3 never applies ``attn_logit_softcapping``, so neither does pagoda;
* embeddings tied to the LM head (unless the config unties them).

Gemma3ForConditionalGeneration (multimodal) checkpoints are refused by the registry. Gemma runs the
unfused elementwise path on CUDA too (the Triton attention kernels still serve it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.layers.norm import RMSNorm
from pagoda.layers.rotary import RotaryEmbedding, rope_max_position, rope_parameters
from pagoda.models.llama import MLP, Attention, LlamaForCausalLM, LlamaShape
from pagoda.models.sliding_window import layer_sliding_windows
from pagoda.quantization.base import QuantizationConfig

if TYPE_CHECKING:
    from pagoda.distributed.parallel_state import TPGroup

GEMMA_ARCHS = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")


class GemmaRMSNorm(RMSNorm):
    """``x / rms(x) * (1 + weight)`` in float32, returned in the weight's (the model's) dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.weight.dtype
        return F.rms_norm(x.float(), (x.shape[-1],), 1.0 + self.weight.float(), self.eps).to(dtype)


def gemma_shape(cfg: dict[str, Any], arch: str) -> LlamaShape:
    if cfg.get("use_bidirectional_attention"):
        raise ValueError("Gemma use_bidirectional_attention (embedding models) is not supported; pagoda runs "
                         "causal language models.")
    s = LlamaShape.from_hf(cfg, arch)
    act = str(cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh")
    return LlamaShape(**{**s.__dict__, "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", True)),
                         "qk_norm": arch == "Gemma3ForCausalLM", "hidden_act": act})


def gemma_ropes(cfg: dict[str, Any], arch: str, head_dim: int, dtype: torch.dtype) -> dict[str, RotaryEmbedding]:
    """One rope per layer type: ``full_attention`` and ``sliding_attention`` (equal for Gemma 2)."""
    max_pos = rope_max_position(cfg)
    if arch == "Gemma2ForCausalLM":
        rope = RotaryEmbedding(head_dim, max_pos, rope_parameters(cfg), dtype)
        return {"full_attention": rope, "sliding_attention": rope}
    full = rope_parameters(cfg, "full_attention", default_theta=1_000_000.0)
    local_cfg = {k: v for k, v in cfg.items() if k not in ("rope_scaling", "rope_theta")}  # rope_scaling: global only
    local_cfg["rope_theta"] = cfg.get("rope_local_base_freq") or 10_000.0
    rp = cfg.get("rope_parameters")
    if not (isinstance(rp, dict) and isinstance(rp.get("sliding_attention"), dict)):
        local_cfg.pop("rope_parameters", None)
    local = rope_parameters(local_cfg, "sliding_attention")
    return {"full_attention": RotaryEmbedding(head_dim, max_pos, full, dtype),
            "sliding_attention": RotaryEmbedding(head_dim, max_pos, local, dtype)}


class GemmaDecoderLayer(nn.Module):
    def __init__(self, s: LlamaShape, rope: RotaryEmbedding, idx: int, qc: QuantizationConfig | None,
                 sliding_window: int | None, attn_kwargs: dict[str, Any], tp: TPGroup | None = None) -> None:
        super().__init__()
        self.self_attn = Attention(s, rope, idx, qc, f"model.layers.{idx}.self_attn", sliding_window=sliding_window,
                                   norm_cls=GemmaRMSNorm, tp=tp, **attn_kwargs)
        self.mlp = MLP(s, qc, f"model.layers.{idx}.mlp", tp)
        self.input_layernorm = GemmaRMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = GemmaRMSNorm(s.hidden_size, s.rms_norm_eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(s.hidden_size, s.rms_norm_eps)

    def forward(self, cos_sin, positions, h, kv_cache, meta, backend) -> torch.Tensor:
        """``h``: the float32 residual stream."""
        a = self.self_attn(cos_sin, positions, self.input_layernorm(h), kv_cache, meta, backend)
        h = h + self.post_attention_layernorm(a)
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class GemmaForCausalLM(LlamaForCausalLM):
    """Gemma2ForCausalLM and Gemma3ForCausalLM (module docstring). Reuses the Llama model's KV-cache
    shape properties, CPU prepacking and weight loading."""

    def __init__(self, hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                 quant_config: QuantizationConfig | None = None, tp: TPGroup | None = None) -> None:
        """``tp``: tensor parallelism, split as in :class:`LlamaForCausalLM`."""
        nn.Module.__init__(self)
        s = gemma_shape(hf_config, arch)
        self.shape = s
        self.tp = tp if tp is not None and tp.world_size > 1 else None
        self.final_logit_softcap: float | None = hf_config.get("final_logit_softcapping") or None
        attn_kwargs: dict[str, Any] = {"scale": float(hf_config.get("query_pre_attn_scalar") or s.head_dim) ** -0.5}
        if arch == "Gemma2ForCausalLM":
            attn_kwargs["logits_soft_cap"] = hf_config.get("attn_logit_softcapping") or None
        ropes = gemma_ropes(hf_config, arch, s.head_dim, dtype)
        windows = layer_sliding_windows(hf_config, arch, s.num_layers)
        self.layer_ropes = [ropes["full_attention" if w is None else "sliding_attention"] for w in windows]
        self.embed_tokens = self.make_embedding(s, quant_config)
        # HF multiplies by sqrt(hidden) rounded to the model dtype; a Python float of that value gives the same
        # product and, unlike a tensor made per step, can be captured in a CUDA graph.
        self.embed_scale = float(torch.tensor(s.hidden_size**0.5, dtype=dtype))
        self.layers = nn.ModuleList([GemmaDecoderLayer(s, self.layer_ropes[i], i, quant_config, windows[i], attn_kwargs,
                                                       self.tp) for i in range(s.num_layers)])
        self.norm: RMSNorm = GemmaRMSNorm(s.hidden_size, s.rms_norm_eps)
        if not s.tie_word_embeddings:
            self.lm_head = self.make_lm_head(s, quant_config)
        self.ropes: list[RotaryEmbedding] = list(dict.fromkeys(ropes.values()))  # one or two distinct tables
        self.rope = self.layer_ropes[0]
        self.fused = False
        self._lm_packed: torch.Tensor | None = None
        self._head_dense: torch.Tensor | None = None
        self._lm_bf16: torch.Tensor | None = None
        self._lm_dot: torch.Tensor | None = None

    def forward(self, input_ids, positions, kv_caches, meta, backend) -> torch.Tensor:
        h = self.embed_tokens(input_ids) * self.embed_scale
        h = h.float()  # the float32 residual stream (see models/llama.py)
        cos_sin = {id(r): r.cos_sin(positions) for r in self.ropes}
        for layer, rope, kv in zip(self.layers, self.layer_ropes, kv_caches, strict=True):
            h = layer(cos_sin[id(rope)], positions, h, kv, meta, backend)
        return self.norm(h)

    def enable_fused_kernels(self) -> None:
        """Gemma keeps the unfused elementwise path (its norms add 1 to the weight; the fused kernels do not)."""

    def compute_logits_raw(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in the model dtype, soft-capped (``c * tanh(x / c)``) when the config says so."""
        logits = super().compute_logits_raw(hidden)
        cap = self.final_logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap
