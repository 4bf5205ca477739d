"""The Triton W4A16/W8A16 GEMM (pagoda.quantization.kernels.triton_wna16) against the dequantize reference.

Without a GPU it runs on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, set before triton is
first imported, as in test_triton_attention.py) at tiny sizes; with a GPU the same tests run the compiled
kernel on CUDA tensors, through :func:`int_weight_linear` (the ``triton`` layout).

Tolerance: fp32 1e-4 of the output's max magnitude; bf16/fp16 2e-2 of it (bf16 activations and output,
the bias added after rounding).
"""

import os

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import

import pytest  # noqa: E402

pytest.importorskip("triton")

from test_int_weight_cpu import TOL, random_weight, reference  # noqa: E402

from pagoda.quantization.int_weight import int_weight_linear, make_int_weight  # noqa: E402
from pagoda.quantization.kernels import triton_wna16 as tw  # noqa: E402

DEV = torch.device("cuda" if ON_GPU else "cpu")
TOL = {**TOL, torch.float16: 2e-2}

CASES = [  # bits, group, out, in, symmetric
    (4, 32, 48, 128, False),
    (4, 128, 40, 256, True),
    (4, 64, 32, 64, False),   # group == in_features
    (8, 32, 32, 64, True),
    (5, 32, 32, 64, False),
    (6, 16, 24, 64, True),    # Q6_K groups of 16
    (3, 32, 16, 32, False),
]


def run_kernel(x, codes, scales, offsets, bits, group, dtype, perm, bias):
    if ON_GPU:
        w = make_int_weight(codes.to(DEV), scales.to(DEV), offsets.to(DEV), bits, group, dtype,
                            perm.to(DEV) if perm is not None else None)
        assert w.layout == "triton"
        torch.testing.assert_close(w.plain_codes().cpu(), codes, rtol=0, atol=0)
        return int_weight_linear(x.to(DEV), w, bias.to(DEV) if bias is not None else None).cpu()
    xr = x.index_select(-1, perm) if perm is not None else x
    qw = tw.pack(codes, bits)
    assert torch.equal(tw.unpack(qw, bits), codes)
    s, o = scales.to(dtype).t().contiguous(), offsets.to(dtype).t().contiguous()
    return tw.wna16_matmul(xr, qw, s, o, bits, group, bias)


@pytest.mark.parametrize("bits,group,out_f,in_f,sym", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wna16_matches_dequantize_reference(bits, group, out_f, in_f, sym, dtype):
    codes, scales, offsets = random_weight(bits, group, out_f, in_f, sym, seed=bits * 100 + in_f)
    for m, use_perm in ((1, False), (3, True), (33, False)):
        perm = torch.randperm(in_f, generator=torch.Generator().manual_seed(m)) if use_perm else None
        x = torch.randn(m, in_f, generator=torch.Generator().manual_seed(m)).to(dtype)
        bias = torch.randn(out_f).to(dtype) if m == 3 else None
        ref = reference(x, codes, scales, offsets, bits, group, dtype, perm, bias)
        out = run_kernel(x, codes, scales, offsets, bits, group, dtype, perm, bias)
        assert out.dtype == dtype and out.shape == (m, out_f)
        err = (out.float() - ref).abs().max().item()
        assert err <= TOL[dtype] * ref.abs().max().item(), (m, err)


@pytest.mark.parametrize("kind,bm,split_k,dequant,group,swap", [
    ("gemv", 1, 1, True, 128, False), ("gemv", 4, 3, True, 32, False), ("gemv", 2, 2, True, 256, False),
    ("dot", 16, 1, True, 128, False), ("dot", 16, 3, False, 32, False), ("dot", 16, 2, True, 64, False),
    ("dot", 16, 2, True, 256, False), ("dot", 32, 1, False, 256, False),
    ("dot", 16, 1, True, 128, True), ("dot", 16, 3, True, 32, True), ("dot", 32, 2, True, 256, True),
])
def test_int4_kernels_explicit_configs_and_split_k(kind, bm, split_k, dequant, group, swap):
    """The 4-bit kernels (the dot also with its operands swapped), every K tile in exactly one split (also when the
    split does not divide the tile count), groups inside one tile (32, 64), equal to it (128) and spanning tiles
    (256); M not a multiple of the row block; N (72) not a multiple of the column block."""
    codes, scales, offsets = random_weight(4, group, 72, 768, False, seed=9)
    x = torch.randn(5, 768)
    ref = reference(x, codes, scales, offsets, 4, group, torch.float32, None, None)
    cfg = tw.WNA16Config(kind, bm, 32, tw.pack_k(768), split_k, dequant=dequant, swap=swap)
    out = tw.wna16_matmul(x.to(DEV), tw.pack(codes, 4).to(DEV), scales.t().contiguous().to(DEV),
                          offsets.t().contiguous().to(DEV), 4, group, config=cfg).cpu()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_swapped_dot_equals_the_dot_in_16_bit_activations(dtype):
    """``Rule.swap`` decodes the same weights and sums the same products per K tile as the unswapped dot: outputs
    within fp32 summation order of each other (16-bit out), both within the dequantize reference's tolerance;
    with a bias, M of 3 and 40 (a partial row block), a split that leaves one split a single tile."""
    codes, scales, offsets = random_weight(4, 128, 96, 640, True, seed=21)
    qw = tw.pack(codes, 4).to(DEV)
    s, o = (t.to(dtype).t().contiguous().to(DEV) for t in (scales, offsets))
    bias = torch.randn(96).to(dtype)
    for m in (3, 40):
        x = torch.randn(m, 640, generator=torch.Generator().manual_seed(m)).to(dtype)
        ref = reference(x, codes, scales, offsets, 4, 128, dtype, None, bias)
        outs = []
        for swap in (False, True):
            cfg = tw.WNA16Config("dot", 32, 64, 128, 3, swap=swap)  # 5 K tiles: splits of 2, 2, 1
            out = tw.wna16_matmul(x.to(DEV), qw, s, o, 4, 128, bias.to(DEV), config=cfg).cpu()
            assert (out.float() - ref).abs().max() <= TOL[dtype] * ref.abs().max()
            outs.append(out.float())
        torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=2 ** -7 * outs[0].abs().max().item())
    assert tw.resolve(tw.Rule("dot", 64, swap=True), 40, 96, 640, 128, 4).swap  # the rule's switch reaches the launch


@pytest.mark.parametrize("bits,group,in_f", [(4, 32, 768), (4, 128, 256), (4, 256, 512), (4, 32, 96), (8, 32, 64),
                                             (5, 16, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deq_kind_dequantizes_exactly_then_matmuls(bits, group, in_f, dtype):
    """``Rule('deq')`` (large M): the dense copy holds ``q * s + o`` rounded once to the activation dtype, for every
    code and K tile (4-bit K tiles of 128 and of 32 rows, 8-bit and 5-bit codes); the product matches the
    reference; a bias is added; the rule resolves to one launch with no split."""
    codes, scales, offsets = random_weight(bits, group, 40, in_f, False, seed=in_f + bits)
    qw = tw.pack(codes, bits).to(DEV)
    s, o = scales.t().contiguous().to(dtype).to(DEV), offsets.t().contiguous().to(dtype).to(DEV)
    dense = tw.dequantize(qw, s, o, bits, group, dtype).cpu()
    g = torch.arange(in_f) // group
    want = (codes.float() * s.cpu().float().t()[:, g] + o.cpu().float().t()[:, g]).to(dtype)
    assert dense.shape == (in_f, 40)
    if dtype == torch.bfloat16 and not ON_GPU:  # the interpreter casts fp32 -> bf16 by truncation (GPU: nearest)
        assert ((dense.float() - want.t().float()).abs() <= want.t().float().abs() * 2**-7).all()
    elif dtype == torch.float32 and ON_GPU:  # fp32 scales: the GPU fuses q * s + o into one FMA (torch rounds twice)
        torch.testing.assert_close(dense, want.t(), rtol=2**-22, atol=2**-22 * want.abs().max().item())
    else:  # bf16 on the GPU (q * s is exact in fp32: one rounding either way), fp32 in the interpreter
        assert torch.equal(dense, want.t())
    cfg = tw.resolve(tw.Rule("deq", 64), 300, 40, in_f, group, 4)
    assert (cfg.kind, cfg.split_k) == ("deq", 1)
    x = torch.randn(6, in_f).to(dtype)
    bias = torch.randn(40).to(dtype)
    out = tw.wna16_matmul(x.to(DEV), qw, s, o, bits, group, bias.to(DEV), config=cfg).cpu()
    ref = reference(x, codes, scales.to(dtype), offsets.to(dtype), bits, group, dtype, None, bias)
    assert (out.float() - ref).abs().max() <= TOL[dtype] * ref.abs().max()


def test_int4_layout_is_sub_block_interleaved():
    """Nibble j of word (t*P/8 + r, n) holds the code of row t*P + j*P/8 + r (P = pack_k(K))."""
    k, n = 256, 3
    codes = (torch.arange(n * k) % 16).view(n, k).to(torch.uint8)
    qw = tw.pack(codes, 4)
    p = tw.pack_k(k)
    assert qw.shape == (k // 8, n) and p == 128
    for t, j, r in ((0, 0, 0), (1, 7, 15), (0, 3, 5), (1, 1, 2)):
        word = int(qw[t * p // 8 + r, 2]) & 0xFFFFFFFF
        assert (word >> (4 * j)) & 0xF == codes[2, t * p + j * p // 8 + r]
    assert torch.equal(tw.unpack(qw, 4), codes)
    assert tw.pack_k(96) == 32 and tw.pack_k(4096) == 128


def test_choose_config_invariants():
    for m in (1, 3, 16, 17, 64, 300):
        for n, k, g in ((4096, 4096, 128), (28672, 4096, 128), (4096, 14336, 128), (576, 576, 32), (64, 64, 64)):
            for bits in (4, 8):
                c = tw.choose_config(m, n, k, g, 132, bits)
                if c.kind == "deq":  # large M: the dense copy, one launch
                    assert m > (64 if bits == 4 else 128) and c.split_k == 1
                    continue
                assert k // c.block_k >= c.split_k >= 1 and k % c.block_k == 0
                assert (c.kind == "u8") == (bits == 8)
                if c.kind == "u8":
                    assert g % c.block_k == 0 and c.block_k >= 16
                if c.kind == "dot":
                    assert c.block_k == 128 and c.block_m >= 16
    assert tw.choose_config(1, 4096, 4096, 128, 132).split_k > 1  # decode GEMV: the grid must fill the GPU
    assert tw.choose_config(64, 576, 576, 32, 132).kind == "gemv"  # K % 128 != 0: no 16-row sub-blocks
    assert not tw.supported(4, 8, 64) and not tw.supported(4, 24, 72) and tw.supported(6, 16, 64)


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA: a CPU-packed weight moved to the GPU is repacked for Triton")
def test_cpu_packed_weight_moved_to_gpu_is_repacked():
    codes, scales, offsets = random_weight(4, 32, 64, 128, False, seed=11)
    w = make_int_weight(codes, scales, offsets, 4, 32, torch.bfloat16)
    assert w.layout == "cpu_int4"
    w.to(DEV)
    assert w.layout == "triton" and w.codes.is_cuda
    torch.testing.assert_close(w.plain_codes().cpu(), codes, rtol=0, atol=0)
    x = torch.randn(2, 128).to(torch.bfloat16)
    ref = reference(x, codes, scales, offsets, 4, 32, torch.bfloat16, None, None)
    out = int_weight_linear(x.to(DEV), w).cpu()
    assert (out.float() - ref).abs().max() <= TOL[torch.bfloat16] * ref.abs().max()


@pytest.mark.parametrize("rule", [tw.Rule("dot", 64, pdl=True), tw.Rule("deq", 64, pdl=True), tw.Rule("mma", 64),
                                  tw.Rule("gemv", 64, swap=True), tw.Rule("dot", 64, dequant=False, swap=True)])
def test_a_rule_no_kernel_runs_is_refused(rule):
    """A table rule whose kernel does not exist or lacks its PDL switch is an error, never silently ignored."""
    with pytest.raises(ValueError, match="no kernel runs"):
        tw.resolve(rule, 4, 64, 256, 32, 4)
