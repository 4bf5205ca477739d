"""The LoRA hook's expand as one Triton launch a linear (CUDA; CPU under ``TRITON_INTERPRET=1`` for tests).

:class:`pagoda.lora.layers.LoRASlots` adds each row's adapter delta with, in torch, a matmul ``xa = x a^T`` (every
shard and slot at once), a mask multiply and one ``addmm_`` per output shard: 2 + shards launches a linear, 15 a
Llama decoder layer, each a few microseconds inside a CUDA graph whatever the rows. On CUDA the hook keeps the
matmul (cuBLAS splits its long K well; a Triton "shrink" with one program per output tile looping over all of K ran
the LoRA engine 22 % slower, RESULTS.md session 46) and replaces the rest by :func:`lora_expand`:

    y[t, n] += sum_r mask[t, slot(r)] * xa[t, shard(n), r] * bt[r, n]

over every shard in one launch, in place, the sums and the add in fp32 and rounded once to ``y``'s dtype
(``addmm_``'s rounding when the dtypes agree; the torch path's other case rounds the delta first). The mask is 0 or
1, so a row without an adapter, or a padding row past the step, gets ``y`` back bit for bit. A column tile of ``y``
may straddle two shards: each shard's product is taken where its columns are (up to :data:`MAX_SHARDS`). Shapes do
not depend on the step (the mask carries it), so the launch is captured into CUDA graphs like the ops it replaces.
16-bit adapters multiply in their dtype on tensor cores; float32 ones, and every dot under the interpreter (whose
bf16 dots are not the GPU's), in fp32 exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.layers.triton_mode import interpreted

MAX_SHARDS = 3
"""Shards one expand launch serves (q/k/v); a module of more runs the torch path."""


@triton.jit
def _expand_kernel(xa_ptr, bt_ptr, mask_ptr, y_ptr, T, N, off1, off2, stride_y, stride_m, RANK: tl.constexpr,
                   SLOTS: tl.constexpr, SHARDS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_R: tl.constexpr, F32: tl.constexpr):
    LR: tl.constexpr = RANK * SLOTS
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    t_ok = offs_t < T
    n_ok = offs_n < N
    shard = (offs_n >= off1).to(tl.int32) + (offs_n >= off2).to(tl.int32)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for r0 in tl.static_range(0, LR, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < LR
        tr_ok = t_ok[:, None] & r_ok[None, :]
        m = tl.load(mask_ptr + offs_t[:, None] * stride_m + (offs_r // RANK)[None, :], mask=tr_ok, other=0.0)
        b = tl.load(bt_ptr + offs_r[:, None] * N + offs_n[None, :], mask=r_ok[:, None] & n_ok[None, :], other=0.0)
        for s in tl.static_range(SHARDS):
            xa = tl.load(xa_ptr + offs_t[:, None] * (SHARDS * LR) + s * LR + offs_r[None, :], mask=tr_ok, other=0.0)
            if F32:  # (the mask is 0 or 1: multiplying by it is exact)
                part = tl.dot(xa.to(tl.float32) * m.to(tl.float32), b.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(xa * m.to(xa.dtype), b)
            acc += tl.where(shard[None, :] == s, part, 0.0)
    ok = t_ok[:, None] & n_ok[None, :]
    ptrs = y_ptr + offs_t[:, None] * stride_y + offs_n[None, :]
    y = tl.load(ptrs, mask=ok, other=0.0)
    tl.store(ptrs, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=ok)


def lora_expand(y: torch.Tensor, xa: torch.Tensor, bt: torch.Tensor, row_mask: torch.Tensor, offsets: tuple[int, ...],
                rank: int, slots: int) -> torch.Tensor:
    """``y[:, shard s] += (xa[:, s] * mask) @ bt[:, shard s]`` for every shard, in place: ``y`` [T, N] (columns
    contiguous), ``xa`` [T, S * slots * rank] contiguous (``x a^T``, unmasked), ``bt`` [slots * rank, N] contiguous,
    ``row_mask`` [>= T, slots] (row t, slot l: 0 or 1), ``offsets`` the shards' first columns (1 <= S <= 3)."""
    t, n = y.shape
    shards, lr = len(offsets), slots * rank
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"lora_expand: {shards} shards (at most {MAX_SHARDS})")
    if xa.shape != (t, shards * lr) or bt.shape != (lr, n) or not xa.is_contiguous() or not bt.is_contiguous():
        raise ValueError(f"lora_expand: xa {tuple(xa.shape)} / bt {tuple(bt.shape)} do not fit y {tuple(y.shape)} "
                         f"with {shards} shards of {slots} x {rank} (both contiguous)")
    block_t = min(64, max(16, triton.next_power_of_2(t)))
    f32 = bt.dtype == torch.float32 or interpreted(_expand_kernel)
    _expand_kernel[(triton.cdiv(t, block_t), triton.cdiv(n, 64))](
        xa, bt, row_mask, y, t, n, offsets[1] if shards > 1 else n, offsets[2] if shards > 2 else n, y.stride(0),
        row_mask.stride(0), RANK=rank, SLOTS=slots, SHARDS=shards, BLOCK_T=block_t, BLOCK_N=64,
        BLOCK_R=min(64, max(16, triton.next_power_of_2(lr))), F32=f32)
    return y
