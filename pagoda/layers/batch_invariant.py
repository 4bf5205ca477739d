"""Deterministic (batch-invariant) mode: ``--deterministic`` or ``VLLM_BATCH_INVARIANT=1``.

Invariant: a row's result never depends on the other rows of the step (how many, which requests,
how a prompt was chunked, whether its prefix came from the cache). Row-wise ops (RMSNorm, rotary,
SiLU, log-softmax, argmax with the first index on ties) already are; the ops that reduce along a
dimension whose tiling a kernel may pick per shape are made so here:

* Linears on the CPU: every dense GEMM is called with exactly :data:`ROW_TILE` rows (the step's rows
  cut into tiles, the last padded with zeros), so oneDNN always runs the same kernel; measured on
  torch 2.13 (bf16 and fp32, tests/test_deterministic.py checks it): at a fixed M a row's result
  does not depend on its position in the tile nor on the other rows, while across M it does (fp32 from
  M=2, bf16 from M=33 on one machine; on an AVX-512-BF16 AMD EPYC some bf16 weights from M=2, others not,
  so no start-up probe of a shape can vouch for every weight of it: session 9 dropped the probe that let
  "M-invariant" weights skip the padding). Integer-weight layers (``cpu_woq``) run every row through a
  bf16 oneDNN copy in those tiles when all copies fit :data:`DENSE_COPY_MAX_BYTES`, else through
  int4pack/int8pack, which compute each row alone (a GEMV per row, bitwise the same for every M, measured),
  unpadded; the default paths' switch by row count is off either way.
* Linears on CUDA: :func:`pagoda.layers.batch_invariant_matmul.matmul` (Triton, one tile config per
  weight, no split-K). Quantized GPU kernels (split-K tables) are refused.
* Attention: :mod:`pagoda.attention.deterministic` on the CPU; on CUDA the unified Triton kernel with one
  fixed tile config and no KV split (pagoda.attention.triton_backend).
* Tensor parallelism (the all-reduce order), MoE and the transformers fallback are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("pagoda")

ROW_TILE = 32
"""Rows of every dense CPU GEMM in deterministic mode (bf16 oneDNN is M-invariant up to 32 rows; fp32 only
at a fixed M)."""

FLAG = "--deterministic (VLLM_BATCH_INVARIANT=1)"


def check_supported(device: torch.device, tp: int, quantization: str | None, kv_cache_dtype: str) -> None:
    """Start-up checks that need no weights: raises ``ValueError`` naming the flag."""
    if tp > 1:
        raise ValueError(f"{FLAG} needs --tensor-parallel-size 1: the all-reduce of a row-parallel layer sums "
                         f"ranks in an order pagoda does not fix yet.")
    if device.type == "cuda" and quantization is not None:
        raise ValueError(f"{FLAG} is not supported with quantization ({quantization}) on CUDA: the quantized "
                         f"kernels pick split-K per batch size. Use an unquantized checkpoint or the CPU.")
    if device.type == "cuda" and kv_cache_dtype != "auto":
        raise ValueError(f"{FLAG} supports --kv-cache-dtype auto only on CUDA.")


def row_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int = ROW_TILE) -> torch.Tensor:
    """``fn(x)`` computed as ``fn`` of ``tile``-row slices, the last zero-padded: every call has the same
    shape, so each output row depends only on its own input row (given a row-independent kernel)."""
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    rows = x2.shape[0]
    if rows == 0:
        return fn(x)
    pad = -rows % tile
    if pad:
        x2 = torch.cat([x2, x2.new_zeros(pad, k)])
    outs = [fn(x2[i : i + tile]) for i in range(0, rows + pad, tile)]
    y = outs[0] if len(outs) == 1 else torch.cat(outs)
    return y[:rows].reshape(*lead, y.shape[-1])


class RowTiled(nn.Module):
    """Wraps a linear-like module so that it always sees :data:`ROW_TILE` rows."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return row_tiled(self.inner, x)


class CudaInvariantLinear(nn.Module):
    """An unquantized linear computed by the batch-invariant Triton matmul."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pagoda.layers.batch_invariant_matmul import linear

        return linear(x, self.weight, self.bias)


def _refuse_unsupported(model: nn.Module) -> None:
    from pagoda.layers.fused_moe import FusedMoE
    from pagoda.models.llama import LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM):
        raise ValueError(f"{FLAG} supports pagoda's own Llama-family models only, not {type(model).__name__}.")
    if any(isinstance(m, FusedMoE) for m in model.modules()):
        raise ValueError(f"{FLAG} does not support mixture-of-experts models yet (the expert sums are not "
                         f"ordered per row).")


def _has_int_weight(m: nn.Module) -> bool:
    from pagoda.quantization.int_weight import IntWeight

    return any(isinstance(c, IntWeight) for c in m.children())


def _plain_dense(m: nn.Module) -> bool:
    method = getattr(m, "linear_method", None)
    return bool(getattr(method, "plain_dense_weight", False)) and isinstance(getattr(m, "weight", None), torch.Tensor)


def _dense_linear_children(model: nn.Module, device: torch.device) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, child) of every dense linear: ``nn.Linear``, the CPU's ``PackedLinear``, pagoda's ``Linear``
    with the unquantized method, and on the CPU a quantized ``Linear`` that keeps a dense weight (a GGUF F16
    tensor: ``F.linear``; a quantized embedding is left alone, its LM-head use is tiled by :func:`_wrap_logits`)."""
    from pagoda.layers.cpu_linear import PackedLinear
    from pagoda.layers.linear import Linear, UnquantizedLinearMethod
    from pagoda.layers.quantized_embedding import QuantizedEmbedding

    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(parent, RowTiled) or isinstance(child, QuantizedEmbedding):
                continue
            unquantized = isinstance(child, Linear) and type(child.linear_method) is UnquantizedLinearMethod
            dense_quant = device.type == "cpu" and isinstance(child, Linear) and not unquantized \
                and not _has_int_weight(child) and _plain_dense(child)
            if isinstance(child, (nn.Linear, PackedLinear)) or unquantized or dense_quant:
                found.append((parent, name, child))
    return found


def _check_quantized(model: nn.Module, device: torch.device) -> None:
    """Every quantized linear must compute through an :class:`IntWeight` (row-independent CPU kernels) or a
    dense weight (tiled); anything else is refused."""
    from pagoda.layers.linear import Linear, UnquantizedLinearMethod

    for name, m in model.named_modules():
        if isinstance(m, Linear) and type(m.linear_method) is not UnquantizedLinearMethod:
            if device.type != "cpu" or not (_has_int_weight(m) or _plain_dense(m)):
                raise ValueError(f"{FLAG}: layer {name} uses {type(m.linear_method).__name__}, which has no "
                                 f"batch-invariant kernel on {device.type}.")


def make_batch_invariant(model: nn.Module, device: torch.device) -> int:
    """Switch ``model`` (after loading and CPU prepacking) to batch-invariant linears; returns how many layers
    were wrapped. Raises ``ValueError`` naming the flag for what cannot be made invariant."""
    from pagoda.quantization.int_weight import IntWeight

    _refuse_unsupported(model)
    _check_quantized(model, device)
    count = 0
    for parent, name, child in _dense_linear_children(model, device):
        new: nn.Module = (CudaInvariantLinear(child.weight, child.bias) if device.type == "cuda"  # type: ignore[arg-type]
                          else RowTiled(child))
        setattr(parent, name, new)
        count += 1
    if count and device.type == "cpu":
        logger.info("deterministic mode: %d CPU linears in tiles of %d rows", count, ROW_TILE)
    ints = [m for m in model.modules() if isinstance(m, IntWeight)]
    for w in ints:
        w.batch_invariant = True
        w.dense_packed = None
    if device.type == "cpu":
        _dense_int_copies(ints)
    _wrap_logits(model, device)
    return count


DENSE_COPY_MAX_BYTES = 1 << 30
"""CPU integer weights get bf16 oneDNN copies, used for every row, when all copies fit this many bytes; else
every row runs int4pack/int8pack, a GEMV per row (the default model's 1,792-row prefill: ~20 s instead of
~0.5 s, while decode steps run at the same speed either way)."""


def _dense_int_copies(ints: list[Any]) -> None:
    """One path for every row of a CPU integer weight: its bf16 copy in tiles of exactly ROW_TILE rows when the
    copies fit :data:`DENSE_COPY_MAX_BYTES`, else the per-row int kernels."""
    from pagoda.layers.cpu_linear import pack_weight

    ws = [w for w in ints if w.codes.device.type == "cpu" and w.dtype == torch.bfloat16 and w.layout != "plain"]
    nbytes = sum(2 * w.in_features * w.out_features for w in ws)
    if not ws or nbytes > DENSE_COPY_MAX_BYTES:
        if ws:
            logger.warning("deterministic mode: %d int-weight linears run the per-row int kernels for every step "
                           "(bf16 copies would take %.0f MiB > %.0f MiB): prefills are slow", len(ws),
                           nbytes / 2**20, DENSE_COPY_MAX_BYTES / 2**20)
        return
    for w in ws:
        packed = pack_weight(w.dequantize(torch.bfloat16), ROW_TILE)
        if packed is None:
            return  # no oneDNN: every weight keeps the per-row int kernels (copies made so far are unused)
        w.dense_packed = packed
    logger.info("deterministic mode: bf16 oneDNN copies of %d int-weight linears, used for every row (+%.1f MiB)",
                len(ws), nbytes / 2**20)


def _wrap_logits(model: Any, device: torch.device) -> None:
    """The LM head (packed, tied or a plain linear) computed row-invariantly: the instance's
    ``compute_logits_raw`` is replaced by a tiled (CPU) or Triton (CUDA) version of itself."""
    raw = model.compute_logits_raw
    tied = getattr(model.shape, "tie_word_embeddings", False)
    if device.type == "cuda" and tied and isinstance(getattr(model.embed_tokens, "weight", None), torch.Tensor):
        from pagoda.layers.batch_invariant_matmul import linear

        weight = model.embed_tokens.weight
        cap = getattr(model, "final_logit_softcap", None)

        def cuda_head(hidden: torch.Tensor) -> torch.Tensor:
            logits = linear(hidden, weight, None)
            return logits if not cap else torch.tanh(logits / cap) * cap

        model.compute_logits_raw = cuda_head
    elif device.type == "cpu":
        model.compute_logits_raw = lambda hidden: row_tiled(raw, hidden)


def int_weight_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A dequantized weight's product in deterministic mode (fixed-M tiles)."""
    return row_tiled(lambda t: F.linear(t, weight, bias), x)
