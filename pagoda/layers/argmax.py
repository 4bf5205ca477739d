"""Row-wise argmax of logits: on CUDA by :mod:`pagoda.layers.argmax_triton` (two Triton launches), elsewhere torch.

Why: torch's ``argmax(-1)`` over one 128k-wide row runs as one reduction kernel that leaves most SMs idle (36 µs of
a 4.97 ms Llama-3-8B batch-1 decode step on an H200, RESULTS.md session 3), where the 256 KB it reads take ~0.1 µs
at the memory bandwidth.

Invariant: the same index as ``torch.argmax(logits, -1)``: the first maximal value of a row, where a NaN counts
as larger than any number (the first NaN wins).
"""

from __future__ import annotations

import torch

ENABLED = True
"""False: :func:`argmax_rows` is ``torch.argmax`` (the A/B switch of the benchmarks; read at call time)."""


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)``, int64: 2-D CUDA float rows with unit stride along the vocabulary take the Triton
    kernels; anything else (and :data:`ENABLED` off) goes to torch."""
    if (not ENABLED or not logits.is_cuda or logits.dim() != 2 or logits.stride(-1) != 1
            or logits.dtype not in (torch.bfloat16, torch.float16, torch.float32)
            or not 0 < logits.shape[1] < 2**31 or logits.shape[0] == 0):
        return logits.argmax(dim=-1)
    from pagoda.layers.argmax_triton import argmax_triton

    return argmax_triton(logits)
