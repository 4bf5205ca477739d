"""IntWeight's CPU kernels (torch int4pack / int8pack, and the plain fallback) against the dequantize
reference: a ``plain`` IntWeight with the same codes, scales and offsets, dequantized and multiplied
by ``F.linear`` in fp32.

Tolerance: fp32 1e-4 of the output's max magnitude (the kernels accumulate in another order); bf16
2e-2 of it (activations and outputs are bf16, and the int4pack zero ``o + 8 s`` is rounded once to bf16).
"""

import pytest
import torch
import torch.nn.functional as F

from pagoda.quantization.int_weight import IntWeight, int_weight_linear, make_int_weight

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def random_weight(bits, group, out_f, in_f, sym, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (out_f, in_f), generator=gen, dtype=torch.uint8)
    scales = torch.rand(out_f, in_f // group, generator=gen) * 0.05 + 0.01
    offsets = -(2 ** (bits - 1)) * scales if sym else torch.randn(out_f, in_f // group, generator=gen) * 0.05
    return codes, scales, offsets


def reference(x, codes, scales, offsets, bits, group, dtype, perm, bias):
    plain = IntWeight(codes, scales.to(dtype), offsets.to(dtype), bits, group, perm)
    assert plain.layout == "plain"
    xr = x.index_select(-1, perm) if perm is not None else x
    b = bias.float() if bias is not None else None
    return F.linear(xr.float(), plain.dequantize(torch.float32), b)


CASES = [  # bits, group, out, in, symmetric, expected CPU layout
    (4, 32, 48, 128, False, "cpu_int4"),   # GGUF Q4_1-like
    (4, 128, 32, 256, True, "cpu_int4"),   # GPTQ/AWQ-like
    (4, 64, 16, 64, False, "cpu_int4"),    # group == in_features
    (8, 32, 32, 64, True, "cpu_int4"),     # Q8_0: two nibble planes
    (8, 64, 32, 64, True, "cpu_int8"),     # per-channel symmetric 8-bit
    (8, 64, 32, 64, False, "cpu_int4"),    # per-channel asymmetric 8-bit
    (5, 32, 32, 64, False, "cpu_int4"),    # Q5_*
    (6, 16, 32, 64, True, "plain"),        # Q6_K groups of 16: no int4pack group
    (4, 32, 24, 64, False, "plain"),       # out_features not a multiple of 16
]


@pytest.mark.parametrize("bits,group,out_f,in_f,sym,layout", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_matches_dequantize_reference(bits, group, out_f, in_f, sym, layout, dtype):
    codes, scales, offsets = random_weight(bits, group, out_f, in_f, sym, seed=bits * 1000 + group + in_f)
    for use_perm in (False, True):
        perm = torch.randperm(in_f, generator=torch.Generator().manual_seed(1)) if use_perm else None
        w = make_int_weight(codes, scales, offsets, bits, group, dtype, perm)
        assert w.layout == layout
        torch.testing.assert_close(w.plain_codes(), codes, rtol=0, atol=0)
        for m in (1, 3, 33):
            x = torch.randn(m, in_f, generator=torch.Generator().manual_seed(m)).to(dtype)
            bias = torch.randn(out_f).to(dtype) if m == 3 else None
            ref = reference(x, codes, scales, offsets, bits, group, dtype, perm, bias)
            out = int_weight_linear(x, w, bias)
            assert out.dtype == dtype and out.shape == (m, out_f)
            err = (out.float() - ref).abs().max().item()
            assert err <= TOL[dtype] * ref.abs().max().item(), (layout, m, err)


def test_dequantize_and_group_params_keep_meaning():
    codes, scales, offsets = random_weight(4, 32, 32, 64, False, seed=3)
    w = make_int_weight(codes, scales, offsets, 4, 32, torch.float32)
    assert w.layout == "cpu_int4" and w.scales is None
    dense = (codes.view(32, -1, 32).float() * scales.unsqueeze(-1) + offsets.unsqueeze(-1)).view(32, 64)
    torch.testing.assert_close(w.dequantize(), dense, rtol=1e-6, atol=1e-6)
    s, o = w.group_params()
    torch.testing.assert_close(s, scales)
    torch.testing.assert_close(o, offsets, rtol=1e-6, atol=1e-6)


def test_packed_storage_is_about_bits_per_weight():
    codes, scales, offsets = random_weight(4, 32, 64, 256, False, seed=4)
    w = make_int_weight(codes, scales, offsets, 4, 32, torch.bfloat16)
    nbytes = sum(b.numel() * b.element_size() for b in w.buffers())
    assert nbytes == 64 * 256 // 2 + 64 * (256 // 32) * 2 * 2  # 4 bits + a bf16 scale and zero per 32: Q4_1's 5


def test_dtype_move_repacks():
    codes, scales, offsets = random_weight(4, 32, 32, 64, False, seed=5)
    w = make_int_weight(codes, scales, offsets, 4, 32, torch.float32)
    w.to(torch.bfloat16)
    assert w.layout == "cpu_int4" and w.dtype == torch.bfloat16
    torch.testing.assert_close(w.plain_codes(), codes, rtol=0, atol=0)
    x = torch.randn(2, 64).to(torch.bfloat16)
    ref = reference(x, codes, scales, offsets, 4, 32, torch.bfloat16, None, None)
    assert (int_weight_linear(x, w).float() - ref).abs().max() <= 2e-2 * ref.abs().max()


def test_leading_dims_and_empty_batch():
    codes, scales, offsets = random_weight(4, 32, 32, 64, False, seed=6)
    w = make_int_weight(codes, scales, offsets, 4, 32, torch.float32)
    x = torch.randn(2, 3, 64)
    ref = reference(x, codes, scales, offsets, 4, 32, torch.float32, None, None)
    torch.testing.assert_close(int_weight_linear(x, w), ref, rtol=1e-4, atol=1e-4)
    assert int_weight_linear(torch.randn(0, 64), w).shape == (0, 32)


def test_bad_input_is_a_value_error():
    codes, scales, offsets = random_weight(4, 32, 32, 64, False, seed=7)
    with pytest.raises(ValueError, match="exceeds 4 bits"):
        make_int_weight(codes | 16, scales, offsets, 4, 32, torch.float32)
    with pytest.raises(ValueError, match="do not agree"):
        make_int_weight(codes, scales[:, :1], offsets[:, :1], 4, 32, torch.float32)
    with pytest.raises(ValueError, match="perm"):
        make_int_weight(codes, scales, offsets, 4, 32, torch.float32, perm=torch.arange(10))
    with pytest.raises(ValueError, match="9-bit"):
        make_int_weight(codes, scales, offsets, 9, 32, torch.float32)


@pytest.mark.parametrize("bits,group,out_f,layout", [(4, 32, 128, "cpu_int4"), (8, 32, 64, "cpu_int4"),
                                                      (4, 32, 48, "cpu_int4"), (8, 128, 64, "cpu_int8")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_rows_take_the_dequantize_once_path(bits, group, out_f, layout, dtype):
    """Above DEQUANT_MIN_M (DEQUANT_MIN_M_NATIVE, DEQUANT_MIN_M_NATIVE_AVX2) rows the packed weight is unpacked
    once (int4pack: a block layout of ``cpu_woq.block_width()`` columns dividing N) and multiplied by a dense GEMM;
    N = 48 stays on int4pack. All must match the reference."""
    from pagoda.quantization.kernels import cpu_woq
    codes, scales, offsets = random_weight(bits, group, out_f, 128, bits == 8, seed=bits + out_f)
    w = make_int_weight(codes, scales, offsets, bits, group, dtype)
    assert w.layout == layout
    rows = max(cpu_woq.DEQUANT_MIN_M, cpu_woq.DEQUANT_MIN_M_NATIVE, cpu_woq.DEQUANT_MIN_M_NATIVE_AVX2) + 1
    x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(0)).to(dtype)
    ref = reference(x, codes, scales, offsets, bits, group, dtype, None, None)
    err = (int_weight_linear(x, w).float() - ref).abs().max().item()
    assert err <= TOL[dtype] * ref.abs().max().item()


def test_int4pack_block_layout_is_recognized_and_unpacks_exactly():
    """torch's int4pack layout is recognized on x86-64 (AVX-512: 64-column blocks, AVX2: 32), so prefill rows take
    the dequantize-once path there, and unpacking it gives back the codes the dequantize reference uses."""
    import platform

    from pagoda.quantization.kernels import cpu_woq

    if platform.machine() not in ("x86_64", "AMD64") or not cpu_woq.int4_supported(4, 32, 128):
        pytest.skip("torch's int4pack layouts are probed on x86-64 only")
    width = cpu_woq.block_width()
    assert width in cpu_woq.BLOCK_WIDTHS
    codes, scales, offsets = random_weight(4, 32, 128, 64, False, seed=11)
    parts = cpu_woq.pack_int4(codes, scales, offsets, 4, torch.float32)
    dense_t = cpu_woq._dequantized_t(parts, 128, 64, 32, torch.float32, width)
    torch.testing.assert_close(dense_t.t(), cpu_woq.dequantize_int4(parts, 64, 32, torch.float32), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("sym", [True, False])
def test_tinygemm_scales_and_zeros_mapping_on_the_cpu_twin(sym):
    """The CUDA tinygemm op shares ``(q - 8) * s + z`` and the ``[K/G, N, 2]`` layout with its CPU twin, whose
    packing is different: the canonical mapping is checked here through the twin (the CUDA op in
    tests/gpu/test_gpu_int4_kernels.py)."""
    from pagoda.quantization.kernels import tinygemm

    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        pytest.skip("no _weight_int4pack_mm_for_cpu in this torch")
    codes, scales, offsets = random_weight(4, 32, 32, 128, sym, seed=5)
    x = torch.randn(3, 128).bfloat16()
    ref = reference(x, codes, scales, offsets, 4, 32, torch.bfloat16, None, None)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, tinygemm.scales_and_zeros(scales, offsets))
    assert (out.float() - ref).abs().max() <= TOL[torch.bfloat16] * ref.abs().max()


def test_bf16_dense_copy_serves_many_rows_and_matches_reference(monkeypatch):
    """``pack_int_weight_copies``: from ``DENSE_MIN_M`` rows the bf16 oneDNN copy runs (same result as the
    dequantize reference), below it the int kernel; over the byte budget no copy is made."""
    from torch import nn

    from pagoda.layers.cpu_linear import pack_int_weight_copies, packed_linear
    from pagoda.quantization.kernels import cpu_woq

    bits, group, out_f, in_f = 4, 32, 64, 128
    codes, scales, offsets = random_weight(bits, group, out_f, in_f, False, seed=7)
    holder = nn.Module()
    holder.w = make_int_weight(codes, scales, offsets, bits, group, torch.bfloat16)
    w = holder.w
    monkeypatch.setattr(cpu_woq, "DENSE_COPY_MAX_BYTES", 2 * out_f * in_f - 1)
    assert pack_int_weight_copies(holder, 32) == (0, 0) and w.dense_packed is None
    monkeypatch.setattr(cpu_woq, "DENSE_COPY_MAX_BYTES", 2 * out_f * in_f)
    n, nbytes = pack_int_weight_copies(holder, 32)
    if n == 0:
        pytest.skip("oneDNN cannot prepack bf16 linear weights here (this torch build or this CPU, e.g. AVX2-only)")
    assert nbytes == 2 * out_f * in_f and w.dense_packed is not None
    for m in (1, cpu_woq.DENSE_MIN_M - 1, cpu_woq.DENSE_MIN_M, 33):
        x = torch.randn(m, in_f, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
        ref = reference(x, codes, scales, offsets, bits, group, torch.bfloat16, None, None)
        out = int_weight_linear(x, w)
        torch.testing.assert_close(out.float(), ref, rtol=0, atol=TOL[torch.bfloat16] * ref.abs().max().item())
        dense = packed_linear(x, w.dense_packed, None)
        if m >= cpu_woq.DENSE_MIN_M:
            assert torch.equal(out, dense)
        else:
            assert torch.equal(out, cpu_woq.int4_matmul(x, w._parts(), group))
