"""The Q8_0 LM head (pagoda/layers/cpu_head_q8.c): float32 logits within the stated bound of a float64 reference on
the table's exact values, each row's bits independent of the batch, of the thread team and of the path (the few-row
head or the refinement of a larger batch's leading logits); hidden rows with outliers, zeros, infinities; and a tied
Q8_0 GGUF table on the CPU uses it with the file's exact values (``gguf.dequantize``'s)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from test_gguf import LAYER_TYPES, _config, _tiny_quantized_gguf

from pagoda.layers import cpu_head_q8
from pagoda.layers.cpu_head_q8 import Q8Head
from pagoda.layers.logits import refine_top_logits
from pagoda.models import cpu_decoder_stack

pytestmark = pytest.mark.skipif(not cpu_head_q8.available(),
                                reason="no Q8_0 LM head here (needs x86-64 AVX-512 with VNNI and a C compiler)")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))


def _head(n: int, k: int, seed: int = 0) -> Q8Head:
    g = torch.Generator().manual_seed(seed)
    return Q8Head.pack(torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8),
                       torch.rand(n, k // 32, generator=g) * 0.01)


def _hidden(m: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * 3).bfloat16()


def _within_bound(w: Q8Head, x: torch.Tensor, got: torch.Tensor) -> bool:
    ref = x.double() @ w.dense().double().t()
    return bool(((got.double() - ref).abs() <= cpu_head_q8.error_bound(w, x)).all())


def test_pack_keeps_the_values_and_refuses_bad_shapes():
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(-128, 128, (37, 64), generator=g, dtype=torch.int8)  # 37: a padded last tile of 16
    scales = torch.rand(37, 2, generator=g).half()
    w = Q8Head.pack(codes, scales)
    assert w.n == 37 and w.k == 64 and tuple(w.codes.shape) == (3, 32, 16, 2) and tuple(w.scales.shape) == (3, 2, 16)
    want = (codes.float().view(37, 2, 32) * scales.float().unsqueeze(-1)).view(37, 64)
    assert torch.equal(w.dense(), want)
    with pytest.raises(ValueError, match="multiple of 32"):
        Q8Head.pack(codes[:, :48], scales)
    with pytest.raises(ValueError, match="int8 codes"):
        Q8Head.pack(codes.to(torch.int16), scales)
    with pytest.raises(ValueError, match=r"scales \[n, K/32\]"):
        Q8Head.pack(codes, scales[:, :1])


@pytest.mark.parametrize(("n", "k"), [(1000, 576), (203, 64), (16, 32)])
@pytest.mark.parametrize("threads", [1, 3])
def test_matches_float64_and_rows_do_not_depend_on_the_batch(monkeypatch, n, k, threads):
    monkeypatch.setattr(cpu_decoder_stack, "THREADS", threads)
    w, x = _head(n, k), _hidden(cpu_head_q8.MAX_ROWS, k)
    got = w.head(x)
    assert got is not None and got.dtype == torch.float32 and got.shape == (x.shape[0], n)
    assert _within_bound(w, x, got)
    for m in range(1, x.shape[0] + 1):  # every batch size up to MAX_ROWS: the same bits per row
        assert torch.equal(w.head(x[:m]), got[:m])
    assert torch.equal(w.head(x[5:6])[0], got[5])
    alone = cpu_head_q8._run(cpu_head_q8._lib(), w, x, team=False)  # the calling thread only
    assert alone is not None and torch.equal(alone, got)
    assert torch.equal(w.head(x.t().contiguous().t()), got)  # non-contiguous hidden rows are copied


def test_hidden_rows_with_outliers_zeros_and_infinities():
    w, k = _head(100, 128, seed=2), 128
    x = _hidden(5, k, seed=3)
    x[0, 7] = 4096.0  # an outlier: the small elements round to multiples of 2**-3
    x[1] = 0.0
    x[2, 0] = float("inf")
    x[3, 9] = float("nan")
    x[4] *= 2.0**-60  # tiny values: the power-of-two scale keeps them exact
    got = w.head(x)
    assert got is not None
    assert _within_bound(w, x[[0, 4]], got[[0, 4]])
    assert torch.equal(got[1], torch.zeros(100))
    assert bool(got[2].isnan().all()) and bool(got[3].isnan().all())
    exact = (x[4].double() @ w.dense().double().t())
    assert bool(((got[4].double() - exact).abs() <= exact.abs() * 2.0**-18 + 1e-300).all())


def test_logits_scaled_into_subnormals_round_as_ldexpf_does():
    """The last step, acc * 2**-s, is a vector scalef in the head and ldexpf in :meth:`Q8Head.entries`: the same
    correctly rounded value, subnormal and zero results included (hidden rows near bf16's smallest values)."""
    w, k = _head(80, 128, seed=6), 128
    x = _hidden(3, k, seed=7)
    x[0] *= 2.0**-128  # logits 2**-132 .. 2**-122: across float32's smallest normal
    x[1] *= 2.0**-131
    x[2] *= 2.0**-138  # results that round to zero
    got = w.head(x)
    assert got is not None
    tiny = (got != 0) & (got.abs() < 2.0**-126)
    assert bool(tiny[0].any()) and bool((got[0].abs() >= 2.0**-126).any()) and bool(tiny[1].any())
    rows = torch.arange(3).repeat_interleave(80)
    cols = torch.arange(80).repeat(3)
    assert torch.equal(w.entries(x, rows, cols), got[rows, cols])


def test_entries_are_the_heads_bits_and_refinement_uses_them():
    w, x = _head(700, 576, seed=4), _hidden(12, 576, seed=5)
    few = torch.cat([w.head(x[i : i + 4]) for i in range(0, 12, 4)])
    rows = torch.tensor([0, 5, 11, 11, 7, 3])
    cols = torch.tensor([3, 699, 0, 42, 500, 688])  # 688..699: the last, partial tile
    assert torch.equal(w.entries(x, rows, cols), few[rows, cols])
    # a batch above MAX_ROWS: bf16 logits (of the table's bf16 copy) whose leading 8 per row are recomputed
    dense = w.dense().bfloat16()
    bf16 = torch.nn.functional.linear(x, dense).float()
    out = refine_top_logits(bf16.clone(), x, dense, q8=w)
    top = bf16.topk(8, dim=-1).indices
    assert torch.equal(out.gather(1, top), few.gather(1, top))


def test_entries_refuse_indices_out_of_range():
    w, x = _head(40, 64, seed=7), _hidden(3, 64, seed=8)
    for rows, cols in (([0, 3], [1, 2]), ([0, 1], [1, 40]), ([-1], [0]), ([0], [-2])):
        with pytest.raises(ValueError, match="indices must lie in"):
            w.entries(x, torch.tensor(rows), torch.tensor(cols))


def test_without_the_thread_team_the_head_runs_on_this_thread(monkeypatch):
    """The rows of larger batches are refined with the head's bits, so a few rows never fall back to another
    head: where the team cannot run, the kernel runs on the calling thread (the same bits)."""
    w, x = _head(300, 576, seed=9), _hidden(3, 576, seed=10)
    want = w.head(x)
    monkeypatch.setattr(cpu_decoder_stack, "team_run", lambda fn, ctx, n: False)
    got = w.head(x)
    assert got is not None and torch.equal(got, want)


def test_declines_what_it_does_not_cover(monkeypatch):
    w = _head(50, 64)
    x = _hidden(cpu_head_q8.MAX_ROWS + 1, 64)
    assert w.head(x) is None  # above MAX_ROWS: the caller's other head
    assert w.head(x[:2].float()) is None
    assert w.head(x[:2, :32]) is None  # another width
    monkeypatch.setattr(cpu_head_q8, "ENABLED", False)
    assert w.head(x[:2]) is None and w.entries(x, torch.tensor([0]), torch.tensor([0])) is None


def test_a_tied_q8_table_runs_the_files_exact_values(tmp_path, tmp_cache):
    """The default model's case in small: a tied Q8_0 token_embd in bf16 on the CPU keeps its codes beside the dense
    table; the head of a few rows is the Q8_0 kernel on exactly ``gguf.dequantize``'s values, and a larger batch's
    leading logits (oneDNN's bf16 head, refined) get its bits."""
    from pagoda.models.loader import load_model

    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", True, {**LAYER_TYPES, "token_embd": "Q8_0"})
    model = load_model(_config(path, dtype="bfloat16"))  # CPU, bf16: pack_for_cpu ran
    q8 = model._lm_q8
    assert isinstance(q8, Q8Head)
    raw = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "token_embd.weight")
    want = torch.from_numpy(gguf.quants.dequantize(raw.data, raw.tensor_type).astype(np.float32))
    assert torch.equal(q8.dense(), want.reshape(q8.n, q8.k))
    hidden = _hidden(2 * cpu_head_q8.MAX_ROWS, q8.k, seed=6)
    few = model.compute_logits(hidden[:4])
    assert torch.equal(few, q8.head(hidden[:4]))
    many = model.compute_logits(hidden)
    top = many.topk(8, dim=-1).indices[:4]
    assert torch.equal(many[:4].gather(1, top), few.gather(1, top))
    assert torch.equal(many[:4].argmax(-1), few.argmax(-1))


def test_an_untied_or_4bit_table_keeps_no_codes(tmp_path, tmp_cache):
    from pagoda.models.loader import load_model

    untied = load_model(_config(_tiny_quantized_gguf(tmp_path / "untied.gguf", False), dtype="bfloat16"))
    assert untied._lm_q8 is None and "q8_source" not in vars(untied.embed_tokens)  # not kept for lookups
    q4 = _tiny_quantized_gguf(tmp_path / "q4.gguf", True, {**LAYER_TYPES, "token_embd": "Q4_0"})
    model = load_model(_config(q4, dtype="bfloat16"))
    assert model._lm_q8 is None and "q8_source" not in vars(model.embed_tokens)
