"""The LoRA hook's compute (pagoda/lora/layers.py) against a per-row reference: every row gets its own slot's
delta, a row without an adapter and a padding row past the step get exactly none, the row mask is rewritten only
where it changed, and ``always`` (the CUDA-graph mode) gives the eager numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pagoda.lora.layers import LoRABatch, LoRASlots

IN, SIZES, L, R = 12, (8, 4, 4), 3, 4


def _slots(dtype=torch.float32, max_rows=16):
    g = torch.Generator().manual_seed(0)
    batch = LoRABatch(max_rows, L, dtype, torch.device("cpu"))
    ls = LoRASlots(("q", "k", "v"), IN, SIZES, L, R, dtype, torch.device("cpu"), batch)
    adapters = {}
    for slot, rank in enumerate((4, 2, 3)):
        w = {name: (torch.randn(rank, IN, generator=g), torch.randn(size, rank, generator=g))
             for name, size in zip(("q", "k", "v"), SIZES, strict=True) if not (slot == 1 and name == "k")}
        ls.set_slot(slot, w)
        adapters[slot] = w
    return ls, batch, adapters


def _reference(x: torch.Tensor, y: torch.Tensor, rows: list[int], adapters: dict) -> torch.Tensor:
    out = y.clone()
    for t, slot in enumerate(rows):
        if slot < 0:
            continue
        off = 0
        for name, size in zip(("q", "k", "v"), SIZES, strict=True):
            if name in adapters[slot]:
                a, b = adapters[slot][name]
                out[t, off : off + size] += b @ (a @ x[t])
            off += size
    return out


def _run(ls: LoRASlots, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    got = ls(nn.Identity(), (x,), y.clone())
    return y if got is None else got


@pytest.mark.parametrize("always", [False, True])
def test_each_row_gets_its_own_slots_delta(always):
    ls, batch, adapters = _slots()
    batch.always = always
    g = torch.Generator().manual_seed(1)
    rows = [2, 2, -1, 0, 1, 1, 1, -1]
    x, y = torch.randn(len(rows), IN, generator=g), torch.randn(len(rows), sum(SIZES), generator=g)
    batch.set_rows(rows)
    got = _run(ls, x, y)
    want = _reference(x, y, rows, adapters)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    base = [t for t, s in enumerate(rows) if s < 0]
    assert torch.equal(got[base], y[base]), "a row without an adapter must get an exact zero delta"


def test_padding_rows_of_a_graph_bucket_get_nothing_and_the_mask_shrinks():
    ls, batch, adapters = _slots()
    batch.always = True
    g = torch.Generator().manual_seed(2)
    batch.set_rows([0, 1, 2, 0, 1, 2, 0, 1])
    batch.set_rows([1, 0])  # a smaller step: rows 2.. of the mask must be cleared
    assert torch.equal(batch.row_mask[2:], torch.zeros_like(batch.row_mask[2:]))
    x, y = torch.randn(8, IN, generator=g), torch.randn(8, sum(SIZES), generator=g)  # a bucket of 8 rows
    got = _run(ls, x, y)
    torch.testing.assert_close(got[:2], _reference(x[:2], y[:2], [1, 0], adapters), rtol=1e-5, atol=1e-5)
    assert torch.equal(got[2:], y[2:])


def test_a_step_without_adapter_rows_skips_the_hook_unless_always():
    ls, batch, _ = _slots()
    batch.set_rows([-1, -1])
    x, y = torch.randn(2, IN), torch.randn(2, sum(SIZES))
    assert not batch.active and ls(nn.Identity(), (x,), y) is None
    batch.always = True
    assert torch.equal(_run(ls, x, y), y)


def test_the_mask_is_written_only_when_it_changes():
    _, batch, _ = _slots()
    batch.set_rows([0, -1, 2])
    batch.row_mask[0, 0] = 7  # a mark: a rewrite would clear it
    batch.set_rows([0, -1, 2])
    assert batch.row_mask[0, 0] == 7, "an unchanged step must not copy its mask again"
    batch.set_rows([1, -1, 2])
    assert batch.row_mask[0].tolist() == [0, 1, 0]
    with pytest.raises(RuntimeError, match="over the 16 rows"):
        batch.set_rows([0] * 17)


def test_bf16_output_with_a_float32_adapter():
    ls, batch, adapters = _slots(torch.float32)
    rows = [0, -1, 1]
    x = torch.randn(3, IN, dtype=torch.bfloat16)
    y = torch.randn(3, sum(SIZES), dtype=torch.bfloat16)
    batch.set_rows(rows)
    got = _run(ls, x, y)
    want = _reference(x.float(), y.float(), rows, adapters)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    assert torch.equal(got[1], y[1])
