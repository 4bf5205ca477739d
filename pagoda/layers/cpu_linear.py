"""Linear layers with oneDNN-prepacked weights for the CPU (bf16).

``F.linear`` hands oneDNN a plain ``[out, in]`` weight and it re-lays it out on every
call. Packing once (``torch.ops.mkldnn._reorder_linear_weight``) and calling
``_linear_pointwise`` measured on the 2-core CI machine, bf16: 12–25 % faster at 32 rows,
about 2× at 1 row (a GEMV), equal at prefill sizes; the LM head at 32 rows went from
8.6 to 6.3 ms. Used only for bf16 on the CPU: fp32 keeps ``F.linear`` so fp32 runs stay
bit-comparable with HF transformers. Falls back silently where the op is missing.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pagoda.layers.linear import Linear, UnquantizedLinearMethod

logger = logging.getLogger("pagoda")


def _available() -> bool:
    return hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise") and \
        torch.backends.mkldnn.is_available()


def pack_weight(w: torch.Tensor, batch_hint: int) -> torch.Tensor | None:
    if not _available() or w.device.type != "cpu" or w.dtype != torch.bfloat16:
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_hint)
    except RuntimeError:
        return None


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """Drop-in for an ``nn.Linear`` whose weight is prepacked (the original is released)."""

    def __init__(self, packed: torch.Tensor, bias: torch.Tensor | None, in_features: int, out_features: int):
        super().__init__()
        self.packed = packed
        self.bias = bias
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.packed, self.bias)


def pack_int_weight_copies(model: nn.Module, batch_hint: int) -> tuple[int, int]:
    """Give every bf16 CPU :class:`~pagoda.quantization.int_weight.IntWeight` under ``model`` a oneDNN-prepacked
    bf16 copy of its dequantized weight, used from ``cpu_woq.DENSE_MIN_M`` rows (int4pack is a GEMV per row:
    ~5x slower than the bf16 GEMM at 32 rows). Only when all copies together fit ``cpu_woq.DENSE_COPY_MAX_BYTES``
    (they are extra memory, logged here). Returns (copies, bytes)."""
    from pagoda.quantization.int_weight import IntWeight
    from pagoda.quantization.kernels import cpu_woq

    ws = [m for m in model.modules() if isinstance(m, IntWeight) and m.codes.device.type == "cpu"
          and m.dtype == torch.bfloat16 and m.layout != "plain"]
    nbytes = sum(2 * w.in_features * w.out_features for w in ws)
    if not ws or not _available():
        return 0, 0
    if nbytes > cpu_woq.DENSE_COPY_MAX_BYTES:
        logger.info("CPU: no bf16 copies of the %d int-weight linears (%.0f MiB > the %.0f MiB limit); steps of "
                    "many rows run the int kernels", len(ws), nbytes / 2**20, cpu_woq.DENSE_COPY_MAX_BYTES / 2**20)
        return 0, 0
    packed = [pack_weight(w.dequantize(torch.bfloat16), batch_hint) for w in ws]
    if any(p is None for p in packed):  # this oneDNN cannot prepack bf16 weights (e.g. on an AVX2-only CPU)
        logger.info("CPU: no bf16 copies of the %d int-weight linears (oneDNN cannot prepack bf16 weights here); "
                    "steps of many rows run the int kernels", len(ws))
        return 0, 0
    for w, p in zip(ws, packed, strict=True):
        w.dense_packed = p
    logger.info("CPU: bf16 oneDNN copies of %d int-weight linears for steps of >= %d rows: +%.1f MiB of memory",
                len(ws), cpu_woq.DENSE_MIN_M, nbytes / 2**20)
    return len(ws), nbytes


def pack_model_linears(model: nn.Module, batch_hint: int) -> int:
    """Replace every bf16 unquantized linear (``nn.Linear`` or :class:`pagoda.layers.linear.Linear`
    with :class:`UnquantizedLinearMethod`) under ``model`` with a :class:`PackedLinear`. Returns count."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            unquantized = not isinstance(child, Linear) or type(child.linear_method) is UnquantizedLinearMethod
            if isinstance(child, (nn.Linear, Linear)) and unquantized:
                packed = pack_weight(child.weight, batch_hint)
                if packed is None:
                    continue
                bias = child.bias.detach() if child.bias is not None else None
                setattr(parent, name, PackedLinear(packed, bias, child.in_features, child.out_features))
                count += 1
    return count
