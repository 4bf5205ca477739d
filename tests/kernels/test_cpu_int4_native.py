"""The native multi-row int4 CPU kernels (quantization/kernels/cpu_int4_gemm.c for AVX-512, cpu_int4_gemm_avx2.c
for AVX2, whichever this CPU runs; the AVX2 one also in a subprocess with torch pinned to AVX2) against torch's
int4pack kernel:
bitwise equal outputs (the reference is ``aten::_weight_int4pack_mm_for_cpu`` itself, the kernel the native one
replaces), at every row count, for 4-bit and two-plane 8-bit weights; and an :class:`IntWeight` row computed
alone equals the same row inside a 32-row batch (the values do not depend on the batch size)."""

import pytest
import torch

from pagoda.quantization.int_weight import int_weight_linear, make_int_weight
from pagoda.quantization.kernels import cpu_int4_dot, cpu_int4_native, cpu_woq

pytestmark = pytest.mark.skipif(not cpu_int4_native.available(),
                                reason="no native int4 kernel here (not x86-64 AVX-512, or no C compiler)")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


@pytest.mark.parametrize("n,k,group", [(64, 64, 32), (192, 256, 64), (128, 384, 128), (320, 96, 32)])
def test_native_is_bitwise_torch_int4pack(n, k, group):
    gen = torch.Generator().manual_seed(n + k + group)
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = (torch.randn(k // group, n, 2, generator=gen) * 0.05).to(torch.bfloat16)
    for m in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 25, 32, 40):  # 1..8: in-register path (whole/half blocks)
        x = (torch.randn(m, k, generator=gen) * 3).to(torch.bfloat16)
        ref = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz)
        out = cpu_int4_native.int4_mm(x, packed, group, sz)
        assert out is not None
        assert torch.equal(_bits(out), _bits(ref)), (m, (out.float() - ref.float()).abs().max())


def test_native_declines_what_it_does_not_cover():
    q = torch.randint(0, 16, (48, 64), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)  # 48 rows: not a whole 32/64-column block
    sz = torch.ones(2, 48, 2, dtype=torch.bfloat16)
    assert cpu_int4_native.int4_mm(torch.ones(8, 64, dtype=torch.bfloat16), packed, 32, sz) is None
    assert cpu_int4_native.int4_mm(torch.ones(8, 64), packed, 32, sz.float()) is None  # fp32 activations


@pytest.mark.parametrize("bits,sym", [(4, False), (8, True)])
def test_int_weight_rows_do_not_depend_on_the_batch(monkeypatch, bits, sym):
    monkeypatch.setattr(cpu_int4_dot, "ENABLED", False)  # this kernel's arithmetic (test_cpu_int4_dot.py: the other)
    gen = torch.Generator().manual_seed(bits)
    out_f, in_f, group = 192, 128, 32
    codes = torch.randint(0, 2**bits, (out_f, in_f), generator=gen, dtype=torch.uint8)
    scales = torch.rand(out_f, in_f // group, generator=gen) * 0.05 + 0.01
    offsets = -(2 ** (bits - 1)) * scales if sym else torch.randn(out_f, in_f // group, generator=gen) * 0.05
    w = make_int_weight(codes, scales, offsets, bits, group, torch.bfloat16)
    assert w.layout == "cpu_int4"
    x = torch.randn(32, in_f, generator=gen).to(torch.bfloat16)
    batch = int_weight_linear(x, w)  # 32 rows: the native kernel's panel path
    single = torch.cat([int_weight_linear(x[i : i + 1], w) for i in range(32)])  # 1 row (AVX2: native)
    verify = torch.cat([int_weight_linear(x[i : i + 4], w) for i in range(0, 32, 4)])  # 4 rows: in-register path
    assert torch.equal(_bits(batch), _bits(single)) and torch.equal(_bits(verify), _bits(single))
    monkeypatch.setattr(cpu_int4_native, "min_rows", lambda: 10**9)  # torch's kernel for every row count
    assert torch.equal(_bits(cpu_woq.int4_matmul(x, w._parts(), group)), _bits(batch))
    monkeypatch.setattr(cpu_int4_native, "min_rows", lambda: 1)  # the native kernel for one row too
    assert torch.equal(_bits(torch.cat([int_weight_linear(x[i : i + 1], w) for i in range(32)])), _bits(single))


AVX2_CHECK = """
import torch
from pagoda.quantization.kernels import cpu_int4_native
assert torch.backends.cpu.get_cpu_capability() == "AVX2", torch.backends.cpu.get_cpu_capability()
assert cpu_int4_native.width() == 32 and cpu_int4_native.available()
gen = torch.Generator().manual_seed(7)
for n, k, g in ((96, 256, 32), (64, 128, 128)):
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = (torch.randn(k // g, n, 2, generator=gen) * 0.05).to(torch.bfloat16)
    for m in (1, 2, 3, 4, 5, 6, 7, 12, 13):
        x = (torch.randn(m, k, generator=gen) * 3).to(torch.bfloat16)
        ref = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, g, sz)
        out = cpu_int4_native.int4_mm(x, packed, g, sz)
        assert out is not None and torch.equal(out.view(torch.int16), ref.view(torch.int16)), (n, k, m)
print("ok")
"""


def test_avx2_kernel_is_bitwise_torch_avx2_int4pack():
    """torch pinned to its AVX2 kernels (ATEN_CPU_CAPABILITY=avx2: 32-column int4pack blocks) runs the AVX2 native
    kernel, bitwise equal to torch's at every row count; so an AVX-512 machine tests the AVX2 kernel too."""
    import os
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64") or \
            "avx2" not in open("/proc/cpuinfo").read() or not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        pytest.skip("needs Linux x86-64 with AVX2")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    r = subprocess.run([sys.executable, "-c", AVX2_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
