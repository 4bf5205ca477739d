"""The experts of one MoE layer: stacked weights, routing, and the path that runs them.

Weights (vLLM's names): ``w13_weight`` [E, 2I, H] (each expert's gate rows, then its up rows)
and ``w2_weight`` [E, H, I] (down). Checkpoints name experts one by one
(``experts.N.w1/w3/w2`` in Mixtral, ``experts.N.gate_proj/up_proj/down_proj`` in Qwen) or,
as transformers 5 holds them in memory, fused 3-D (``experts.gate_up_proj`` [E, 2I, H],
``experts.down_proj`` [E, H, I]); :meth:`FusedMoE.load_expert` places either. Loaded keys are
``w13_weight#<e>.<0|1>`` and ``w2_weight#<e>`` so a missing expert tensor is named at start-up.

``forward`` takes the router logits: with ``fused`` (CUDA + Triton) the routing, alignment and
grouped GEMMs run as Triton kernels with no host sync (capturable in CUDA graphs), or for a few
(token, expert) pairs the routing and two GEMVs (:mod:`.small_moe`); otherwise the grouped
PyTorch path runs only the selected experts.

Tensor parallelism (vLLM's TP for fused MoE): every rank keeps every expert, with rows
``[rank * I/n, (rank + 1) * I/n)`` of the intermediate dim (of the gate and of the up half of
``w13``, the same columns of ``w2``); each rank's output is a partial sum, all-reduced in ``forward``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pagoda.layers.fused_moe.grouped import grouped_experts
from pagoda.layers.fused_moe.routing import RoutingConfig, select_experts
from pagoda.layers.linear import set_weight_attrs

if TYPE_CHECKING:
    from pagoda.distributed.parallel_state import TPGroup

# Per-expert checkpoint names -> (parameter, shard): 0 gate, 1 up (halves of w13), None for w2.
EXPERT_SHARDS: dict[str, tuple[str, int | None]] = {
    "w1": ("w13_weight", 0), "w3": ("w13_weight", 1), "w2": ("w2_weight", None),
    "gate_proj": ("w13_weight", 0), "up_proj": ("w13_weight", 1), "down_proj": ("w2_weight", None),
}


class FusedMoE(nn.Module):
    def __init__(self, routing: RoutingConfig, hidden_size: int, intermediate_size: int,
                 tp: TPGroup | None = None) -> None:
        """``intermediate_size``: the checkpoint's (all ranks'); ``tp``: tensor parallelism (module docstring)."""
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
        self.w13_weight = nn.Parameter(torch.empty(E, 2 * inter, H), requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(E, H, inter), requires_grad=False)
        set_weight_attrs(self.w13_weight, required=False)  # checked per expert by expected_keys()
        set_weight_attrs(self.w2_weight, required=False)
        self.fused = False

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        if self.fused:
            from pagoda.layers.fused_moe.triton_moe import fused_experts, fused_topk

            weights, ids = fused_topk(router_logits, self.routing)
            out = fused_experts(x.contiguous(), self.w13_weight, self.w2_weight, weights, ids)
        else:
            weights, ids = select_experts(router_logits, self.routing)
            out = grouped_experts(x, self.w13_weight, self.w2_weight, weights, ids)
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
    def load_expert(self, expert: int | None, shard_name: str, tensor: torch.Tensor) -> list[str]:
        """Copy one checkpoint tensor: a per-expert ``shard_name`` (a key of :data:`EXPERT_SHARDS`) for
        ``expert``, or with ``expert=None`` the fused 3-D ``gate_up_proj`` / ``down_proj``. Returns the
        loaded keys; raises ``ValueError`` on a shape mismatch."""
        inter = self.intermediate_size
        if expert is None:
            param = self.w13_weight if shard_name == "gate_up_proj" else self.w2_weight
            tensor = self._rank_part(tensor, 1, 2) if shard_name == "gate_up_proj" else self._rank_part(tensor, 2)
            _copy(param, tensor, shard_name)
            if shard_name == "gate_up_proj":
                return [f"w13_weight#{e}.{s}" for e in range(self.num_experts) for s in (0, 1)]
            return [f"w2_weight#{e}" for e in range(self.num_experts)]
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert {expert} is out of range (the config has {self.num_experts} experts)")
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
