"""The bf16/fp16 GEMV of decode steps (pagoda/layers/dense_gemv.py) against a float64 ``x Wᵀ + b``.

On the CPU the kernel runs in Triton's interpreter at tiny sizes; the dispatch rule is checked on any device.
"""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from pagoda.layers import dense_gemv as dg  # noqa: E402
from pagoda.layers.linear import Linear  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _data(m, n, k, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(DEV, dtype)
    w = (torch.randn(n, k, generator=g) * 0.1).to(DEV, dtype)
    b = torch.randn(n, generator=g).to(DEV, dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("k", [64, 80])  # whole BLOCK_K steps, and a masked tail
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dot", [False, True], ids=["fma", "dot"])
def test_gemv_matches_float64_reference(m, k, bias, dot):
    x, w, b = _data(m, 40, k, torch.float32, bias, seed=m + k)  # N = 40: a partial last channel tile
    y = dg.dense_gemv(x, w, b, dg.GemvRule(block_n=16, block_k=32, use_dot=dot, num_stages=2))
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert y.shape == (m, 40) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_bf16_rows_are_independent_and_rounded_once():
    """bf16 outputs within a bf16 ulp of the float64 product, for row 0 alone (the one-row path) and in a batch of 4
    (the several-row path; the two sum in different orders, so they need not be bitwise equal)."""
    x, w, _ = _data(4, 24, 64, torch.bfloat16, False, seed=7)
    rule = dg.GemvRule(block_n=8, block_k=32)
    four = dg.dense_gemv(x, w, None, rule)
    one = dg.dense_gemv(x[:1], w, None, rule)
    ref = x.double() @ w.double().T
    torch.testing.assert_close(four.double(), ref, rtol=2 ** -7, atol=1e-3)
    torch.testing.assert_close(one[0].double(), ref[0], rtol=2 ** -7, atol=1e-3)


@pytest.mark.parametrize("dot", [False, True], ids=["fma", "dot"])
def test_several_rows_are_bitwise_independent(dot):
    """On both several-row paths every output row is the same whatever the other rows of the call are (tensor
    cores: the rows are padded to 16; CUDA cores: one accumulator per row; the K order is fixed by the rule), so a
    verify's 5 rows give bitwise what 2..8-row calls give."""
    x, w, b = _data(8, 40, 96, torch.bfloat16, True, seed=3)
    rule = dg.GemvRule(block_n=16, block_k=32, use_dot=dot, num_stages=2)
    eight = dg.dense_gemv(x, w, b, rule)
    ref = F.linear(x.double(), w.double(), b.double())
    torch.testing.assert_close(eight.double(), ref, rtol=2 ** -7, atol=1e-2)
    for rows in (2, 5):
        assert torch.equal(dg.dense_gemv(x[:rows], w, b, rule), eight[:rows])
    other = torch.cat([x[:1], torch.randn(4, 96).to(DEV, torch.bfloat16)])
    assert torch.equal(dg.dense_gemv(other, w, b, rule)[0], eight[0])


@pytest.mark.parametrize("k,block_k,split", [(96, 32, 3), (80, 16, 2), (80, 32, 4), (64, 32, 8)],
                         ids=["even", "short-last-slice", "masked-tail", "more-splits-than-tiles"])
def test_split_k_tensor_core_rule(k, block_k, split):
    """K cut into slices: the last-arriving program of each tile sums the slices' partials in slice order, so the
    result matches the float64 reference, repeats bitwise, keeps rows independent and leaves the counters at zero."""
    from pagoda.layers.arrival_counters import arrival_counters

    x, w, b = _data(5, 40, k, torch.bfloat16, True, seed=4)
    rule = dg.GemvRule(block_n=16, block_k=block_k, use_dot=True, num_stages=2, split_k=split)
    slices, per = dg._split(rule, k)
    assert per % block_k == 0 and slices <= split and (slices - 1) * per < k <= slices * per  # none empty
    y = dg.dense_gemv(x, w, b, rule)
    ref = F.linear(x.double(), w.double(), b.double())
    torch.testing.assert_close(y.double(), ref, rtol=2 ** -7, atol=1e-2)
    assert torch.equal(dg.dense_gemv(x, w, b, rule), y)
    assert torch.equal(dg.dense_gemv(x[:2], w, b, rule), y[:2])
    assert int(arrival_counters(x.device).abs().sum()) == 0


def test_leading_dims_and_bad_row_counts():
    x, w, _ = _data(3, 24, 64, torch.float32, False)
    y = dg.dense_gemv(x.view(3, 1, 64), w, None, dg.GemvRule(8, 32))
    assert y.shape == (3, 1, 24)
    with pytest.raises(ValueError, match="rows"):
        dg.dense_gemv(torch.zeros(dg.GEMV_MAX_M + 1, 64, device=DEV), w, None, dg.GemvRule(8, 32))
    with pytest.raises(ValueError, match="features"):
        dg.dense_gemv(torch.zeros(1, 63, device=DEV), w, None, dg.GemvRule(8, 32))


def test_rule_only_for_table_shapes_on_cuda(monkeypatch):
    """The GEMV runs only where the table has the shape: CUDA, bf16/fp16, a row-major weight, ≤ GEMV_MAX_M rows.
    An entry for the exact row count wins over the row bucket's. Everything else (the CPU, fp32, a shape not
    measured) stays on F.linear."""
    table = {(1, 24, 64): dg.GemvRule(8, 32), (4, 24, 64): dg.GemvRule(8, 32)}
    w = torch.zeros(24, 64, dtype=torch.bfloat16, device=DEV)
    x1 = torch.zeros(1, 64, dtype=torch.bfloat16, device=DEV)
    on_cuda = DEV == "cuda"
    assert (dg.gemv_rule(x1, w, table) is not None) == on_cuda
    assert dg.gemv_rule(torch.zeros(3, 64, dtype=torch.bfloat16, device=DEV), w, table) == (table[(4, 24, 64)]
                                                                                             if on_cuda else None)
    x5 = torch.zeros(5, 64, dtype=torch.bfloat16, device=DEV)
    assert dg.gemv_rule(x5, w, table) is None  # bucket 8: absent
    exact = dg.GemvRule(4, 32)
    assert dg.gemv_rule(x5, w, {**table, (5, 24, 64): exact}) == (exact if on_cuda else None)  # the exact count
    assert dg.gemv_rule(x5, w, {(5, 24, 64): exact, (8, 24, 64): dg.GemvRule(8, 32)}) == (exact if on_cuda else None)
    assert dg.gemv_rule(torch.zeros(dg.GEMV_MAX_M + 1, 64, dtype=torch.bfloat16, device=DEV), w,
                        {**table, (16, 24, 64): dg.GemvRule(8, 32)}) is None
    assert dg.gemv_rule(x1.float(), w.float(), table) is None
    column_major = torch.zeros(64, 24, dtype=torch.bfloat16, device=DEV).t()
    assert dg.gemv_rule(x1, column_major, table) is None
    assert dg.gemv_rule(x1, torch.zeros(32, 64, dtype=torch.bfloat16, device=DEV), table) is None
    assert dg.gemv_rule(x1, w, {}) is None
    monkeypatch.setattr(dg, "ENABLED", False)
    assert dg.gemv_rule(x1, w, table) is None


def test_a_cards_own_entries_rank_first(monkeypatch):
    """DEVICE_GEMV_TABLE: a card named by a word of its device name (an H100, not an H200) takes its own entry before
    GEMV_TABLE's; on CUDA the default lookup reads the device's name once."""
    assert dg.device_rules("NVIDIA H100 80GB HBM3") is dg.DEVICE_GEMV_TABLE["H100"]
    assert dg.device_rules("NVIDIA H200") == {} and dg.device_rules("") == {}
    own = dg.GemvRule(16, 64)
    monkeypatch.setattr(dg, "DEVICE_GEMV_TABLE", {"TESTCARD": {(5, 24, 64): own}})
    monkeypatch.setattr(dg, "GEMV_TABLE", {(5, 24, 64): dg.GemvRule(8, 32), (1, 24, 64): dg.GemvRule(8, 32)})
    monkeypatch.setattr(dg, "_device_names", {})
    w = torch.zeros(24, 64, dtype=torch.bfloat16, device=DEV)
    x5 = torch.zeros(5, 64, dtype=torch.bfloat16, device=DEV)
    if DEV != "cuda":
        assert dg.gemv_rule(x5, w) is None  # the CPU: F.linear, whatever the tables hold
        return
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA TESTCARD 1GB")
    assert dg.gemv_rule(x5, w) == own
    assert dg.gemv_rule(x5, w, dg.GEMV_TABLE) == dg.GEMV_TABLE[(5, 24, 64)]  # an explicit table: no card entries
    assert dg.gemv_rule(torch.zeros(1, 64, dtype=torch.bfloat16, device=DEV), w) == dg.GEMV_TABLE[(1, 24, 64)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GEMV is dispatched on CUDA only")
def test_linear_takes_the_gemv_for_a_table_shape(monkeypatch):
    lin = Linear(64, 24, bias=True).to("cuda", torch.bfloat16)
    with torch.no_grad():
        lin.weight.normal_(0, 0.1)
        lin.bias.normal_()
    x = torch.randn(2, 64, device="cuda", dtype=torch.bfloat16)
    monkeypatch.setattr(dg, "GEMV_TABLE", {(2, 24, 64): dg.GemvRule(8, 32)})
    calls = []
    real = dg.dense_gemv
    monkeypatch.setattr(dg, "dense_gemv", lambda *a: calls.append(1) or real(*a))
    y = lin(x)
    assert calls == [1]
    ref = F.linear(x.double(), lin.weight.double(), lin.bias.double())
    torch.testing.assert_close(y.double(), ref, rtol=2 ** -7, atol=2e-2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the --smoke mode runs the kernel in the CPU interpreter")
def test_sweep_smoke(monkeypatch, capsys, tmp_path):
    """benchmarks/gpu/dense_gemv_sweep.py --smoke runs (interpreter, tiny shapes), prints the CHOOSE block and
    writes JSON that ``table_from_json`` reads back (only GEMV wins over cuBLAS by 3 % become table entries)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_bench_smoke import run_smoke

    path = tmp_path / "sweep.json"
    script = run_smoke(monkeypatch, "benchmarks/gpu/dense_gemv_sweep.py", "--json", str(path))
    assert "m=1 N=24 K=64: cuBLAS" in capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert {(r["m"], r["n"], r["k"]) for r in rows} == {(1, 24, 64), (2, 24, 64), (1, 40, 96), (2, 40, 96)}
    rows[0].update(cublas_us=10.0, gemv_us=5.0, rule=[8, 32, 4])
    path.write_text(json.dumps(rows))
    assert script.table_from_json(str(path)) == {(1, 24, 64): dg.GemvRule(8, 32, 4)}


def test_with_gemv_table_merges_a_sweep_and_drops_tensor_core_rules(monkeypatch, tmp_path, capsys):
    """benchmarks/gpu/with_gemv_table.py (the end-to-end A/B of two tables): a sweep's winners replace or add
    entries, losers do not, ``--cuda-cores-only`` drops every ``use_dot`` rule, and the CLI runs with that table."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_bench_smoke import load_script

    script = load_script("benchmarks/gpu/with_gemv_table.py")
    monkeypatch.setattr(dg, "GEMV_TABLE", {(1, 24, 64): dg.GemvRule(8, 32),
                                           (2, 24, 64): dg.GemvRule(16, 32, 4, True, 2)})
    # this card's own entries fold in under the sweep's winners (none for the card named here)
    monkeypatch.setattr(dg, "DEVICE_GEMV_TABLE", {"TESTCARD": {(2, 24, 64): dg.GemvRule(4, 64, 2)}})
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([
        {"m": 1, "n": 24, "k": 64, "cublas_us": 10.0, "gemv_us": 5.0, "rule": [4, 64, 2, False, 1]},  # replaces
        {"m": 8, "n": 24, "k": 64, "cublas_us": 10.0, "gemv_us": 5.0, "rule": [16, 32, 4, True, 3]},  # adds
        {"m": 4, "n": 24, "k": 64, "cublas_us": 10.0, "gemv_us": 9.9, "rule": [8, 32, 4, False, 1]},  # lost: left out
    ]))
    assert script.merged_table(str(sweep), False) == {
        (1, 24, 64): dg.GemvRule(4, 64, 2), (2, 24, 64): dg.GemvRule(16, 32, 4, True, 2),
        (8, 24, 64): dg.GemvRule(16, 32, 4, True, 3)}
    assert script.merged_table(str(sweep), True) == {(1, 24, 64): dg.GemvRule(4, 64, 2)}
    # an entry set by hand wins over the sweep (a shape whose sweep was a tie)
    assert script.merged_table(str(sweep), False, ["8,24,64=64,128,4,1,4,2"])[(8, 24, 64)] == dg.GemvRule(
        64, 128, 4, True, 4, 2)
    with pytest.raises(SystemExit) as exc:
        script.main(["--table", str(sweep), "--cuda-cores-only", "--", "bench", "latency", "--help"])
    assert exc.value.code == 0
    assert dg.GEMV_TABLE == {(1, 24, 64): dg.GemvRule(4, 64, 2)} and dg.DEVICE_GEMV_TABLE == {}
    assert "GEMV table: 1 entries, 0 on tensor cores" in capsys.readouterr().out


def test_adopted_linears_take_the_gemv_where_a_rule_exists(monkeypatch):
    """The transformers fallback's ``nn.Linear`` modules (``adopt_linears``): the class changes, names and parameters
    stay; a call with a rule runs the GEMV (equal to the float64 reference), a call without one ``F.linear``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 40), torch.nn.Sequential(torch.nn.Linear(40, 24, bias=False)))
    model = model.to(DEV, torch.float32)
    keys = list(model.state_dict())
    assert dg.adopt_linears(model) == 2 and dg.adopt_linears(model) == 0  # already adopted: left alone
    assert all(type(m) is dg.GemvLinear for m in (model[0], model[1][0])) and list(model.state_dict()) == keys
    rule = dg.GemvRule(block_n=16, block_k=32)
    launched: list[int] = []
    real = dg.dense_gemv

    def counting(x, w, b, r):
        launched.append(x.shape[0])
        return real(x, w, b, r)

    monkeypatch.setattr(dg, "gemv_rule", lambda x, w: rule if x.shape[0] <= 2 else None)  # any device, 1-2 rows
    monkeypatch.setattr(dg, "dense_gemv", counting)
    for rows in (2, 5):
        x = torch.randn(rows, 64, device=DEV)
        ref = F.linear(F.linear(x.double(), model[0].weight.double(), model[0].bias.double()),
                       model[1][0].weight.double())
        torch.testing.assert_close(model(x).double(), ref, rtol=1e-5, atol=1e-5)
    assert launched == [2, 2]  # both linears of the 2-row call; the 5-row call ran F.linear
