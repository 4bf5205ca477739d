"""Exact float32 values for each row's leading logits on the CPU half-precision path.

The LM head runs in bf16 (oneDNN accumulates in float32 but rounds its output to bf16). Near 20, one bf16
step is 0.125, so two candidate tokens a few hundredths apart come out tied and the argmax takes the
lower id: on the default model's "What is the capital of France?" the quantized run tied "The" with "L"
and answered in French. Recomputing the ``REFINE_TOP_K`` largest logits of each row in float32 (a
``k x hidden`` dot product per row, from the same weights) removes those ties where they decide the
greedy token and the reported top logprobs; the rest of the row keeps its bf16 values. (On a CPU without native
bf16 the head is :mod:`pagoda.layers.cpu_bf16_head`, and on one with AVX512-BF16 a step of up to 8 rows runs
:mod:`pagoda.layers.cpu_head_dot`, or :mod:`pagoda.layers.cpu_head_q8` for a Q8_0 GGUF table: float32 logits
already, nothing to refine.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pagoda.layers.cpu_head_q8 import Q8Head

REFINE_TOP_K = 8


def refine_top_logits(logits: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
                      k: int = REFINE_TOP_K, softcap: float | None = None, q8: Q8Head | None = None) -> torch.Tensor:
    """``logits`` [R, V] float32 (in place) with each row's ``k`` largest entries recomputed as
    ``hidden[r] · weight[v]`` in float32 (``hidden`` [R, H], ``weight`` [V, H], the head's dense table), then
    soft-capped as ``softcap * tanh(x / softcap)`` when ``softcap`` is set (the model's final logit soft-cap, which
    the bf16 logits went through). The dot products are those of the few-row head of the same table, the bits it
    gives the same entries in a batch of up to 8 rows: ``q8``'s (:mod:`pagoda.layers.cpu_head_q8`, the table's
    Q8_0 codes) where it is given and applies, else :mod:`pagoda.layers.cpu_head_dot`'s where it applies, else
    torch's."""
    if logits.numel() == 0:
        return logits
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices  # [R, k]
    from pagoda.layers import cpu_head_dot

    rows = torch.arange(top.shape[0]).repeat_interleave(top.shape[1])
    exact = None
    if logits.device.type == "cpu":
        exact = q8.entries(hidden, rows, top.reshape(-1)) if q8 is not None else None
        if exact is None:
            exact = cpu_head_dot.entries(hidden, weight, rows, top.reshape(-1))
    if exact is not None:
        exact = exact.view_as(top)
    else:
        exact = torch.einsum("rh,rkh->rk", hidden.float(), weight[top].float())
    if softcap:
        exact = torch.tanh(exact / softcap) * softcap
    return logits.scatter_(1, top, exact)
