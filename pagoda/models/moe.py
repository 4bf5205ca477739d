"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE (shared expert) and Qwen3-MoE (q/k norm).

They are the Llama family (models/llama.py: attention, norms, rope, the float32 residual stream
on the CPU, the fused kernels on CUDA) with the dense MLP of some or all layers replaced by a
:class:`SparseMoeBlock`: a router ``gate`` [E, H] in the model dtype, top-k routing as HF
computes it (layers/fused_moe/routing.py), the experts (:class:`~pagoda.layers.fused_moe.FusedMoE`),
and for Qwen2-MoE a dense ``shared_expert`` scaled by ``sigmoid(shared_expert_gate(x))``.

Which layers are sparse (Qwen): layer ``i`` unless ``i`` is in ``mlp_only_layers`` or
``(i + 1) % decoder_sparse_step != 0``; the others keep a dense MLP of ``intermediate_size``.
Mixtral's checkpoints name the block ``block_sparse_moe`` (read here as ``mlp``).

Quantized checkpoints: attention and shared experts take the config's linear methods as in Llama; the
experts read the same formats per expert (layers/fused_moe/quantized.py); the router stays unquantized.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pagoda.layers.fused_moe import FusedMoE, RoutingConfig
from pagoda.layers.linear import Linear
from pagoda.models.llama import MLP, LlamaForCausalLM, LlamaShape
from pagoda.quantization.base import QuantizationConfig

if TYPE_CHECKING:
    from pagoda.distributed.parallel_state import TPGroup

_EXPERT = re.compile(r"^model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\."
                     r"(?:(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.(\w+)|(gate_up_proj|down_proj))$")


# transformers writes either name (Qwen3MoeConfig 5.x saves num_local_experts; hub Qwen configs say num_experts).
_OTHER_KEY = {"num_experts": "num_local_experts", "num_local_experts": "num_experts"}


def _cfg(cfg: dict[str, Any], key: str, arch: str) -> Any:
    if cfg.get(key) is None:
        raise ValueError(f"{arch}: config.json lacks {key!r}, which this architecture needs.")
    return cfg[key]


class SparseMoeBlock(nn.Module):
    def __init__(self, s: LlamaShape, routing: RoutingConfig, moe_intermediate: int, shared_intermediate: int,
                 qc: QuantizationConfig | None, prefix: str, tp: TPGroup | None = None,
                 expert_prefix: str = "", proj_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
                 ) -> None:
        """``tp``: experts and shared expert split along their intermediate dim (router replicated);
        ``expert_prefix`` / ``proj_names``: the experts' checkpoint names (for the quantization config)."""
        super().__init__()
        self.gate = Linear(s.hidden_size, routing.num_experts, bias=False)  # the router: never quantized
        self.experts = FusedMoE(routing, s.hidden_size, moe_intermediate, tp, qc, expert_prefix or f"{prefix}.experts",
                                proj_names)
        self.shared_expert: MLP | None = None
        if shared_intermediate:
            self.shared_expert = MLP(dataclasses.replace(s, intermediate_size=shared_intermediate), qc,
                                     f"{prefix}.shared_expert", tp)
            self.shared_expert_gate = Linear(s.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x, self.gate(x))
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out


class _MoeForCausalLM(LlamaForCausalLM):
    """A Llama-family model whose sparse layers' MLP is a :class:`SparseMoeBlock` (module docstring)."""

    num_experts_key = "num_experts"
    always_norm_topk = False  # Mixtral renormalises the top-k weights whatever the config says
    cast_weights = True  # Qwen rounds routing weights to the model dtype; Mixtral keeps float32
    has_shared_expert = False
    checkpoint_block = "mlp"  # the block's name in checkpoints
    expert_names = ("gate_proj", "up_proj", "down_proj")  # the experts' projections' names in checkpoints

    def __init__(self, hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                 quant_config: QuantizationConfig | None = None, tp: TPGroup | None = None) -> None:
        if str(hf_config.get("hidden_act", "silu")) not in ("silu", "swish"):
            raise ValueError(f"{arch}: hidden_act {hf_config.get('hidden_act')!r} is not supported for experts (silu)")
        self.arch = arch
        super().__init__(hf_config, arch, dtype, quant_config, tp)

    def routing(self, cfg: dict[str, Any]) -> RoutingConfig:
        return RoutingConfig(
            num_experts=int(_cfg(cfg, self.num_experts_key if self.num_experts_key in cfg else _OTHER_KEY[
                self.num_experts_key], self.arch)),
            top_k=int(_cfg(cfg, "num_experts_per_tok", self.arch)),
            norm_topk_prob=self.always_norm_topk or bool(cfg.get("norm_topk_prob", False)),
            cast_weights=self.cast_weights,
        )

    def is_sparse(self, cfg: dict[str, Any], idx: int) -> bool:
        step = int(cfg.get("decoder_sparse_step") or 1)
        return idx not in (cfg.get("mlp_only_layers") or []) and (idx + 1) % step == 0

    def make_mlp(self, hf_config: dict[str, Any], s: LlamaShape, idx: int,
                 qc: QuantizationConfig | None) -> nn.Module | None:
        routing = self.routing(hf_config)
        if routing.num_experts == 0 or not self.is_sparse(hf_config, idx):
            return None
        inter = int(hf_config.get("moe_intermediate_size") or s.intermediate_size)
        shared = int(_cfg(hf_config, "shared_expert_intermediate_size", self.arch)) if self.has_shared_expert else 0
        return SparseMoeBlock(s, routing, inter, shared, qc, f"model.layers.{idx}.mlp", self.tp,
                              f"model.layers.{idx}.{self.checkpoint_block}.experts", self.expert_names)

    # ----------------------------------------------------------- weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Expert tensors go to their layer's :class:`FusedMoE`; the rest to the Llama loader."""
        loaded: set[str] = set()

        def others() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                m = _EXPERT.match(name)
                if m is None:
                    yield name.replace(".block_sparse_moe.", ".mlp."), tensor
                    continue
                layer, expert, shard, param_name, fused = m.groups()
                block = self.layers[int(layer)].mlp if int(layer) < len(self.layers) else None
                if not isinstance(block, SparseMoeBlock):
                    raise ValueError(f"Checkpoint tensor {name!r} has no place in {type(self).__name__} "
                                     f"(layer {layer} is not a sparse MoE layer).")
                try:
                    keys = block.experts.load_expert(None if fused else int(expert), shard or fused, tensor,
                                                     param_name or "weight")
                except ValueError as exc:
                    raise ValueError(f"Checkpoint tensor {name!r}: {exc}") from exc
                loaded.update(f"layers.{layer}.mlp.experts.{k}" for k in keys)

        loaded |= super().load_weights(others())
        for i, layer in enumerate(self.layers):  # quantized experts: convert those whose tensors are all in
            if isinstance(layer.mlp, SparseMoeBlock) and layer.mlp.experts.quant is not None:
                loaded.update(f"layers.{i}.mlp.experts.{k}" for k in layer.mlp.experts.quant.finish_loading())
        return loaded

    def missing_weights(self, loaded: set[str]) -> list[str]:
        """Also names each missing expert tensor as the checkpoint would (``model.layers.3.mlp.experts.5.up_proj``)."""
        missing = super().missing_weights(loaded)
        for i, layer in enumerate(self.layers):
            if isinstance(layer.mlp, SparseMoeBlock):
                for key, what in layer.mlp.experts.expected_keys().items():
                    if f"layers.{i}.mlp.experts.{key}" not in loaded:
                        missing.append(f"model.layers.{i}.{self.checkpoint_block}.{what}")
                if layer.mlp.experts.quant is not None:  # partly loaded: name the tensors they lack
                    missing += layer.mlp.experts.quant.pending()
        return missing


class MixtralForCausalLM(_MoeForCausalLM):
    num_experts_key = "num_local_experts"
    always_norm_topk = True
    cast_weights = False
    checkpoint_block = "block_sparse_moe"
    expert_names = ("w1", "w3", "w2")

    def is_sparse(self, cfg: dict[str, Any], idx: int) -> bool:
        return True


class Qwen2MoeForCausalLM(_MoeForCausalLM):
    has_shared_expert = True  # q/k/v biases per config.json qkv_bias: models/llama.py linear_biases


class Qwen3MoeForCausalLM(_MoeForCausalLM):
    @staticmethod
    def model_shape(hf_config: dict[str, Any], arch: str) -> LlamaShape:
        return dataclasses.replace(LlamaShape.from_hf(hf_config, arch), qk_norm=True)


MOE_MODELS: dict[str, type[_MoeForCausalLM]] = {
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
}
