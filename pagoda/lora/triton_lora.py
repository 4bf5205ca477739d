"""The LoRA hook's two GEMMs as two Triton launches a linear (CUDA; CPU under ``TRITON_INTERPRET=1`` for tests).

:class:`pagoda.lora.layers.LoRASlots` adds each row's adapter delta with, in torch, a matmul, a mask multiply and one
``addmm_`` per output shard: 2 + shards launches a linear, 15 a Llama decoder layer, each a few microseconds inside
a CUDA graph whatever the rows. Here (the "shrink" / "expand" pair of vLLM's punica kernels, written for this
layout):

* :func:`lora_shrink`: ``xa[t, c] = mask[t, slot(c)] * sum_k x[t, k] a[c, k]`` for the columns ``c = (s * L + l) * R
  + r`` of every shard ``s``, slot ``l`` and rank ``r`` at once, rounded to the adapter dtype (the mask is 0 or 1,
  so masking before or after the rounding is the same);
* :func:`lora_expand`: ``y[t, n] += sum_r xa[t, shard(n), r] bt[r, n]`` in place over all shards, the sum and the
  add in fp32 and rounded once to ``y``'s dtype (``addmm_``'s rounding when the dtypes agree; the torch path's
  other case rounds the delta first).

16-bit adapters multiply in their dtype on tensor cores (fp32 sums); float32 ones, and every dot under the
interpreter (whose bf16 dots are not the GPU's), in fp32 exactly.

A column tile of ``y`` may straddle two shards: each shard's product is taken where its columns are (up to 3
shards, q/k/v). Shapes do not depend on the step (the mask carries it), so the launches are captured into CUDA
graphs like the torch ops they replace.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.layers.triton_mode import interpreted

MAX_SHARDS = 3
"""Shards one expand launch serves (q/k/v); a module of more runs the torch path."""


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, mask_ptr, out_ptr, T, K, C, stride_x, stride_m, RANK: tl.constexpr,
                   SLOTS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                   F32: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t_ok = offs_t < T
    c_ok = offs_c < C
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(x_ptr + offs_t[:, None] * stride_x + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :],
                    other=0.0)
        a = tl.load(a_ptr + offs_c[None, :] * K + offs_k[:, None], mask=c_ok[None, :] & k_ok[:, None], other=0.0)
        if F32:
            acc += tl.dot(x.to(tl.float32), a.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(x.to(a.dtype), a, acc)
    slot = (offs_c // RANK) % SLOTS
    ok = t_ok[:, None] & c_ok[None, :]
    m = tl.load(mask_ptr + offs_t[:, None] * stride_m + slot[None, :], mask=ok, other=0.0)
    tl.store(out_ptr + offs_t[:, None] * C + offs_c[None, :], (acc * m.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=ok)


@triton.jit
def _expand_kernel(xa_ptr, bt_ptr, y_ptr, T, N, LR, off1, off2, stride_y, SHARDS: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, F32: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    t_ok = offs_t < T
    n_ok = offs_n < N
    shard = (offs_n >= off1).to(tl.int32) + (offs_n >= off2).to(tl.int32)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, LR, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < LR
        b = tl.load(bt_ptr + offs_r[:, None] * N + offs_n[None, :], mask=r_ok[:, None] & n_ok[None, :], other=0.0)
        for s in tl.static_range(SHARDS):
            xa = tl.load(xa_ptr + offs_t[:, None] * (SHARDS * LR) + s * LR + offs_r[None, :],
                         mask=t_ok[:, None] & r_ok[None, :], other=0.0)
            if F32:
                part = tl.dot(xa.to(tl.float32), b.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(xa, b)
            acc += tl.where(shard[None, :] == s, part, 0.0)
    ok = t_ok[:, None] & n_ok[None, :]
    ptrs = y_ptr + offs_t[:, None] * stride_y + offs_n[None, :]
    y = tl.load(ptrs, mask=ok, other=0.0)
    tl.store(ptrs, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=ok)


def _block_t(t: int) -> int:
    return min(64, max(16, triton.next_power_of_2(t)))


def lora_shrink(x: torch.Tensor, a_all: torch.Tensor, row_mask: torch.Tensor, rank: int, slots: int) -> torch.Tensor:
    """``(x @ a_all.T)`` times each row's slot mask, in ``a_all``'s dtype: ``x`` [T, K] (rows contiguous),
    ``a_all`` [C, K] contiguous with ``C = shards * slots * rank``, ``row_mask`` [>= T, slots]."""
    t, k = x.shape
    c = a_all.shape[0]
    out = torch.empty((t, c), device=x.device, dtype=a_all.dtype)
    bt, bc = _block_t(t), min(64, max(16, triton.next_power_of_2(c)))
    _shrink_kernel[(triton.cdiv(t, bt), triton.cdiv(c, bc))](
        x, a_all, row_mask, out, t, k, c, x.stride(0), row_mask.stride(0), RANK=rank, SLOTS=slots, BLOCK_T=bt,
        BLOCK_C=bc, BLOCK_K=64, F32=a_all.dtype == torch.float32 or interpreted(_shrink_kernel))
    return out


def lora_expand(y: torch.Tensor, xa: torch.Tensor, bt: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
    """``y[:, shard s] += xa[:, s] @ bt[:, shard s]`` for every shard, in place: ``y`` [T, N] (columns contiguous),
    ``xa`` [T, S * LR] contiguous, ``bt`` [LR, N] contiguous, ``offsets`` the shards' first columns (S <= 3)."""
    t, n = y.shape
    shards, lr = len(offsets), bt.shape[0]
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"lora_expand: {shards} shards (at most {MAX_SHARDS})")
    off1 = offsets[1] if shards > 1 else n
    off2 = offsets[2] if shards > 2 else n
    block_t = _block_t(t)
    f32 = bt.dtype == torch.float32 or interpreted(_expand_kernel)
    _expand_kernel[(triton.cdiv(t, block_t), triton.cdiv(n, 64))](
        xa, bt, y, t, n, lr, off1, off2, y.stride(0), SHARDS=shards, BLOCK_T=block_t, BLOCK_N=64,
        BLOCK_R=min(64, max(16, triton.next_power_of_2(lr))), F32=f32)
    return y
