"""The bf16-dot int4 CPU kernel (quantization/kernels/cpu_int4_dot.c; AVX-512 with BF16 only; its vdpbf16ps build and,
on AMX-BF16 CPUs, its AMX build, every test on each): its values against
the exact product (float64) within a bf16 rounding, at every tile shape (1..8 rows whole or half 64-column blocks,
8-row passes above); a row's bits do not depend on the other rows (alone, in a verify-sized call, in a 32-row
batch: through :func:`int_weight_linear`, 4-bit and two-plane 8-bit); and what it declines."""

import copy

import pytest
import torch
from test_int_weight_cpu import random_weight

from pagoda.quantization.int_weight import int_weight_linear, make_int_weight
from pagoda.quantization.kernels import cpu_int4_dot

pytestmark = pytest.mark.skipif(not cpu_int4_dot.available(),
                                reason="no bf16-dot int4 kernel here (needs x86-64 AVX512-BF16 and a C compiler)")


@pytest.fixture(autouse=True, params=["vdpbf16ps", "amx"])
def build(request, monkeypatch):
    """Every test on each build this CPU runs: the vdpbf16ps one, and the AMX one where the CPU has AMX-BF16."""
    amx = request.param == "amx"
    if amx and cpu_int4_dot._amx_library() is None:  # noqa: SLF001
        pytest.skip("no AMX-BF16 here (or the AMX build did not compile / pass its self-check)")
    monkeypatch.setattr(cpu_int4_dot, "AMX", amx)
    lib = cpu_int4_dot.library()
    assert lib is not None and (lib is cpu_int4_dot._amx_library()) == amx  # noqa: SLF001
    return request.param


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


@pytest.mark.parametrize("n,k,group", [(64, 64, 32), (192, 256, 64), (128, 384, 128), (320, 96, 32), (960, 576, 32)])
def test_values_within_a_bf16_rounding_of_the_exact_product(n, k, group):
    gen = torch.Generator().manual_seed(n + k + group)
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = (torch.randn(k // group, n, 2, generator=gen) * 0.05).to(torch.bfloat16)
    x = (torch.randn(40, k, generator=gen) * 3).to(torch.bfloat16)
    ref = cpu_int4_dot.reference(x, packed, group, sz)
    tol = ref.abs() * 2.0**-8 + cpu_int4_dot.reference(x, packed, group, sz, magnitude=True) * 2.0**-18
    full = cpu_int4_dot.int4_dot_mm(x, packed, group, sz)
    assert full is not None
    assert bool(((full.double() - ref).abs() <= tol).all()), ((full.double() - ref).abs() - tol).max()
    # torch's int4pack kernel is as far from the exact value (another rounding order, not other weights)
    torch_out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz)
    assert bool(((torch_out.double() - ref).abs() <= tol).all())
    for m in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 17, 25, 32):  # one build at every row count: rows alone = in a batch
        out = cpu_int4_dot.int4_dot_mm(x[:m], packed, group, sz, one_kernel=True)
        assert out is not None and torch.equal(_bits(out), _bits(full[:m])), m
    one = cpu_int4_dot.int4_dot_mm(x[:1], packed, group, sz)  # a one-row call's own build: within the same bound
    assert one is not None and bool(((one.double() - ref[:1]).abs() <= tol[:1]).all())


@pytest.mark.parametrize("group", [32, 128])
def test_prefill_rows_are_the_rows_alone(group):
    """Many rows in one call (from 48 rows the AMX build decodes a block's weights once for all their 16-row tiles,
    the last tile overlapping the one before): every row has the bits it has alone and in a 16-row call, at row
    counts on both sides of that threshold and with every kind of last tile."""
    n, k = 192, 256
    gen = torch.Generator().manual_seed(group)
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = (torch.randn(k // group, n, 2, generator=gen) * 0.05).to(torch.bfloat16)
    x = (torch.randn(530, k, generator=gen) * 3).to(torch.bfloat16)
    alone = torch.cat([cpu_int4_dot.int4_dot_mm(x[i : i + 1], packed, group, sz, one_kernel=True) for i in range(530)])
    sixteen = torch.cat([cpu_int4_dot.int4_dot_mm(x[i : i + 16], packed, group, sz) for i in range(0, 530, 16)])
    assert torch.equal(_bits(sixteen), _bits(alone))
    for m in (17, 31, 33, 47, 48, 49, 130, 256, 257, 530):
        out = cpu_int4_dot.int4_dot_mm(x[:m], packed, group, sz)
        assert out is not None and torch.equal(_bits(out), _bits(alone[:m])), m
    ref = cpu_int4_dot.reference(x, packed, group, sz)
    tol = ref.abs() * 2.0**-8 + cpu_int4_dot.reference(x, packed, group, sz, magnitude=True) * 2.0**-18
    assert bool(((alone.double() - ref).abs() <= tol).all())


@pytest.mark.parametrize("bits,sym", [(4, False), (8, True)])
def test_int_weight_rows_do_not_depend_on_the_batch(bits, sym):
    out_f, in_f, group = 192, 128, 32
    codes, scales, offsets = random_weight(bits, group, out_f, in_f, sym, seed=bits + 10)
    w = make_int_weight(codes, scales, offsets, bits, group, torch.bfloat16)
    assert w.layout == "cpu_int4"
    w.one_kernel = True  # what speculative decoding sets (and --deterministic's per_row implies): one build
    x = torch.randn(32, in_f, generator=torch.Generator().manual_seed(bits + 11)).to(torch.bfloat16)
    batch = int_weight_linear(x, w)
    single = torch.cat([int_weight_linear(x[i : i + 1], w) for i in range(32)])
    verify = torch.cat([int_weight_linear(x[i : i + 5], w) for i in range(0, 30, 5)] + [int_weight_linear(x[30:], w)])
    assert torch.equal(_bits(batch), _bits(single)) and torch.equal(_bits(verify), _bits(single))
    ref = x.double() @ w.dequantize(torch.float64).t()
    assert (batch.double() - ref).abs().max() <= 2.0**-7 * ref.abs().max()


def test_declines_what_it_does_not_cover():
    q = torch.randint(0, 16, (48, 64), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)  # 48 rows: not a whole 64-column block
    sz = torch.ones(2, 48, 2, dtype=torch.bfloat16)
    assert cpu_int4_dot.int4_dot_mm(torch.ones(8, 64, dtype=torch.bfloat16), packed, 32, sz) is None
    q = torch.randint(0, 16, (64, 64), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = torch.ones(2, 64, 2, dtype=torch.bfloat16)
    assert cpu_int4_dot.int4_dot_mm(torch.ones(8, 64), packed, 32, sz) is None  # float32 activations
    assert cpu_int4_dot.int4_dot_mm(torch.ones(8, 64, dtype=torch.bfloat16), packed, 32, sz.float()) is None


def test_bound_call_computes_what_the_general_path_does(monkeypatch):
    """A 4-bit weight gets a :class:`BoundCall` (the small-step fast path of ``int_weight_linear``); its outputs are
    the general path's bits at every row count it takes; two-plane 8-bit weights, 3-d inputs and a bias take the
    general path."""
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (192, 128), generator=gen, dtype=torch.uint8)
    scales = torch.rand(192, 4, generator=gen) * 0.05 + 0.01
    w = make_int_weight(codes, scales, torch.randn(192, 4, generator=gen) * 0.05, 4, 32, torch.bfloat16)
    assert w.bound_call is not None
    x = torch.randn(40, 128, generator=gen).to(torch.bfloat16)
    for m in (1, 5, 8, 9, 40):
        fast = int_weight_linear(x[:m], w)
        monkeypatch.setattr(cpu_int4_dot, "BOUND_CALLS", False)
        general = int_weight_linear(x[:m], w)
        monkeypatch.setattr(cpu_int4_dot, "BOUND_CALLS", True)
        assert torch.equal(_bits(fast), _bits(general)), m
    assert not w.bound_call.takes(x.view(4, 10, 128)) and not w.bound_call.takes(x.float())
    assert not w.bound_call.takes(x[:, :64]) and not w.bound_call.takes(x[:0])
    copied = copy.deepcopy(w)  # re-bound to the copy's tensors (a ctypes pointer cannot be copied)
    assert copied.bound_call is not None
    assert torch.equal(_bits(int_weight_linear(x, copied)), _bits(int_weight_linear(x, w)))
    w8 = make_int_weight(codes * 16 + codes, scales, -128 * scales, 8, 32, torch.bfloat16)
    assert w8.layout == "cpu_int4" and w8.bound_call is None  # two nibble planes: the general path sums them


def test_one_row_calls_take_the_one_row_build(build):
    """Where the AMX build serves several rows, a one-row call takes the vdpbf16ps build (the AMX tiles' stores and
    loads cost more than they save for one row), unless the weight needs one build at every row count."""
    codes = torch.randint(0, 16, (128, 64), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    w = make_int_weight(codes, torch.full((128, 2), 0.01), torch.zeros(128, 2), 4, 32, torch.bfloat16)
    bound = w.bound_call
    assert bound is not None
    plain, amx = cpu_int4_dot._plain_library(), cpu_int4_dot._amx_library()  # noqa: SLF001
    assert cpu_int4_dot.one_row_library() is plain
    assert bound._fn1 is plain.pagoda_int4_dot_mm  # noqa: SLF001
    assert bound._fn is (amx if build == "amx" else plain).pagoda_int4_dot_mm  # noqa: SLF001


def test_grid_round_moves_only_small_elements_and_not_far():
    """grid_round (the C kernel's first step, mirrored): every element >= 2^(e + 8 - b) for the group's largest in
    [2^e, 2^(e+1)) stays as it is; the others move by at most half a step, 2^(e - b); tiny groups become zeros, inf
    or NaN groups and groups above the grid's limit are left alone."""
    gen = torch.Generator().manual_seed(11)
    for group in (32, 128, 256):
        b = cpu_int4_dot.grid_bits(group)
        x = (torch.randn(8, 4 * group, generator=gen) * torch.exp(torch.randn(8, 4 * group, generator=gen) * 5))
        x = x.to(torch.bfloat16)
        r = cpu_int4_dot.grid_round(x, group)
        g, rg = x.double().view(8, 4, group), r.double().view(8, 4, group)
        amax = g.abs().amax(-1, keepdim=True)
        e = torch.floor(torch.log2(amax))
        keep = g.abs() >= torch.exp2(e + 8 - b)
        assert torch.equal(rg[keep], g[keep])
        assert bool(((rg - g).abs() <= torch.exp2(e - b)).all())
        assert torch.equal(r.to(torch.float32).to(torch.bfloat16), r)  # every value is a bf16
    tiny = torch.full((1, 32), 2.0**-110).to(torch.bfloat16)
    assert torch.equal(cpu_int4_dot.grid_round(tiny, 32), torch.zeros_like(tiny))
    odd = torch.ones(1, 64, dtype=torch.bfloat16)
    odd[0, 3] = float("inf")
    odd[0, 40] = 3e-5
    assert torch.equal(cpu_int4_dot.grid_round(odd, 32)[0, :32], odd[0, :32])  # inf: left alone
    assert cpu_int4_dot.grid_round(odd, 32)[0, 40] != odd[0, 40]  # 3e-5 next to 1.0: moved to the grid
    wide = torch.exp(torch.randn(1, 512, generator=gen) * 5).to(torch.bfloat16)
    assert torch.equal(cpu_int4_dot.grid_round(wide, 512), wide)  # a group above the grid's limit: left alone


@pytest.mark.parametrize("group", [32, 128, 256])
def test_the_two_builds_give_the_same_bits(group):
    """On grid-rounded rows a group's sum is exact in fp32 in any order: the AMX build's tile products and the
    vdpbf16ps build's pairs agree bit for bit at every row count, so a one-row call may take either (a speculating
    engine's decode rows on vdpbf16ps, its verify rows on AMX, as a non-speculating engine's)."""
    amx, plain = cpu_int4_dot._amx_library(), cpu_int4_dot._plain_library()  # noqa: SLF001
    if amx is None or plain is None:
        pytest.skip("one build only here: nothing to compare")
    assert cpu_int4_dot.builds_agree() and not cpu_int4_dot.one_kernel_needed(group)
    assert cpu_int4_dot.one_kernel_needed(512)  # above the grid's limit the builds may differ
    gen = torch.Generator().manual_seed(group)
    n, k = 192, 4 * group
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = (torch.randn(k // group, n, 2, generator=gen) * 0.05).to(torch.bfloat16)
    x = (torch.randn(60, k, generator=gen) * torch.exp(torch.randn(60, k, generator=gen) * 4)).to(torch.bfloat16)
    for m in (1, 3, 5, 8, 9, 16, 17, 33, 60):
        a = cpu_int4_dot._call(amx.pagoda_int4_dot_mm, x[:m], packed, group, sz)  # noqa: SLF001
        p = cpu_int4_dot._call(plain.pagoda_int4_dot_mm, x[:m], packed, group, sz)  # noqa: SLF001
        assert a is not None and p is not None and torch.equal(_bits(a), _bits(p)), m
