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


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int] | None = None,
                        vocab_size: int | None = None) -> None:
    """``logits`` [R, V] (float32) masked in place by ``bitmask`` (host or device; moved to the logits' device).

    ``rows``: the constrained rows (ascending) when the caller knows them (the engine's
    :class:`~pagoda.structured_output.step_bitmask.StepBitmask`); every other row must be all-allowed. None: a
    host bitmask is scanned for them, a device bitmask is applied to every row. ``vocab_size``: the grammar's
    vocabulary (default: the bitmask's width); in a constrained row the logits columns past it are never allowed
    (a tokenizer smaller than the logits), whatever the bits past it say. Uses xgrammar's kernels (C++ on CPU,
    Triton/CUDA on GPU) when xgrammar is installed. On the CPU only the constrained rows are masked (O(V) each);
    on a device every row is (an all-allowed row is left as it is), so no row list is copied to it."""
    if rows is None and bitmask.device.type == "cpu":
        constrained = (bitmask != -1).any(dim=1)
        rows = constrained.nonzero().flatten().tolist()
    if rows is not None and not rows:
        return
    if bitmask.device != logits.device:
        bitmask = bitmask.to(logits.device, non_blocking=True)
    V = logits.shape[1]
    vocab = min(V, bitmask.shape[1] * 32 if vocab_size is None else vocab_size)
    every_row = rows is None or len(rows) == logits.shape[0]
    if vocab < V:  # xgrammar masks only the grammar's columns
        mask_columns_past(logits, vocab, None if every_row else rows)
    try:
        import xgrammar as xgr
    except ImportError:
        apply_token_bitmask_reference(logits[:, :vocab], bitmask)  # all rows: an all-allowed row is left as it is
        return
    indices = None if every_row or logits.device.type != "cpu" else rows
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab, indices=indices)


def mask_columns_past(logits: torch.Tensor, vocab: int, rows: list[int] | None) -> None:
    """Columns ``vocab:`` of ``rows`` (None: every row) to -inf. On a GPU the rows go over as a boolean row mask
    by :func:`pagoda.layers.sampler.to_device` (pinned: no wait for the kernels already queued) and are masked
    with ``masked_fill_``: assigning through an index tensor (``index_put_``) synchronises the device."""
    if rows is None:
        logits[:, vocab:] = float("-inf")
        return
    if logits.device.type != "cuda":
        logits[rows, vocab:] = float("-inf")
        return
    from pagoda.layers.sampler import to_device  # (sampler imports this module)

    picked = [False] * logits.shape[0]
    for r in rows:
        picked[r] = True
    mask = to_device(picked, logits.device, torch.bool)
    logits[:, vocab:].masked_fill_(mask[:, None], float("-inf"))
