"""The experts of one MoE layer: stacked weights, routing, and the path that runs them.

Weights (vLLM's names): ``w13_weight`` [E, 2I, H] (each expert's gate rows, then its up rows)
and ``w2_weight`` [E, H, I] (down). Checkpoints name experts one by one
(``experts.N.w1/w3/w2`` in Mixtral, ``experts.N.gate_proj/up_proj/down_proj`` in Qwen) or,
as transformers 5 holds them in memory, fused 3-D (``experts.gate_up_proj`` [E, 2I, H],
``experts.down_proj`` [E, H, I]); :meth:`FusedMoE.load_expert` places either. Loaded keys are
``w13_weight#<e>.<0|1>`` and ``w2_weight#<e>`` so a missing expert tensor is named at start-up.

Quantized experts (a quantization config whose method covers ``<prefix>.<e>.gate_proj``): the weights live in
:class:`~pagoda.layers.fused_moe.quantized.QuantizedExperts` instead of ``w13_weight``/``w2_weight`` and both
paths below dequantize in flight (the Triton kernels per weight tile, the grouped path per selected expert).

``forward`` takes the router logits: with ``fused`` (CUDA + Triton) the routing, alignment and
grouped GEMMs run as Triton kernels with no host sync (capturable in CUDA graphs), or for a few
(token, expert) pairs the routing and two GEMVs (:mod:`.small_moe`); otherwise the grouped
PyTorch path runs only the selected experts.

Tensor parallelism (vLLM's TP for fused MoE): every rank keeps every expert, with rows
``[rank * I/n, (rank + 1) * I/n)`` of the intermediate dim (of the gate and of the up half of
``w13``, the same columns of ``w2``); each rank's output is a partial sum, all-reduced in ``forward``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pagoda.layers.fused_moe.grouped import grouped_experts
from pagoda.layers.fused_moe.quantized import QuantizedExperts
from pagoda.layers.fused_moe.routing import RoutingConfig, select_experts
from pagoda.layers.linear import set_weight_attrs

if TYPE_CHECKING:
    from pagoda.distributed.parallel_state import TPGroup
    from pagoda.quantization.base import QuantizationConfig

# Per-expert checkpoint names -> (parameter, shard): 0 gate, 1 up (halves of w13), None for w2.
EXPERT_SHARDS: dict[str, tuple[str, int | None]] = {
    "w1": ("w13_weight", 0), "w3": ("w13_weight", 1), "w2": ("w2_weight", None),
    "gate_proj": ("w13_weight", 0), "up_proj": ("w13_weight", 1), "down_proj": ("w2_weight", None),
}


class FusedMoE(nn.Module):
    def __init__(self, routing: RoutingConfig, hidden_size: int, intermediate_size: int,
                 tp: TPGroup | None = None, quant_config: QuantizationConfig | None = None,
                 prefix: str = "experts", proj_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
                 ) -> None:
        """``intermediate_size``: the checkpoint's (all ranks'); ``tp``: tensor parallelism; ``quant_config`` and
        ``prefix`` (the checkpoint's ``model.layers.N.mlp.experts``): quantized experts (module docstring)."""
        super().__init__()
        self.routing = routing
        self.num_experts = routing.num_experts
        self.hidden_size = hidden_size
        self.tp = tp if tp is not None and tp.world_size > 1 else None
        self.full_intermediate_size = intermediate_size
        if self.tp is not None:
            n = self.tp.world_size
            if intermediate_size % n:
                raise ValueError(f"--tensor-parallel-size {n} does not divide the experts' intermediate size "
                                 f"(moe_intermediate_size {intermediate_size}).")
            intermediate_size //= n
        self.intermediate_size = intermediate_size  # this rank's
        self.inter_start = self.tp.rank * intermediate_size if self.tp is not None else 0
        E, H, inter = routing.num_experts, hidden_size, intermediate_size
        self.quant: QuantizedExperts | None = None
        if quant_config is not None and quant_config.get_linear_method(f"{prefix}.0.{proj_names[0]}") is not None:
            self.quant = QuantizedExperts(quant_config, prefix, E, H, inter, self.full_intermediate_size,
                                          self.inter_start, proj_names)
        else:
            self.w13_weight = nn.Parameter(torch.empty(E, 2 * inter, H), requires_grad=False)
            self.w2_weight = nn.Parameter(torch.empty(E, H, inter), requires_grad=False)
            set_weight_attrs(self.w13_weight, required=False)  # checked per expert by expected_keys()
            set_weight_attrs(self.w2_weight, required=False)
        self.fused = False

    def weights(self) -> tuple[Any, Any]:
        """``(w13, w2)``: the dense parameters, or the quantized experts' :class:`StackedWeight` pair."""
        if self.quant is not None:
            return self.quant.weight("w13"), self.quant.weight("w2")
        return self.w13_weight, self.w2_weight

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        w13, w2 = self.weights()
        if self.fused:
            from pagoda.layers.fused_moe.triton_moe import fused_experts, fused_topk

            weights, ids = fused_topk(router_logits, self.routing)
            out = fused_experts(x.contiguous(), w13, w2, weights, ids)
        else:
            weights, ids = select_experts(router_logits, self.routing)
            out = grouped_experts(x, w13, w2, weights, ids)
        return out if self.tp is None else self.tp.all_reduce(out)

    def _rank_part(self, tensor: torch.Tensor, dim: int, halves: int = 1) -> torch.Tensor:
        """This rank's rows of a checkpoint tensor along its intermediate ``dim`` (``halves``: gate | up fused)."""
        if self.tp is None:
            return tensor
        full, start, inter = self.full_intermediate_size, self.inter_start, self.intermediate_size
        if tensor.shape[dim] != halves * full:
            return tensor  # the shape check names the mismatch
        return torch.cat([tensor.narrow(dim, h * full + start, inter) for h in range(halves)], dim=dim)

    # ----------------------------------------------------------- loading
    def load_expert(self, expert: int | None, shard_name: str, tensor: torch.Tensor,
                    param_name: str = "weight") -> list[str]:
        """Copy one checkpoint tensor: a per-expert ``shard_name`` (a key of :data:`EXPERT_SHARDS`) for
        ``expert`` (its ``param_name``: ``weight``, or a quantized format's ``qweight``, ``weight_scale`` ...),
        or with ``expert=None`` the fused 3-D ``gate_up_proj`` / ``down_proj``. Returns the loaded keys (for
        quantized experts: once an expert's projection is complete); raises ``ValueError`` on a mismatch."""
        inter = self.intermediate_size
        if expert is not None and not 0 <= expert < self.num_experts:
            raise ValueError(f"expert {expert} is out of range (the config has {self.num_experts} experts)")
        if self.quant is not None:
            if expert is None:
                raise ValueError("fused 3-D expert tensors (gate_up_proj / down_proj) are not read for quantized "
                                 "experts; pagoda reads them per expert (experts.N.gate_proj.qweight ...).")
            _, shard = EXPERT_SHARDS[shard_name]
            proj = "down" if shard is None else ("gate", "up")[shard]
            return self.quant.load(expert, proj, param_name, tensor)
        if param_name != "weight":
            raise ValueError(f"{param_name!r}: a quantized expert tensor, but the quantization config does not "
                             f"quantize experts (unquantized experts load .weight only).")
        if expert is None:
            param = self.w13_weight if shard_name == "gate_up_proj" else self.w2_weight
            tensor = self._rank_part(tensor, 1, 2) if shard_name == "gate_up_proj" else self._rank_part(tensor, 2)
            _copy(param, tensor, shard_name)
            if shard_name == "gate_up_proj":
                return [f"w13_weight#{e}.{s}" for e in range(self.num_experts) for s in (0, 1)]
            return [f"w2_weight#{e}" for e in range(self.num_experts)]
        pname, shard = EXPERT_SHARDS[shard_name]
        tensor = self._rank_part(tensor, 0 if shard is not None else 1)
        dst = getattr(self, pname)[expert]
        if shard is not None:
            dst = dst.narrow(0, shard * inter, inter)
        _copy(dst, tensor, shard_name)
        return [f"{pname}#{expert}" + ("" if shard is None else f".{shard}")]

    def expected_keys(self) -> dict[str, str]:
        """Loaded key -> the per-expert checkpoint name suffix it comes from (for error messages)."""
        keys = {}
        for e in range(self.num_experts):
            keys[f"w13_weight#{e}.0"] = f"experts.{e}.gate_proj (w1)"
            keys[f"w13_weight#{e}.1"] = f"experts.{e}.up_proj (w3)"
            keys[f"w2_weight#{e}"] = f"experts.{e}.down_proj (w2)"
        return keys

    def extra_repr(self) -> str:
        r = self.routing
        return f"experts={r.num_experts}, top_k={r.top_k}, hidden={self.hidden_size}, inter={self.intermediate_size}"


def _copy(dst: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if dst.shape != tensor.shape:
        raise ValueError(f"shape mismatch for {name}: checkpoint {tuple(tensor.shape)} vs model {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(tensor)
