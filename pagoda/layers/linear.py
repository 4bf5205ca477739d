"""Linear layers whose weights and matmul come from a swappable method (quantization's seam).

A model builds every linear layer through :class:`Linear`, which asks its
:class:`LinearMethod` to create the parameters (``create_weights``), to post-process them
once the checkpoint is in (``process_weights_after_loading``) and to run the product
(``apply``). :class:`UnquantizedLinearMethod` is a plain ``y = x Wᵀ + b`` with a ``weight``
``[out, in]`` and an optional ``bias`` (the same parameter names, order and arithmetic as
``nn.Linear``); a quantized method registers its own packed weights and scales instead.

Fused layers (``qkv_proj``, ``gate_up_proj``) have several ``output_sizes``; the checkpoint
holds one tensor per shard and :meth:`Linear.load_shard` places it. Where it goes is described
by attributes on the parameter (:func:`set_weight_attrs`), so one loader serves every method:

- ``output_dim``: the dimension that indexes output features (``None``: the parameter is the same
  for every shard, e.g. GPTQ's ``g_idx``; all shards must then carry equal values);
- ``pack_factor``: output features per element along ``output_dim`` (AWQ packs 8 int4 per int32);
- ``shard_indexed``: the parameter has one row per shard (per-tensor FP8 scales);
- ``group_shift``: the values are input-group numbers (GPTQ ``g_idx``) and each rank holds this many groups, so a
  row-parallel rank subtracts ``rank * group_shift`` from the checkpoint's (global) numbers;
- ``weight_loader``: a callable ``(param, tensor, shard_id)`` that replaces all of the above.

Tensor parallelism slices along the same ``output_dim`` / ``input_dim`` attributes
(:mod:`pagoda.layers.parallel_linear` overrides :meth:`Linear.tp_slice`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def set_weight_attrs(param: torch.Tensor, **attrs: Any) -> None:
    """Attach loading attributes (module docstring) to ``param``."""
    for k, v in attrs.items():
        setattr(param, k, v)


class LinearMethod:
    """How a :class:`Linear` stores its weights and computes its output."""

    plain_dense_weight = False
    """True when a layer of this method that keeps a ``weight`` parameter computes ``F.linear(x, weight, bias)``
    with it (no activation quantization): --deterministic may then run it in fixed-size row tiles."""

    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        """Register the layer's parameters (on the current default device and dtype). ``layer.output_sizes``
        gives the fused shards' sizes."""
        raise NotImplementedError

    def process_weights_after_loading(self, layer: Linear) -> None:
        """Called once after the checkpoint is loaded (repacking, transposes); default: nothing."""

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_silu_mul(self, layer: Linear, x: torch.Tensor) -> torch.Tensor | None:
        """``silu(gate) * up`` of :meth:`apply`'s output (gate columns ``[0, N/2)``, up the rest), equal to
        :func:`pagoda.layers.fused_kernels.silu_and_mul` of it, in one step where the method has one for ``x``'s
        shape; None (the default) where it has not: the caller runs :meth:`apply` and SiLU·mul apart."""
        return None

    def takes_fp8_rows(self, layer: Linear) -> bool:
        """Whether :meth:`apply` also takes :class:`~pagoda.quantization.w8a8.Fp8Rows` (rows its producer already
        quantized per token) wherever :func:`~pagoda.quantization.w8a8.fp8_rows_wanted` holds; default: no."""
        return False

    def init_dummy(self, layer: Linear, generator: torch.Generator) -> None:
        """Fill the parameters with random values of the right kind (``--load-format dummy``): floating ones
        uniform in ±0.02; a quantized method overrides this to give valid codes, scales and indices."""
        for p in layer.parameters(recurse=False):
            if not p.is_floating_point():
                raise NotImplementedError(f"{type(self).__name__} does not support --load-format dummy")
            p.uniform_(-0.02, 0.02, generator=generator)


class UnquantizedLinearMethod(LinearMethod):
    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        set_weight_attrs(weight, output_dim=0, input_dim=1)
        layer.register_parameter("weight", weight)
        if bias:
            b = nn.Parameter(torch.empty(out_features), requires_grad=False)
            set_weight_attrs(b, output_dim=0)
            layer.register_parameter("bias", b)
        else:
            layer.register_parameter("bias", None)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:  # a few rows of a measured shape: the GEMV (pagoda.layers.dense_gemv; Triton is optional)
            from pagoda.layers import dense_gemv

            rule = dense_gemv.gemv_rule(x, layer.weight)
            if rule is not None:
                return dense_gemv.dense_gemv(x, layer.weight, layer.bias, rule)
        return F.linear(x, layer.weight, layer.bias)


class Linear(nn.Module):
    """``y = x Wᵀ (+ b)``, stored and computed by ``linear_method`` (default: unquantized).

    ``output_sizes``: the sizes of the checkpoint tensors fused into this layer, in order
    (default: one shard of ``out_features``); they must sum to ``out_features``.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 linear_method: LinearMethod | None = None, output_sizes: Sequence[int] | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.output_sizes = tuple(output_sizes) if output_sizes is not None else (out_features,)
        if sum(self.output_sizes) != out_features:
            raise ValueError(f"output_sizes {self.output_sizes} do not sum to out_features={out_features}")
        self.linear_method = linear_method or UnquantizedLinearMethod()
        self.linear_method.create_weights(self, in_features, out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_method.apply(self, x)

    def silu_mul(self, x: torch.Tensor) -> torch.Tensor | None:
        """``silu(gate) * up`` of this gate-then-up layer's output in one step (:meth:`LinearMethod.apply_silu_mul`),
        or None: also while the module has forward hooks (LoRA's add to the output they see, which this step never
        forms)."""
        if self._forward_hooks or self._forward_pre_hooks or self.out_features % 2:
            return None
        return self.linear_method.apply_silu_mul(self, x)

    def takes_fp8_rows(self) -> bool:
        """See :meth:`LinearMethod.takes_fp8_rows`."""
        return self.linear_method.takes_fp8_rows(self)

    def load_shard(self, param_name: str, tensor: torch.Tensor, shard_id: int | None) -> None:
        """Copy checkpoint ``tensor`` into parameter ``param_name`` (shard ``shard_id`` of a fused layer, or
        the whole parameter when ``None``). Raises ``ValueError`` naming the parameter on a shape mismatch."""
        param = getattr(self, param_name)
        loader = getattr(param, "weight_loader", None)
        tensor = self.tp_slice(param_name, param, tensor, shard_id)
        with torch.no_grad():
            if loader is not None:
                loader(param, tensor, shard_id)
                return
            dst = self._shard_view(param_name, param, shard_id)
            if dst.shape != tensor.shape:
                shard = "" if shard_id is None else f" (shard {shard_id})"
                raise ValueError(f"shape mismatch for {param_name}{shard}: checkpoint {tuple(tensor.shape)} "
                                 f"vs model {tuple(dst.shape)}")
            if getattr(param, "output_dim", 0) is None and shard_id is not None:
                # Shared by every shard: the first shard loaded (in any order) sets it, the others must agree.
                seen: set[str] = self.__dict__.setdefault("_shared_params_loaded", set())
                if param_name in seen:
                    if not torch.equal(dst, tensor.to(dst.device, dst.dtype)):
                        raise ValueError(f"{param_name} differs between the checkpoint modules fused into one "
                                         f"layer (shard {shard_id}); pagoda needs them equal to fuse them.")
                    return
                seen.add(param_name)
            dst.copy_(tensor)

    def tp_slice(self, name: str, param: torch.Tensor, tensor: torch.Tensor, shard_id: int | None) -> torch.Tensor:
        """This rank's part of checkpoint ``tensor`` for ``param`` (unsharded layer: all of it)."""
        return tensor

    def _shard_view(self, name: str, param: torch.Tensor, shard_id: int | None) -> torch.Tensor:
        if shard_id is None:
            return param
        if getattr(param, "shard_indexed", False):
            return param[shard_id]
        output_dim = getattr(param, "output_dim", 0)
        if output_dim is None:
            return param
        pack = int(getattr(param, "pack_factor", 1))
        offset = sum(self.output_sizes[:shard_id])
        size = self.output_sizes[shard_id]
        if offset % pack or size % pack:
            raise ValueError(f"{name}: shard {shard_id} (offset {offset}, size {size}) is not a multiple of "
                             f"its packing factor {pack}")
        return param.narrow(output_dim, offset // pack, size // pack)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"method={type(self.linear_method).__name__}"


def process_weights_after_loading(model: nn.Module) -> None:
    """Let every :class:`Linear` under ``model`` finish its weights (after loading)."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.linear_method.process_weights_after_loading(m)
