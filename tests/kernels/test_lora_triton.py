"""The LoRA hook's Triton expand (pagoda/lora/triton_lora.py) against the hook's torch path (pagoda/lora/layers.py),
on the CPU in Triton's interpreter (the compiled kernel on a GPU): every row its own slot's delta, exact zeros for
rows without an adapter and for padding rows, output tiles straddling shards, slots x rank wider than one R block,
float32 and bf16 adapters on a bf16 output."""

import os

import torch
from torch import nn

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import

import pytest  # noqa: E402

pytest.importorskip("triton")

from pagoda.lora.layers import LoRABatch, LoRASlots  # noqa: E402
from pagoda.lora.triton_lora import lora_expand  # noqa: E402

DEV = torch.device("cuda" if ON_GPU else "cpu")


def _slots(sizes, slots, rank, in_f, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = LoRABatch(32, slots, dtype, DEV)
    names = tuple(f"s{i}" for i in range(len(sizes)))
    ls = LoRASlots(names, in_f, sizes, slots, rank, dtype, DEV, batch)
    for slot in range(slots):
        r = max(1, rank - slot)  # ranks below the slots' R leave zero rows
        ls.set_slot(slot, {n: (torch.randn(r, in_f, generator=g).to(DEV), torch.randn(size, r, generator=g).to(DEV))
                           for n, size in zip(names, sizes, strict=True) if not (slot == 1 and n == "s0")})
    return ls, batch


def _torch_path(ls: LoRASlots, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The hook's torch ops (what runs off CUDA), whatever device the tensors are on."""
    expand, ls._expand = ls._expand, None
    try:
        return ls(nn.Identity(), (x,), y.clone())
    finally:
        ls._expand = expand


@pytest.mark.parametrize("sizes,slots,rank,adapter_dtype,out_dtype", [
    ((96, 40, 40), 3, 8, torch.float32, torch.float32),   # q/k/v: tiles of 64 columns straddle 96 and 136
    ((80, 80), 2, 16, torch.float32, torch.float32),      # gate/up
    ((48,), 5, 16, torch.float32, torch.float32),         # one shard; slots x rank = 80: two R blocks of 64
    ((96, 40, 40), 3, 8, torch.bfloat16, torch.bfloat16),
    ((96, 40, 40), 3, 8, torch.float32, torch.bfloat16),  # a float32 adapter on a bf16 model
])
def test_triton_pair_equals_the_torch_path(sizes, slots, rank, adapter_dtype, out_dtype):
    in_f = 72
    ls, batch = _slots(sizes, slots, rank, in_f, adapter_dtype)
    rows = [0, -1, 2 % slots, 1, 1, -1, slots - 1, 0, -1, 0, 1, 2 % slots, 0, 0, 0, 1, -1, 0, 1]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(len(rows) + 3, in_f, generator=g).to(out_dtype).to(DEV)  # 3 padding rows past the step
    y = torch.randn(len(rows) + 3, sum(sizes), generator=g).to(out_dtype).to(DEV)
    batch.set_rows(rows)
    want = _torch_path(ls, x, y)
    xa = x.to(adapter_dtype) @ ls._a_all.t()  # the hook's matmul (cuBLAS on CUDA)
    got = lora_expand(y.clone(), xa, ls.bt, batch.row_mask, ls.offsets, rank, slots)
    none = [t for t, s in enumerate(rows) if s < 0] + list(range(len(rows), x.shape[0]))
    assert torch.equal(got[none], y[none]), "rows without an adapter and padding rows must be left exactly as they were"
    tol = 1e-4 if out_dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.abs().max().item())


def test_more_shards_than_one_launch_serves_or_a_misshapen_operand_is_refused():
    mask = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="at most 3"):
        lora_expand(torch.zeros(2, 8), torch.zeros(2, 16), torch.zeros(4, 8), mask, (0, 2, 4, 6), 2, 2)
    with pytest.raises(ValueError, match="do not fit"):
        lora_expand(torch.zeros(2, 8), torch.zeros(2, 12), torch.zeros(4, 8), mask, (0, 4), 2, 2)


def test_the_hook_runs_the_expand_on_cuda_only():
    """Off CUDA the hook keeps its torch ops (tests/test_lora_layers.py); on CUDA a module of at most 3 shards takes
    the matmul + expand."""
    ls, _ = _slots((8, 4, 4), 2, 4, 12, torch.float32)
    assert (ls._expand is not None) == ON_GPU
