"""The Llama family in one module: Llama (incl. 3.1 rope scaling), Mistral, Qwen2 (qkv bias),
Qwen3 (q/k RMSNorm) and Phi-3/3.5/4-mini (checkpoints with qkv_proj/gate_up_proj already fused,
longrope, partial rotary). Differences are config flags, not subclasses. Sliding-window layers
(Mistral, Qwen2 with use_sliding_window, Phi-3) follow :mod:`pagoda.models.sliding_window`; which
projections carry biases (``attention_bias``, ``mlp_bias``, Qwen2's fixed q/k/v bias) :func:`linear_biases`.

Layout: q/k/v are fused into ``qkv_proj`` and gate/up into ``gate_up_proj`` (one matmul
each); ``load_weights`` maps HF checkpoint names onto them (``packed_modules_mapping``).
``forward`` returns hidden states for the flattened token batch; ``compute_logits`` is
applied only to the rows that need logits.

Precision: the unfused path (the CPU, and CUDA without Triton) carries the residual stream
(embeddings plus every attention/MLP output) in float32 whatever the model dtype; each RMSNorm
rounds its output to the model dtype for the matmuls. Rounding the stream to bf16 after every
add was the largest bf16 error source: on SmolLM2-135M it nearly doubled the mean KL to fp32 logits
(0.0016 vs 0.0009) and flipped greedy near-ties (e.g. a 0.08-nat top-2 gap, under one bf16
step of a logit near 25). The adds and norms cost about the same in float32 on the CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.attention.backend import AttentionBackend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.layers import parallel_linear as pl
from pagoda.layers.linear import Linear, UnquantizedLinearMethod
from pagoda.layers.norm import RMSNorm
from pagoda.layers.quantized_embedding import QuantizedEmbedding
from pagoda.layers.rotary import RotaryEmbedding, rope_max_position, rope_parameters
from pagoda.layers.vocab_parallel import VocabParallelEmbedding
from pagoda.models.sliding_window import layer_sliding_windows
from pagoda.models.weight_loading import load_weights, missing_weights
from pagoda.quantization.base import QuantizationConfig
from pagoda.quantization.w8a8 import fp8_rows_wanted

logger = logging.getLogger("pagoda")

FUSED_QK_NORM = True
"""False: Qwen3's q/k norms run as their own modules before the fused rotary kernel (the A/B switch for
benchmarks; read at call time, so at CUDA-graph capture)."""

FP8_ROWS = True
"""Fused layers whose next linear takes per-token FP8 activations (``--quantization fp8`` and FP8 checkpoints with
dynamic activations, on ``torch._scaled_mm``) get them quantized by the norm or SiLU·mul kernel itself
(:class:`~pagoda.quantization.w8a8.Fp8Rows`): one launch instead of two for the QKV, gate/up and down projections'
inputs. False: the linears quantize their inputs themselves (the A/B switch; read by ``enable_fused_kernels``)."""

if TYPE_CHECKING:
    from pagoda.distributed.parallel_state import TPGroup
    from pagoda.distributed.pipeline import PPStage
    from pagoda.layers.cpu_head_q8 import Q8Head


@dataclass(frozen=True)
class LlamaShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    hidden_act: str
    fused_checkpoint: bool = False  # the checkpoint stores qkv_proj / gate_up_proj whole (Phi-3)
    o_bias: bool = False  # o_proj has a bias (Llama, Qwen3, Gemma with attention_bias)
    mlp_bias: bool = False  # gate/up/down projections have biases (Llama's mlp_bias)

    @staticmethod
    def from_hf(cfg: dict[str, Any], arch: str) -> LlamaShape:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        qkv_bias, o_bias, mlp_bias = linear_biases(cfg, arch)
        return LlamaShape(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            qk_norm=arch == "Qwen3ForCausalLM",
            hidden_act=str(cfg.get("hidden_act", "silu")),
            fused_checkpoint=arch == "Phi3ForCausalLM",
            o_bias=o_bias,
            mlp_bias=mlp_bias,
        )


_FIXED_BIASES: dict[str, tuple[bool, bool, bool]] = {
    "Qwen2ForCausalLM": (True, False, False),
    "MistralForCausalLM": (False, False, False),
    "MixtralForCausalLM": (False, False, False),
    "Phi3ForCausalLM": (False, False, False),
}
"""Architectures whose HF modeling fixes the biases whatever config.json says: (q/k/v, o_proj, MLP)."""


def linear_biases(cfg: dict[str, Any], arch: str) -> tuple[bool, bool, bool]:
    """Which projections carry a bias, as the architecture's HF modeling decides: ``(qkv, o_proj, mlp)``.

    Fixed per architecture in :data:`_FIXED_BIASES`; Qwen2-MoE reads ``qkv_bias`` (default True; o_proj never);
    every other (Llama, Qwen3, Qwen3-MoE, Gemma 2/3) reads ``attention_bias`` for q/k/v *and* o_proj, and Llama
    alone reads ``mlp_bias`` for gate/up/down."""
    if arch in _FIXED_BIASES:
        return _FIXED_BIASES[arch]
    if arch == "Qwen2MoeForCausalLM":
        return bool(cfg.get("qkv_bias", True)), False, False
    attn = bool(cfg.get("attention_bias", False))
    return attn, attn, arch == "LlamaForCausalLM" and bool(cfg.get("mlp_bias", False))


def _method(qc: QuantizationConfig | None, prefix: str, shard_names: tuple[str, ...]):
    return qc.get_linear_method(prefix, shard_names) if qc is not None else None


def _act(name: str):
    if name in ("silu", "swish"):
        return F.silu
    if name in ("gelu", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh" if name.endswith("tanh") else "none")
    raise ValueError(f"config.json activation (hidden_act / hidden_activation) {name!r} is not supported by pagoda's "
                     f"native models (supported: silu, swish, gelu, gelu_pytorch_tanh); --model-impl transformers runs "
                     f"HF's own modules.")


def rope_for(hf_config: dict[str, Any], arch: str) -> dict[str, Any]:
    """The model's rope parameters; Phi-3 configs name longrope ``su`` or ``yarn`` (transformers maps both)."""
    if arch == "Phi3ForCausalLM":
        raw = rope_parameters(hf_config, check=False)
        if raw["rope_type"] == "yarn":
            return rope_parameters({**hf_config, "rope_scaling": {**raw, "rope_type": "longrope"}})
    return rope_parameters(hf_config)


class Attention(nn.Module):
    """Self-attention of one layer. ``sliding_window``/``logits_soft_cap``: this layer's window and
    soft-cap (None = off); ``scale``: the score scale (default head_dim ** -0.5); ``norm_cls``: the
    q/k norm's class when the shape has ``qk_norm``."""

    def __init__(self, s: LlamaShape, rope: RotaryEmbedding, layer_idx: int,
                 qc: QuantizationConfig | None = None, prefix: str = "", *, sliding_window: int | None = None,
                 logits_soft_cap: float | None = None, scale: float | None = None,
                 norm_cls: type[RMSNorm] = RMSNorm, tp: TPGroup | None = None) -> None:
        """``tp``: this rank's tensor-parallel group (heads split over ranks; None: one device)."""
        super().__init__()
        self.s = s
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = s.num_heads, s.num_kv_heads  # this rank's heads
        shards = ("qkv_proj",) if s.fused_checkpoint else ("q_proj", "k_proj", "v_proj")
        qkv_method = _method(qc, f"{prefix}.qkv_proj", shards)
        o_method = _method(qc, f"{prefix}.o_proj", ("o_proj",))
        if tp is not None and tp.world_size > 1:
            self.qkv_proj, self.o_proj = self._parallel_projections(s, tp, qkv_method, o_method, prefix)
        else:
            q_size, kv_size = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
            self.qkv_proj = Linear(s.hidden_size, q_size + 2 * kv_size, bias=s.qkv_bias, linear_method=qkv_method,
                                   output_sizes=None if s.fused_checkpoint else (q_size, kv_size, kv_size))
            self.o_proj = Linear(q_size, s.hidden_size, bias=s.o_bias, linear_method=o_method)
        self.q_size = self.num_heads * s.head_dim
        self.kv_size = self.num_kv_heads * s.head_dim
        if s.qk_norm:
            self.q_norm = norm_cls(s.head_dim, s.rms_norm_eps)
            self.k_norm = norm_cls(s.head_dim, s.rms_norm_eps)
        self.rope = rope
        self.scale = s.head_dim**-0.5 if scale is None else scale
        # Passed to the backend only when set, so backends without these features still serve other models.
        self.attn_kwargs: dict[str, Any] = {k: v for k, v in (("sliding_window", sliding_window),
                                                              ("logits_soft_cap", logits_soft_cap)) if v}
        self.fused = False
        self.cpu_native = False  # bf16 on the CPU: rotary by pagoda.layers.cpu_fused (set by enable_cpu_native_kernels)
        # Per-layer FP8 KV-cache scales (pagoda.attention.kv_quant): checkpoint tensors
        # self_attn.k_scale / v_scale when present, else 1.0; read as floats by the kernels.
        self.k_scale: torch.Tensor
        self.v_scale: torch.Tensor
        self.register_buffer("k_scale", torch.tensor(1.0, dtype=torch.float32))
        self.register_buffer("v_scale", torch.tensor(1.0, dtype=torch.float32))
        self.kv_scales = (1.0, 1.0)

    def _parallel_projections(self, s: LlamaShape, tp: TPGroup, qkv_method, o_method,
                              prefix: str) -> tuple[Linear, Linear]:
        """qkv_proj column-parallel by whole heads, o_proj row-parallel (layers/parallel_linear.py)."""
        heads, kv_heads, kv_first = pl.attention_heads(s.num_heads, s.num_kv_heads, tp)
        self.num_heads, self.num_kv_heads = heads, kv_heads
        d, q_full, kv_full = s.head_dim, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        q_r, kv_r = (tp.rank * heads * d, heads * d), (kv_first * d, kv_heads * d)
        if s.fused_checkpoint:  # one checkpoint tensor q | k | v: three ranges in it
            sizes: tuple[int, ...] = (q_full + 2 * kv_full,)
            ranges: tuple[pl.Ranges, ...] = ((q_r, (q_full + kv_r[0], kv_r[1]), (q_full + kv_full + kv_r[0], kv_r[1])),)
        else:
            sizes, ranges = (q_full, kv_full, kv_full), ((q_r,), (kv_r,), (kv_r,))
        qkv = pl.ColumnParallelLinear(s.hidden_size, sizes, tp, s.qkv_bias, qkv_method, ranges, f"{prefix}.qkv_proj")
        o = pl.RowParallelLinear(q_full, s.hidden_size, tp, s.o_bias, o_method, f"{prefix}.o_proj")
        return qkv, o

    def finish_kv_scales(self, prefix: str) -> None:
        """Read the loaded scale tensors into ``kv_scales`` (once, after loading: no device sync per step)."""
        scales = (float(self.k_scale), float(self.v_scale))
        for name, val in zip(("k_scale", "v_scale"), scales, strict=True):
            if not (math.isfinite(val) and val > 0.0):
                raise ValueError(f"Checkpoint tensor '{prefix}.{name}' must be a positive finite scale, got {val}.")
        self.kv_scales = scales

    def _fused_qk_norm_args(self, q: torch.Tensor) -> dict[str, Any]:
        """``q_norm`` / ``k_norm`` arguments for the fused rotary kernel, which then normalises the heads itself
        (one launch instead of three), or ``{}`` where the norm modules must run: not pagoda's plain RMSNorm
        (e.g. Gemma's ``1 + w``), or a weight dtype other than q's (RMSNorm would cast the weight first)."""
        qn, kn = self.q_norm, self.k_norm
        plain = type(qn) is RMSNorm and type(kn) is RMSNorm
        if not (FUSED_QK_NORM and plain and q.dtype == qn.weight.dtype == kn.weight.dtype):
            return {}
        return {"q_norm": (qn.weight, qn.eps), "k_norm": (kn.weight, kn.eps)}

    def forward(
        self,
        cos_sin: tuple[torch.Tensor, torch.Tensor] | None,
        positions: torch.Tensor,
        x: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        s = self.s
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, s.head_dim)
        k = k.view(-1, self.num_kv_heads, s.head_dim)
        v = v.view(-1, self.num_kv_heads, s.head_dim)
        fused_rope = self.fused and not self.rope.partial  # the fused rotary kernel rotates whole heads
        norm_args = self._fused_qk_norm_args(q) if fused_rope and s.qk_norm else {}
        if s.qk_norm and not norm_args:
            q = self.q_norm(q)
            k = self.k_norm(k)
        k_cache, v_cache = kv_cache
        ks, vs = self.kv_scales
        if fused_rope:
            from pagoda.layers.fused_kernels import rotary_inplace

            cos, sin = self.rope.cos, self.rope.sin
            if getattr(backend, "kv_layout", "NHD") != "HND":
                # (q/k norms,) rotary and the KV-cache write in one kernel (any NHD-shaped layout: it takes strides).
                rotary_inplace(q, k, cos, sin, positions, v, k_cache, v_cache, meta.slot_mapping, ks, vs,
                               **norm_args)
            else:
                rotary_inplace(q, k, cos, sin, positions, **norm_args)
                backend.write_kv(k, v, k_cache, v_cache, meta.slot_mapping, ks, vs)
        else:
            assert cos_sin is not None, "the unfused path needs the step's cos/sin"
            if self.cpu_native and not self.rope.partial:
                from pagoda.layers import cpu_fused

                q, k = cpu_fused.rope(q, k, *cos_sin)
            else:
                q, k = self.rope.rotate(cos_sin, q, k)
            backend.write_kv(k, v, k_cache, v_cache, meta.slot_mapping, ks, vs)
        o = backend.forward(q, k_cache, v_cache, meta, self.scale, ks, vs, **self.attn_kwargs)
        return self.o_proj(o.reshape(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, s: LlamaShape, qc: QuantizationConfig | None = None, prefix: str = "",
                 tp: TPGroup | None = None) -> None:
        """``tp``: gate_up_proj column-parallel, down_proj row-parallel (None: one device)."""
        super().__init__()
        inter = s.intermediate_size
        shards = ("gate_up_proj",) if s.fused_checkpoint else ("gate_proj", "up_proj")
        gu_method = _method(qc, f"{prefix}.gate_up_proj", shards)
        down_method = _method(qc, f"{prefix}.down_proj", ("down_proj",))
        self.gate_up_proj: Linear
        self.down_proj: Linear
        if tp is not None and tp.world_size > 1:
            (r,) = pl.even_ranges(inter, tp, f"{prefix} intermediate_size")
            sizes, ranges = ((2 * inter,), ((r, (inter + r[0], r[1])),)) if s.fused_checkpoint \
                else ((inter, inter), ((r,), (r,)))
            self.gate_up_proj = pl.ColumnParallelLinear(s.hidden_size, sizes, tp, s.mlp_bias, gu_method, ranges,
                                                        f"{prefix}.gate_up_proj")
            self.down_proj = pl.RowParallelLinear(inter, s.hidden_size, tp, s.mlp_bias, down_method,
                                                  f"{prefix}.down_proj")
            inter = r[1]
        else:
            self.gate_up_proj = Linear(s.hidden_size, 2 * inter, bias=s.mlp_bias, linear_method=gu_method,
                                       output_sizes=None if s.fused_checkpoint else (inter,) * 2)
            self.down_proj = Linear(inter, s.hidden_size, bias=s.mlp_bias, linear_method=down_method)
        self.inter = inter  # this rank's
        self.act = _act(s.hidden_act)
        self.silu = s.hidden_act in ("silu", "swish")

        self.fused = False
        self.fp8_rows_down = False  # fused: silu_and_mul quantizes down_proj's FP8 rows itself (FP8_ROWS)
        self.cpu_native = False  # bf16 SiLU on the CPU: silu * up by layers/cpu_fused (enable_cpu_native_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and self.silu and not self.fp8_rows_down and isinstance(x, torch.Tensor):
            h = self.gate_up_proj.silu_mul(x)  # the gate_up GEMV's own SiLU·mul store, where it has one
            if h is not None:  # (x may be FP8 rows a norm quantized: those go to the FP8 linear below)
                return self.down_proj(h)
        gu = self.gate_up_proj(x)
        if self.fused and self.silu:  # the fused kernel computes SiLU only; GELU MLPs take the torch ops below
            from pagoda.layers.fused_kernels import silu_and_mul

            return self.down_proj(silu_and_mul(gu, self.fp8_rows_down and fp8_rows_wanted(gu.shape[0])))
        if self.cpu_native and gu.dtype == torch.bfloat16:
            from pagoda.layers.cpu_fused import silu_mul

            return self.down_proj(silu_mul(gu, self.inter))
        g, u = gu.split(self.inter, dim=-1)
        return self.down_proj(self.act(g) * u)


class DecoderLayer(nn.Module):
    def __init__(self, s: LlamaShape, rope: RotaryEmbedding, idx: int, qc: QuantizationConfig | None = None,
                 mlp: nn.Module | None = None, sliding_window: int | None = None, tp: TPGroup | None = None) -> None:
        """``mlp``: the feed-forward block (default the dense :class:`MLP`; MoE models pass theirs);
        ``sliding_window``: this layer's attention window (None: full attention); ``tp``: tensor parallelism."""
        super().__init__()
        self.self_attn = Attention(s, rope, idx, qc, f"model.layers.{idx}.self_attn", sliding_window=sliding_window,
                                   tp=tp)
        self.mlp = mlp if mlp is not None else MLP(s, qc, f"model.layers.{idx}.mlp", tp)
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)

        self.fused = False
        # fused: the norms quantize qkv_proj's / gate_up_proj's FP8 rows themselves (FP8_ROWS, enable_fused_kernels)
        self.fp8_rows_attn = False
        self.fp8_rows_mlp = False
        self.cpu_native = False  # bf16 on the CPU: the norms by pagoda.layers.cpu_fused (enable_cpu_native_kernels)

    def forward(self, cos_sin, positions, h, residual, kv_cache, meta, backend):
        """Returns (h, residual); the layer's output is their sum (summed lazily when fused).

        Unfused, ``h`` is the float32 residual stream and ``residual`` stays None."""
        if not self.fused:
            if self.cpu_native and h.dtype == torch.float32:  # the float32 stream; each norm one native call
                from pagoda.layers.cpu_fused import add_rms_norm

                n1, n2 = self.input_layernorm, self.post_attention_layernorm
                a = self.self_attn(cos_sin, positions, add_rms_norm(h, None, n1.weight, n1.eps)[1], kv_cache, meta,
                                   backend)
                h, x = add_rms_norm(h, a, n2.weight, n2.eps)
                return h + self.mlp(x), None
            h = h + self.self_attn(cos_sin, positions, self.input_layernorm(h), kv_cache, meta, backend)
            return h + self.mlp(self.post_attention_layernorm(h)), None
        from pagoda.layers.fused_kernels import fused_add_rms_norm, rms_norm

        fp8 = (self.fp8_rows_attn or self.fp8_rows_mlp) and fp8_rows_wanted(h.shape[0])
        if residual is None:
            residual = h
            x = rms_norm(h, self.input_layernorm.weight, self.input_layernorm.eps, self.fp8_rows_attn and fp8)
        else:
            x, residual = fused_add_rms_norm(h, residual, self.input_layernorm.weight, self.input_layernorm.eps,
                                             self.fp8_rows_attn and fp8)
        h = self.self_attn(cos_sin, positions, x, kv_cache, meta, backend)
        x, residual = fused_add_rms_norm(h, residual, self.post_attention_layernorm.weight,
                                         self.post_attention_layernorm.eps, self.fp8_rows_mlp and fp8)
        return self.mlp(x), residual


def _pp_missing() -> nn.Module:
    from pagoda.distributed.pipeline import PPMissing

    return PPMissing()


class LlamaForCausalLM(nn.Module):
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    stacked_params = {shard: (fused, i) for fused, shards in packed_modules_mapping.items()
                      for i, shard in enumerate(shards)}
    tp: TPGroup | None = None  # tensor parallelism (set in __init__; subclasses that build their own layers: None)
    pp: PPStage | None = None  # pipeline parallelism (likewise)
    # EAGLE-3 (spec_decode/eagle_head.py): distinct layers whose input residual streams each forward concatenates,
    # in layer order, into ``aux_hidden`` [T, len * hidden] (under a CUDA graph: that graph's static output).
    aux_hidden_layers: tuple[int, ...] = ()
    aux_hidden: torch.Tensor | None = None
    # The tied Q8_0 table's codes for layers/cpu_head_q8.py (few rows; set by pack_for_cpu; subclasses inherit None).
    _lm_q8: Q8Head | None = None
    # models/cpu_decoder_stack.py: False until the first CPU step binds it, None where the model does not qualify.
    _cpu_stack: Any = False

    def __init__(self, hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                 quant_config: QuantizationConfig | None = None, tp: TPGroup | None = None,
                 pp: PPStage | None = None) -> None:
        """``quant_config``: how each linear layer stores and applies its weights (default unquantized;
        the method decides per layer, e.g. the LM head usually stays unquantized). ``tp``: this rank's
        tensor-parallel group (under pipeline parallelism: this stage's subgroup): attention heads and MLP split
        over the ranks, embedding and LM head over the vocabulary (layers/vocab_parallel.py). ``pp``: this rank's
        pipeline stage: only its decoder layers are built (the others are
        :class:`~pagoda.distributed.pipeline.PPMissing`), the embedding on the first, norm and head on the last."""
        super().__init__()
        s = self.model_shape(hf_config, arch)
        self.shape = s
        self.tp = tp if tp is not None and tp.world_size > 1 else None
        rope = RotaryEmbedding(s.head_dim, rope_max_position(hf_config), rope_for(hf_config, arch), dtype)
        windows = layer_sliding_windows(hf_config, arch, s.num_layers)
        self.embed_tokens = self.make_embedding(s, quant_config)
        self.pp = pp
        self.layers = nn.ModuleList([
            DecoderLayer(s, rope, i, quant_config, self.make_mlp(hf_config, s, i, quant_config), windows[i], self.tp)
            if pp is None or pp.has_layer(i) else _pp_missing()
            for i in range(s.num_layers)])
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        if not s.tie_word_embeddings:
            self.lm_head = self.make_lm_head(s, quant_config)
        if pp is not None:
            pp.prune(self, s.tie_word_embeddings)
        self.rope = rope
        self.fused = False
        self._lm_packed: torch.Tensor | None = None
        self._head_dense: torch.Tensor | None = None
        self._lm_bf16: torch.Tensor | None = None  # the head's bf16 weight for layers/cpu_bf16_head.py
        self._lm_dot: torch.Tensor | None = None  # the head's bf16 weight for layers/cpu_head_dot.py (few rows)
        self.final_norm_native = False  # bf16 CPU: the final norm by layers/cpu_fused (enable_cpu_native_kernels)

    @staticmethod
    def model_shape(hf_config: dict[str, Any], arch: str) -> LlamaShape:
        return LlamaShape.from_hf(hf_config, arch)

    def make_embedding(self, s: LlamaShape, qc: QuantizationConfig | None) -> nn.Module:
        """The token embedding: split over the vocabulary under tensor parallelism (layers/vocab_parallel.py),
        kept quantized when the method stores tables (GGUF), else ``nn.Embedding``."""
        emb_method = _method(qc, "model.embed_tokens", ("embed_tokens",)) \
            if qc is not None and qc.quantizes_embedding() else None
        if emb_method is not None:
            if self.tp is not None:
                raise ValueError(f"--tensor-parallel-size {self.tp.world_size}: a quantized token embedding "
                                 f"({qc.describe() if qc else ''}) does not split over ranks; use "
                                 f"--tensor-parallel-size 1.")
            return QuantizedEmbedding(s.vocab_size, s.hidden_size, emb_method)
        if self.tp is not None:
            from pagoda.layers.vocab_parallel import VocabParallelEmbedding

            return VocabParallelEmbedding(s.vocab_size, s.hidden_size, self.tp)
        return nn.Embedding(s.vocab_size, s.hidden_size)

    def make_lm_head(self, s: LlamaShape, qc: QuantizationConfig | None) -> Linear:
        """The untied LM head: split over the vocabulary under tensor parallelism when unquantized (a quantized
        head stays whole on every rank; rank 0 computes the logits)."""
        method = _method(qc, "lm_head", ("lm_head",))
        if self.tp is not None and (method is None or type(method) is UnquantizedLinearMethod):
            from pagoda.layers.vocab_parallel import ParallelLMHead

            return ParallelLMHead(s.vocab_size, s.hidden_size, self.tp)
        return Linear(s.hidden_size, s.vocab_size, bias=False, linear_method=method)

    def make_mlp(self, hf_config: dict[str, Any], s: LlamaShape, idx: int,
                 qc: QuantizationConfig | None) -> nn.Module | None:
        """Layer ``idx``'s feed-forward block; ``None``: the dense :class:`MLP` (subclasses override)."""
        return None

    # Shapes the KV cache needs.
    @property
    def num_layers(self) -> int:
        """Decoder layers of this rank's KV cache (its stage's, under pipeline parallelism)."""
        return self.shape.num_layers if self.pp is None else self.pp.end - self.pp.start

    @property
    def num_kv_heads(self) -> int:
        """KV heads of this rank's cache (all of them on one device)."""
        if self.tp is None:
            return self.shape.num_kv_heads
        return pl.attention_heads(self.shape.num_heads, self.shape.num_kv_heads, self.tp)[1]

    @property
    def head_dim(self) -> int:
        return self.shape.head_dim

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        if self.pp is not None:  # this stage's layers, hidden states from / to the neighbouring stages
            return self.pp.forward(self, input_ids, positions, kv_caches, meta, backend)
        h, residual = self.run_layers(self.embed(input_ids), None, positions, kv_caches, meta, backend)
        return self.final_norm(h, residual)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        # The float32 residual stream (module docstring); norms return the model dtype.
        return h if self.fused else h.float()

    def run_layers(self, h: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                   kv_caches: list[tuple[torch.Tensor, torch.Tensor]], meta: AttentionMetadata,
                   backend: AttentionBackend) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's decoder layers (all, or its pipeline stage's: ``kv_caches`` holds theirs only)."""
        if self._cpu_stack is not None and residual is None and not self.aux_hidden_layers and \
                h.device.type == "cpu":  # a small CPU step: every layer in one native call where it applies
            from pagoda.models import cpu_decoder_stack

            if self._cpu_stack is False:
                self._cpu_stack = cpu_decoder_stack.bind(self)
            if self._cpu_stack is not None:
                out = self._cpu_stack.run(h, positions, kv_caches, meta, backend)
                if out is not None:
                    return out, None
        cos_sin = None if self.fused and not self.rope.partial else self.rope.cos_sin(positions)
        start, end = (0, len(self.layers)) if self.pp is None else (self.pp.start, self.pp.end)
        aux: list[torch.Tensor] = []  # in layer order, as vLLM concatenates them
        for i, layer, kv in zip(range(start, end), self.layers[start:end], kv_caches, strict=True):
            if i in self.aux_hidden_layers:  # EAGLE-3 (one stage only: refused under PP): the stream entering i
                aux.append(h if residual is None else h + residual)
            h, residual = layer(cos_sin, positions, h, residual, kv, meta, backend)
        if aux:
            self.aux_hidden = torch.cat(aux, dim=-1)
        return h, residual

    def final_norm(self, h: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        if residual is None:
            if self.final_norm_native and h.dtype == torch.float32:  # the layers' native norm (one call)
                from pagoda.layers.cpu_fused import add_rms_norm

                return add_rms_norm(h, None, self.norm.weight, self.norm.eps)[1]
            return self.norm(h)
        from pagoda.layers.fused_kernels import fused_add_rms_norm

        return fused_add_rms_norm(h, residual, self.norm.weight, self.norm.eps)[0]

    def enable_fused_kernels(self) -> None:
        """Use the Triton elementwise kernels (CUDA): fused add+RMSNorm, SiLU-mul, rotary; with :data:`FP8_ROWS`,
        each norm or SiLU·mul whose only consumer is an FP8 linear that takes them quantizes its rows for it."""
        self.fused = True
        for m in self.modules():
            if hasattr(m, "fused"):
                m.fused = True  # type: ignore[assignment]  # torch types unknown attributes as Tensor | Module
        if not FP8_ROWS:
            return
        for layer in self.layers:
            if not isinstance(layer, DecoderLayer):
                continue
            attn, mlp = layer.self_attn, layer.mlp
            layer.fp8_rows_attn = type(attn) is Attention and attn.qkv_proj.takes_fp8_rows()
            if type(mlp) is MLP:
                layer.fp8_rows_mlp = mlp.gate_up_proj.takes_fp8_rows()
                mlp.fp8_rows_down = mlp.silu and mlp.down_proj.takes_fp8_rows()

    def enable_cpu_native_kernels(self) -> int:
        """bf16 on the CPU: layers whose norms are pagoda's plain RMSNorm in bf16 compute them (with the residual
        add), the rotary and (a dense SiLU MLP's) silu * up by :mod:`pagoda.layers.cpu_fused` (one call each instead
        of 2-9 torch ops). Returns how many layers switched (0 when the kernels are unavailable)."""
        from pagoda.layers import cpu_fused

        if self.fused or not cpu_fused.available():
            return 0
        norm = getattr(self, "norm", None)  # a pipeline stage without the last layer has none
        self.final_norm_native = type(norm) is RMSNorm and norm.weight.dtype == torch.bfloat16
        count = 0
        for layer in self.layers:
            norms = [getattr(layer, n, None) for n in ("input_layernorm", "post_attention_layernorm")]
            if isinstance(layer, DecoderLayer) and all(
                    type(n) is RMSNorm and n.weight.dtype == torch.bfloat16 for n in norms):
                layer.cpu_native = layer.self_attn.cpu_native = True
                if type(layer.mlp) is MLP and layer.mlp.silu:
                    layer.mlp.cpu_native = True
                count += 1
        return count

    def compute_logits_raw(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in the model dtype (float32 from the CPU's native heads)."""
        if self._lm_q8 is not None:
            out = self._lm_q8.head(hidden)
            if out is not None:
                return out
        if self._lm_dot is not None:
            from pagoda.layers import cpu_head_dot

            out = cpu_head_dot.head(hidden, self._lm_dot)
            if out is not None:
                return out
        if self._lm_packed is not None:
            from pagoda.layers.cpu_linear import packed_linear

            return packed_linear(hidden, self._lm_packed, None)
        if self._lm_bf16 is not None:
            from pagoda.layers import cpu_bf16_head

            out = cpu_bf16_head.head(hidden, self._lm_bf16)
            if out is not None:
                return out
        if self.shape.tie_word_embeddings:
            if isinstance(self.embed_tokens, QuantizedEmbedding | VocabParallelEmbedding):
                return self.embed_tokens.lm_head(hidden)
            table = self.embed_tokens.weight
            assert isinstance(table, torch.Tensor)
            return F.linear(hidden, table)
        return self.lm_head(hidden)

    def pack_for_cpu(self, batch_hint: int) -> int:
        """Prepack bf16 linear weights (and the LM head) for oneDNN; see layers/cpu_linear.py."""
        from pagoda.layers.cpu_linear import pack_int_weight_copies, pack_model_linears, pack_weight
        from pagoda.quantization.gguf import take_q8_head

        tied = self.shape.tie_word_embeddings
        embed = getattr(self, "embed_tokens", None)  # a pipeline stage may lack it
        if self.tp is not None or self.pp is not None:
            if embed is not None:
                take_q8_head(embed, build=False)
            return 0  # PackedLinear would drop the row-parallel all-reduce; a stage may lack the head
        if tied:  # a quantized table may be kept dense (quantization/gguf.py)
            w: torch.Tensor | None = getattr(self.embed_tokens, "weight", None)
        else:
            head = self.lm_head
            w = head.weight if type(head.linear_method) is UnquantizedLinearMethod else None
        self._lm_packed = pack_weight(w, batch_hint) if w is not None else None
        self._head_dense = w if self._lm_packed is not None else None  # for layers/logits.py (no copy: same tensor)
        # A tied Q8_0 table's codes (quantization/gguf.py) for a few rows' head, where larger batches run oneDNN's
        # bf16 head and refine its leading logits with the same codes (without oneDNN: one bf16 head for all).
        q8 = take_q8_head(self.embed_tokens, build=tied and self._lm_packed is not None)
        if q8 is not None:
            from pagoda.layers import cpu_head_q8

            self._lm_q8 = q8
            logger.info("CPU: the LM head runs the Q8_0 table's codes up to %d rows (+%.1f MiB of memory, float32 "
                        "logits)", cpu_head_q8.MAX_ROWS, q8.nbytes / 2**20)
        if w is not None and w.dtype == torch.bfloat16 and w.is_contiguous():
            from pagoda.layers import cpu_head_dot

            if cpu_head_dot.available():
                self._lm_dot = w
                logger.info("CPU: the LM head runs the bf16-dot kernel up to %d rows (float32 logits)",
                            cpu_head_dot.MAX_ROWS)
        if w is not None and self._lm_packed is None and w.dtype == torch.bfloat16:
            from pagoda.layers import cpu_bf16_head

            if cpu_bf16_head.available():  # oneDNN cannot prepack bf16 here (no native bf16): float32 logits
                self._lm_bf16 = w
                logger.info("CPU: the LM head runs the native bf16 kernel (float32 accumulation and logits)")
        if w is not None and self._lm_packed is not None and self.shape.tie_word_embeddings:
            logger.info("CPU: oneDNN copy of the tied LM head: +%.1f MiB of memory (the table stays for lookups)",
                        w.numel() * w.element_size() / 2**20)
        n = pack_model_linears(self.layers, batch_hint) + pack_int_weight_copies(self.layers, batch_hint)[0]
        if self._lm_packed is not None and not self.shape.tie_word_embeddings:
            del self.lm_head  # the packed copy replaces it
        return n + (self._lm_packed is not None)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in float32 (what the sampler and logprobs use); where the head's output is half precision (the
        CPU's prepacked head), each row's leading logits are recomputed in float32 (layers/logits.py)."""
        raw = self.compute_logits_raw(hidden)
        logits = raw.float()
        head_dense = getattr(self, "_head_dense", None)  # subclasses that build their own layers may lack it
        if head_dense is not None and raw.dtype != torch.float32:
            from pagoda.layers.logits import refine_top_logits

            refine_top_logits(logits, hidden, head_dense, softcap=getattr(self, "final_logit_softcap", None),
                              q8=self._lm_q8)
        return logits

    # ----------------------------------------------------------- weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy HF-named tensors into our (partly fused) parameters. Returns the keys loaded."""
        tied = self.shape.tie_word_embeddings
        pp = self.pp
        loaded = load_weights(self, ((n, t) for n, t in weights if not (tied and n == "lm_head.weight")
                                     and (pp is None or pp.owns_weight(n, tied))), self.stacked_params)
        for i, layer in enumerate(self.layers):
            if pp is not None and not pp.has_layer(i):
                continue
            attn: Attention = layer.self_attn  # type: ignore[assignment]  # nn.Module attributes type as Tensor | Module
            attn.finish_kv_scales(f"model.layers.{i}.self_attn")
        return loaded

    def missing_weights(self, loaded: set[str]) -> list[str]:
        return missing_weights(self, loaded)
