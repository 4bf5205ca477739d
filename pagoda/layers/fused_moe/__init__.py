"""Mixture-of-experts layer: top-k routing, the stacked expert weights, a fused Triton path
(CUDA) and a grouped PyTorch path (CPU). See :mod:`.layer`."""

from pagoda.layers.fused_moe.layer import FusedMoE
from pagoda.layers.fused_moe.routing import RoutingConfig, select_experts

__all__ = ["FusedMoE", "RoutingConfig", "select_experts"]
