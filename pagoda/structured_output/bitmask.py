"""Applying a packed token bitmask to logits (inside the step, on the logits' device).

``bitmask`` [R, ceil(V / 32)] int32: bit ``t % 32`` of word ``t // 32`` set when token ``t`` is
allowed (see :mod:`pagoda.structured_output.backend`). Disallowed logits become ``-inf``; columns
past the bitmask's width (a vocabulary padded beyond the tokenizer) are disallowed too.
"""

from __future__ import annotations

import torch

_SHIFTS: dict[torch.device, torch.Tensor] = {}


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The allowed-token mask [R, vocab_size] (bool) of a packed bitmask (the reference form)."""
    dev = bitmask.device
    if dev not in _SHIFTS:
        _SHIFTS[dev] = torch.arange(32, dtype=torch.int32, device=dev)
    bits = (bitmask.unsqueeze(-1) >> _SHIFTS[dev]) & 1
    allowed = bits.view(bitmask.shape[0], -1).bool()
    if allowed.shape[1] < vocab_size:
        pad = torch.zeros(bitmask.shape[0], vocab_size - allowed.shape[1], dtype=torch.bool, device=dev)
        allowed = torch.cat([allowed, pad], dim=1)
    return allowed[:, :vocab_size]


def apply_token_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Plain-torch form of :func:`apply_token_bitmask` (the test reference; any device)."""
    logits.masked_fill_(~unpack_bitmask(bitmask.to(logits.device), logits.shape[1]), float("-inf"))


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """``logits`` [R, V] (float32) masked in place by ``bitmask`` (host or device; moved to the logits' device).

    Uses xgrammar's kernels (C++ on CPU, Triton/CUDA on GPU) when xgrammar is installed. A host
    bitmask's all-allowed rows (unconstrained requests) are skipped: masking costs O(V) per row."""
    indices: list[int] | None = None
    if bitmask.device.type == "cpu":
        constrained = (bitmask != -1).any(dim=1)
        if not bool(constrained.any()):
            return
        if not bool(constrained.all()):
            indices = constrained.nonzero().flatten().tolist()
    if bitmask.device != logits.device:
        bitmask = bitmask.to(logits.device, non_blocking=True)
    try:
        import xgrammar as xgr
    except ImportError:
        apply_token_bitmask_reference(logits, bitmask)  # all rows: an all-allowed row is left as it is
        return
    V = logits.shape[1]
    width = bitmask.shape[1] * 32
    if width < V:  # xgrammar masks only the bitmask's columns
        logits[indices if indices is not None else slice(None), width:] = float("-inf")
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=min(V, width), indices=indices)
