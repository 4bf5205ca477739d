"""The Triton kernels of :func:`pagoda.layers.argmax.argmax_rows` (CUDA; CPU under ``TRITON_INTERPRET=1``).

Every ``BLOCK`` columns of every row reduce to a partial ``(nan, value, index)`` in one program, then one program
per row reduces its partials. Each step compares exactly (no arithmetic on the values), so the order of the
reduction cannot change the answer: the first maximal value of a row, a NaN counting as larger than any number.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.layers.pdl import launch_kwargs, pdl_launch_dependents, pdl_wait

BLOCK = 4096
"""Columns per first-stage program."""


@triton.jit
def _best(nan, val, idx, valid):
    """The winner of ``(nan, val, idx)`` candidates among ``valid``: NaN first, then the largest value, then the
    smallest index. Returns (nan, val, idx) of the winner (idx: int32 max where nothing is valid)."""
    nan_w = tl.max(tl.where(valid, nan, 0), axis=0)
    cand = valid & (nan == nan_w)
    val_w = tl.max(tl.where(cand, val, float("-inf")), axis=0)
    cand = cand & ((val == val_w) | (nan_w == 1))
    idx_w = tl.min(tl.where(cand, idx, 2147483647), axis=0)
    return nan_w, val_w, idx_w


@triton.jit
def _argmax_partial_kernel(x_ptr, nan_ptr, val_ptr, idx_ptr, V, stride_x, num_blocks,
                           BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    valid = offs < V
    x = tl.load(x_ptr + row.to(tl.int64) * stride_x + offs, mask=valid, other=float("-inf")).to(tl.float32)
    isnan = (x != x).to(tl.int32)
    val = tl.where(isnan == 1, float("-inf"), x)
    nan_w, val_w, idx_w = _best(isnan, val, offs, valid)
    out = row * num_blocks + blk
    tl.store(nan_ptr + out, nan_w)
    tl.store(val_ptr + out, val_w)
    tl.store(idx_ptr + out, idx_w)


@triton.jit
def _argmax_final_kernel(nan_ptr, val_ptr, idx_ptr, out_ptr, num_blocks, BLOCK_P: tl.constexpr,
                         USE_PDL: tl.constexpr):
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    p = tl.arange(0, BLOCK_P)
    valid = p < num_blocks
    base = row * num_blocks + p
    nan = tl.load(nan_ptr + base, mask=valid, other=0)
    val = tl.load(val_ptr + base, mask=valid, other=float("-inf"))
    idx = tl.load(idx_ptr + base, mask=valid, other=0)
    _, _, idx_w = _best(nan, val, idx, valid)
    tl.store(out_ptr + row, idx_w.to(tl.int64))


def argmax_triton(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)`` (int64 [rows]) of 2-D float rows with unit stride along the vocabulary."""
    rows, vocab = logits.shape
    nb = triton.cdiv(vocab, BLOCK)
    dev = logits.device
    nan = torch.empty(rows * nb, dtype=torch.int32, device=dev)
    val = torch.empty(rows * nb, dtype=torch.float32, device=dev)
    idx = torch.empty(rows * nb, dtype=torch.int32, device=dev)
    out = torch.empty(rows, dtype=torch.int64, device=dev)
    pdl = launch_kwargs(dev)
    _argmax_partial_kernel[(rows, nb)](logits, nan, val, idx, vocab, logits.stride(0), nb, BLOCK=BLOCK,
                                       num_warps=8, **pdl)
    _argmax_final_kernel[(rows,)](nan, val, idx, out, nb, BLOCK_P=max(16, triton.next_power_of_2(nb)),
                                  num_warps=1, **pdl)
    return out
