"""The small-M 4-bit GEMV (pagoda.quantization.kernels.triton_w4_gemv) against the dequantize reference.

CPU: Triton's interpreter (``TRITON_INTERPRET=1``, set before triton is first imported) at tiny sizes; on a
GPU the compiled kernel. Reference: :func:`test_int_weight_cpu.reference` (a ``plain`` IntWeight, dequantized
in fp32, ``F.linear`` in fp32). Tolerance: fp32 1e-5 of the output's max magnitude (the kernel's products
``x*q`` are exact and its sums fp32, in another order); bf16 2e-2 (bf16 activations and output).
"""

import os

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import

import pytest  # noqa: E402

pytest.importorskip("triton")

from test_int_weight_cpu import random_weight, reference  # noqa: E402

from pagoda.layers.arrival_counters import arrival_counters  # noqa: E402
from pagoda.quantization.kernels import triton_w4_gemv as gv  # noqa: E402
from pagoda.quantization.kernels import triton_wna16 as tw  # noqa: E402

DEV = torch.device("cuda" if ON_GPU else "cpu")
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def run(x, codes, scales, offsets, group, dtype, bias, block_m, block_n, split, prefetch=1, symmetric=False,
        lift=False, halves=1, gated=False):
    k = x.shape[1]
    qw = tw.pack(codes, 4).to(DEV)
    s, o = scales.to(dtype).t().contiguous().to(DEV), offsets.to(dtype).t().contiguous().to(DEV)
    b = bias.to(dtype).to(DEV) if bias is not None else None
    if symmetric:
        assert torch.equal(o, s * -8)
        o = torch.full_like(o, float("nan"))  # the symmetric kernel must not read the offsets
    return gv.w4_gemv(x.to(dtype).to(DEV), qw, s, o, group, b, tw.pack_k(k), block_m, block_n, split,
                      prefetch=prefetch, symmetric=symmetric, lift=lift, halves=halves, gated=gated).cpu()


def check(out, ref, dtype):
    err = (out.float() - ref).abs().max().item()
    assert err <= TOL[dtype] * ref.abs().max().item(), err


@pytest.mark.parametrize("group,n,k,sym", [
    (32, 33, 128, False),   # groups inside a 128-row tile (GGUF Q4 blocks), odd N
    (64, 40, 256, True),
    (128, 24, 256, False),  # one group per tile (GPTQ/AWQ)
    (256, 16, 512, True),   # a group spans two tiles
    (512, 17, 512, False),  # group -1: one group over the whole K
    (96, 8, 384, True),     # neither divides the 128-row tile: one group per 16-row sub-block
    (32, 20, 96, False),    # K % 128 != 0: 32-row tiles (4-row sub-blocks)
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_w4_gemv_matches_dequantize_reference(group, n, k, sym, dtype):
    codes, scales, offsets = random_weight(4, group, n, k, sym, seed=group + n + k)
    for m, block_m, split in ((1, 1, 1), (2, 2, 3), (3, 4, 2), (8, 8, 1), (3, 2, 4)):
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
        bias = torch.randn(n) if m in (2, 8) else None
        ref = reference(x.to(dtype), codes, scales, offsets, 4, group, dtype, None,
                        bias.to(dtype) if bias is not None else None)
        for lift in (False, True):
            out = run(x, codes, scales, offsets, group, dtype, bias, block_m, 16, split, prefetch=split % 3,
                      symmetric=sym and m % 2 == 1, lift=lift)  # symmetric weights: both kernels
            assert out.dtype == dtype and out.shape == (m, n)
            check(out, ref, dtype)


@pytest.mark.parametrize("group,n,k,sym", [(32, 33, 128, False), (128, 40, 256, True), (96, 8, 384, True),
                                            (32, 20, 96, False)])
@pytest.mark.parametrize("halves", [2, 4])
def test_column_halves_match_the_reference(group, n, k, sym, halves):
    """``halves`` > 1 (one row a program, its columns in ``halves`` blocks sharing x): rows of several launches
    (masked columns, split-K, bias, both decodes) match the dequantize reference; block_m > 1 is refused."""
    codes, scales, offsets = random_weight(4, group, n, k, sym, seed=group + n + k + halves)
    for m, block_n, split, lift in ((1, 16, 1, True), (3, 32, 2, True), (2, 64, 3, False)):
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + halves))
        bias = torch.randn(n) if m == 3 else None
        ref = reference(x, codes, scales, offsets, 4, group, torch.float32, None, bias)
        out = run(x, codes, scales, offsets, group, torch.float32, bias, 1, block_n, split, symmetric=sym,
                  lift=lift, halves=halves)
        check(out, ref, torch.float32)
    with pytest.raises(ValueError, match="halves"):
        run(x, codes, scales, offsets, group, torch.float32, None, 2, 32, 1, halves=halves)


@pytest.mark.parametrize("group,n,k,sym", [(32, 64, 128, False), (128, 96, 256, True), (96, 32, 384, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_store_is_the_gemv_then_silu_and_mul(group, n, k, sym, dtype):
    """``gated`` (a gate-then-up weight, two column blocks a program): ``silu(gate) * up`` ``[M, N/2]`` bit for bit
    equal to the same GEMV's ``[M, N]`` output through :func:`pagoda.layers.fused_kernels.silu_and_mul` (split-K or
    not, bias, both decodes); a launch whose blocks do not tile each half is refused."""
    from pagoda.layers.fused_kernels import silu_and_mul

    codes, scales, offsets = random_weight(4, group, n, k, sym, seed=group + n + k)
    for m, block_n, split, lift, with_bias in ((1, 16, 1, True, False), (3, 32, 2, False, True),
                                              (2, 16, 3, True, False)):
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
        bias = torch.randn(n) if with_bias else None
        args = (x, codes, scales, offsets, group, dtype, bias, 1, block_n, split)
        full = run(*args, symmetric=sym, lift=lift, halves=2)
        out = run(*args, symmetric=sym, lift=lift, halves=2, gated=True)
        assert out.shape == (m, n // 2) and out.dtype == dtype
        assert torch.equal(out, silu_and_mul(full.to(DEV)).cpu())
    for bad in ({"halves": 4}, {"halves": 2, "block_n": 3 * n // 2}):
        with pytest.raises(ValueError, match="gated"):
            run(x, codes, scales, offsets, group, dtype, None, 1, bad.get("block_n", 16), 1, halves=bad["halves"],
                gated=True)


def test_gated_dispatch_only_where_the_rule_has_two_blocks(monkeypatch):
    """``wna16_silu_mul`` runs the gated GEMV where the shape's rule is a two-block GEMV tiling each half (the
    one-row gate_up entry), equal to the matmul then SiLU·mul; elsewhere it returns None."""
    from pagoda.layers.fused_kernels import silu_and_mul

    n, k = 64, 256
    monkeypatch.setattr(tw, "GATED_STORE", True)  # (off by default until timed on a GPU)
    codes, scales, offsets = random_weight(4, 128, n, k, True, seed=9)
    qw, s, o = tw.pack(codes, 4).to(DEV), scales.t().contiguous().to(DEV), offsets.t().contiguous().to(DEV)
    x = torch.randn(1, k).to(DEV)
    assert tw.rule_for(1, 4, n, k).halves == 1 and tw.wna16_silu_mul(x, qw, s, o, 4, 128) is None
    monkeypatch.setitem(tw.INT4_SHAPE_TABLE, (1, n, k), tw.Rule("gemv", 32, block_m=1, waves=8, pdl=True, halves=2))
    out = tw.wna16_silu_mul(x, qw, s, o, 4, 128, symmetric=True)
    assert out is not None and torch.equal(out, silu_and_mul(tw.wna16_matmul(x, qw, s, o, 4, 128, symmetric=True)))
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1)).to(DEV)  # act order: x's columns permuted
    out = tw.wna16_silu_mul(x, qw, s, o, 4, 128, symmetric=True, perm=perm)
    assert out is not None and torch.equal(out, silu_and_mul(tw.wna16_matmul(x[:, perm], qw, s, o, 4, 128,
                                                                             symmetric=True)))
    assert tw.wna16_silu_mul(torch.randn(2, k).to(DEV), qw, s, o, 4, 128) is None  # two rows: the dot rule
    monkeypatch.setitem(tw.INT4_SHAPE_TABLE, (1, n, k), tw.Rule("gemv", 128, block_m=1, waves=8, halves=2))
    assert tw.wna16_silu_mul(x, qw, s, o, 4, 128) is None  # 64-column blocks do not tile a 32-column half
    assert tw.wna16_silu_mul(x, qw, s, o, 8, 128) is None  # 5..8 bits: the u8 kernel has no gated store
    monkeypatch.setitem(tw.INT4_SHAPE_TABLE, (1, n, k), tw.Rule("gemv", 32, block_m=1, waves=8, pdl=True, halves=2))
    monkeypatch.setattr(tw, "GATED_STORE", False)
    assert tw.wna16_silu_mul(x, qw, s, o, 4, 128) is None  # the switch off: the MLP's two kernels


def test_lift_decode_keeps_small_zero_and_large_x_exact_enough():
    """The ``lift`` decode (nibbles as denormals, x scaled by up to 2**90): rows of x at 2**-50 and 2**36, exact
    zeros and float32 denormals among normal values give the reference's outputs to fp32 accuracy (within its
    documented range, triton_w4_gemv.LIFT); an inf or NaN still makes its row non-finite."""
    codes, scales, offsets = random_weight(4, 128, 16, 256, True, seed=11)
    x = torch.randn(6, 256, generator=torch.Generator().manual_seed(5))
    x[0] *= 2.0**-50
    x[1] *= 2.0**36
    x[2, ::2] = 0.0
    x[3, 1::3] = 1e-39  # float32 denormals
    x[4, 9], x[5, 200] = float("inf"), float("nan")
    ref = reference(x, codes, scales, offsets, 4, 128, torch.float32, None, None)
    out = run(x, codes, scales, offsets, 128, torch.float32, None, 8, 16, 2, symmetric=True, lift=True)
    for r in range(4):
        torch.testing.assert_close(out[r], ref[r], rtol=1e-5, atol=1e-5 * ref[r].abs().max().item())
    assert not out[4:].isfinite().any()


def test_split_k_is_one_launch_deterministic_and_rearms_its_counters():
    """Every split count (also ones not dividing the tile count) gives the unsplit result to fp32 rounding; a
    repeated call is bitwise equal; the counters are back at zero after each call."""
    codes, scales, offsets = random_weight(4, 128, 32, 768, False, seed=5)
    x = torch.randn(2, 768)
    ref = reference(x, codes, scales, offsets, 4, 128, torch.float32, None, None)
    for split in (2, 4, 6):
        first = run(x, codes, scales, offsets, 128, torch.float32, None, 2, 16, split)
        check(first, ref, torch.float32)
        assert torch.equal(first, run(x, codes, scales, offsets, 128, torch.float32, None, 2, 16, split))
        assert int(arrival_counters(DEV, 1).abs().sum()) == 0


def test_split_sum_rounds_change_no_bit(monkeypatch):
    """``SPLIT_SUM_LOADS`` (partials loaded a round by the tile's last program) changes only how many loads are in
    flight: 8 or 16 a round give the same bits for split counts across one and two rounds of either."""
    codes, scales, offsets = random_weight(4, 32, 16, 2560, True, seed=6)  # 20 K tiles: up to 20 splits
    x = torch.randn(1, 2560, generator=torch.Generator().manual_seed(8))
    outs = {}
    for loads in (8, 16):
        monkeypatch.setattr(gv, "SPLIT_SUM_LOADS", loads)
        outs[loads] = [run(x, codes, scales, offsets, 32, torch.float32, None, 1, 16, split, symmetric=True,
                           lift=True) for split in (3, 8, 9, 16, 17, 20)]
    ref = reference(x, codes, scales, offsets, 4, 32, torch.float32, None, None)
    for a, b in zip(outs[8], outs[16], strict=True):
        assert torch.equal(a, b)
        check(a, ref, torch.float32)


def test_shape_table_refines_the_other_tables_for_its_shapes_only():
    """``INT4_SHAPE_TABLE`` (keyed by INT4_TABLE's M bucket, N, K) wins for its shapes at every M of the bucket; other
    shapes and other buckets keep the rule of SMALL_M_TABLE (its rows) or INT4_TABLE; 5..8-bit weights never read
    it."""
    assert tw.INT4_SHAPE_TABLE
    keys = sorted(tw.INT4_TABLE)

    def without_shapes(m, n, k):
        small = tw.SMALL_M_TABLE.get(tw.shape_class(n, k), {})
        if small and m <= max(small):
            return small[min(b for b in small if b >= m)]
        return tw.INT4_TABLE[min(b for b in keys if b >= m)]

    for (key, n, k), rule in tw.INT4_SHAPE_TABLE.items():
        assert key in tw.INT4_TABLE and rule.kind in ("gemv", "dot", "deq")
        i = keys.index(key)
        for m in (keys[i - 1] + 1 if i else 1, key):
            assert tw.rule_for(m, 4, n, k) is rule
            assert tw.rule_for(m, 4, n + 64, k) is without_shapes(m, n + 64, k)
            assert tw.rule_for(m, 8, n, k) is tw.U8_TABLE[min(b for b in tw.U8_TABLE if b >= m)]
        assert tw.rule_for(key + 1, 4, n, k) is tw.INT4_SHAPE_TABLE.get((keys[i + 1], n, k),
                                                                        without_shapes(key + 1, n, k))


def test_dispatch_uses_the_small_m_table():
    """Decode rows of a 4-bit weight go to the GEMV with split-K filling the GPU; a shape's own entry, else the
    shape class, picks the rule; the kernel behind ``wna16_matmul`` (the IntWeight path) is the GEMV."""
    for m in (1, 2, 3, 4):
        for n, k in ((4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)):
            small = tw.SMALL_M_TABLE[tw.shape_class(n, k)]
            c = tw.choose_config(m, n, k, 128, 132)
            key = min(b for b in tw.INT4_TABLE if b >= m)
            shaped = tw.INT4_SHAPE_TABLE.get((key, n, k))
            if m > max(small):  # past the class's measured GEMV rows: the shape's own entry, else the dot table
                assert tw.rule_for(m, 4, n, k) is (shaped or tw.INT4_TABLE[key])
                continue
            assert c.kind == "gemv" and c.block_m <= tw.triton.next_power_of_2(m) and c.block_k == 128
            assert c.split_k > 1 or n * k > tw.SMALL_WEIGHT
            assert tw.rule_for(m, 4, n, k) is (shaped or small[min(b for b in small if b >= m)])
    assert tw.shape_class(6144, 4096) == "small" and tw.shape_class(4096, 14336) == "large"
    assert tw.choose_config(16, 4096, 4096, 128, 132).kind == "dot"
    codes, scales, offsets = random_weight(4, 32, 24, 128, True, seed=2)
    x = torch.randn(1, 128)
    out = tw.wna16_matmul(x.to(DEV), tw.pack(codes, 4).to(DEV), scales.t().contiguous().to(DEV),
                          offsets.t().contiguous().to(DEV), 4, 32).cpu()
    check(out, reference(x, codes, scales, offsets, 4, 32, torch.float32, None, None), torch.float32)


@pytest.mark.parametrize("sym", [True, False])
def test_int_weight_records_symmetric_for_the_gemv(sym, monkeypatch):
    """Packing for Triton (forced here on the CPU) records whether offsets are exactly ``-8 * scales`` (what the
    GEMV's ``symmetric`` path assumes), allocates the split-K counters, and keeps the weight's meaning."""
    from pagoda.quantization import int_weight

    monkeypatch.setattr(int_weight, "_choose_layout", lambda *a: "triton")
    codes, scales, offsets = random_weight(4, 32, 16, 64, sym, seed=7)
    w = int_weight.make_int_weight(codes, scales, offsets, 4, 32, torch.bfloat16)
    assert w.layout == "triton" and w.symmetric == sym
    from pagoda.layers import arrival_counters

    assert arrival_counters._BUFFERS[codes.device].numel() >= arrival_counters.SLOTS
    ref = int_weight.IntWeight(codes, scales.bfloat16(), offsets.bfloat16(), 4, 32).dequantize(torch.float32)
    assert torch.equal(w.dequantize(torch.float32), ref)


def test_non_finite_x_gives_non_finite_rows_and_huge_x_stays_exact():
    """An inf or NaN in ``x`` makes its row's outputs non-finite (as the reference's); a huge finite ``x`` (2**80)
    is computed as the reference does; other rows keep their values."""
    codes, scales, offsets = random_weight(4, 32, 16, 128, False, seed=7)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(3))
    x[0, 5], x[1, 70], x[2, 127] = float("inf"), float("nan"), 2.0**80
    out = run(x, codes, scales, offsets, 32, torch.float32, None, 4, 16, 2)
    ref = reference(x, codes, scales, offsets, 4, 32, torch.float32, None, None)
    assert not out[:2].isfinite().any()
    torch.testing.assert_close(out[2], ref[2], rtol=1e-5, atol=0)
    check(out[3:], ref[3:], torch.float32)


def test_w4_sass_count_keeps_the_4bit_loops_lean():
    """``benchmarks/gpu/w4_sass_count.py --quick`` (sm_90 SASS compiled here, no GPU): the GEMV's K loop at one row
    (its lift decode: at most 3.8, 473 / 128 = 3.70)
    and the dot kernel's at a 64 x 128 tile issue at most 4.2 and 6.5 instructions per nibble (514 / 128 = 4.02 and
    730 / 128 = 5.70 with Triton 3.9; the dot kernel took 1,081 before session 30 loaded a tile's scales once and
    took the GEMV's decode), the paired decode's (triton_pair_decode) at most 4.5 (533 / 128 = 4.16), with no local
    memory."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "benchmarks/gpu/w4_sass_count.py", "--quick"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600, check=True).stdout
    gemv = re.findall(r"M=1 \d+ cols x \d+ warps: \d+ \(([\d.]+) per nibble", out)
    lift = re.findall(r"M=1 .*, lift: \d+ \(([\d.]+) per nibble", out)
    dot = re.findall(r"M tile 64 x 128 .*, fp32: \d+ \(([\d.]+) per nibble", out)
    paired = re.findall(r"M tile 64 x 128 .*, paired: \d+ \(([\d.]+) per nibble", out)
    assert len(gemv) == 1 and float(gemv[0]) <= 4.2, out
    assert len(dot) == 1 and float(dot[0]) <= 6.5, out
    assert len(paired) == 1 and float(paired[0]) <= 4.5, out
    assert len(lift) == 1 and float(lift[0]) <= 3.8, out
    assert re.findall(r"LOCAL:(\d+)", out) == ["0"] * 4, out
