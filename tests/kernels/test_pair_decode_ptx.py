"""The paired 4-bit decode's PTX (:mod:`pagoda.quantization.kernels.triton_pair_decode`) run by a small emulator of its
four instructions, on the CPU: every nibble position of real packed words, bf16 and fp16, against ``q * s + o``
rounded once. Inline PTX never runs under the Triton interpreter; ``tests/gpu/test_gpu_int4_kernels.py`` checks the
compiled kernels on a GPU, this guards the selectors, masks and constants wherever CI runs."""

from __future__ import annotations

import re

import pytest
import torch

from pagoda.quantization.kernels import triton_pair_decode as pd
from pagoda.quantization.kernels import triton_wna16 as tw

M32 = 0xFFFFFFFF


def _halves(v: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([v & 0xFFFF, v >> 16], dtype=torch.int32).to(torch.int16).view(dtype)


def _pack(h: torch.Tensor) -> int:
    lo, hi = (int(b) & 0xFFFF for b in h.view(torch.int16))
    return lo | hi << 16


def run_ptx(asm: str, args: list[int], dtype: torch.dtype) -> int:
    """Execute ``asm`` (prmt / lop3 / mov / fma.rn.{bf16x2,f16x2} only) with ``$1..`` = ``args``; returns ``$0``."""
    regs: dict[str, int] = {f"${i + 1}": a & M32 for i, a in enumerate(args)}

    def val(tok: str) -> int:
        tok = tok.strip()
        return int(tok, 16) if tok.startswith("0x") else regs[tok]

    for line in asm.replace("{", "").replace("}", "").split(";"):
        line = line.strip()
        if not line or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        d, *src = [t.strip() for t in rest.split(",")]
        if op == "prmt.b32":
            a, b, sel = (val(t) for t in src)
            pool = (a | b << 32).to_bytes(8, "little")
            regs[d] = int.from_bytes(bytes(pool[(sel >> 4 * i) & 7] for i in range(4)), "little")
        elif op == "lop3.b32":
            a, b, c, lut = (val(t) for t in src)
            regs[d] = sum(((lut >> ((a >> i & 1) << 2 | (b >> i & 1) << 1 | (c >> i & 1))) & 1) << i
                          for i in range(32))
        elif op == "mov.b32":
            regs[d] = val(src[0])
        elif re.fullmatch(r"fma\.rn\.(bf16x2|f16x2)", op):
            a, b, c = (_halves(val(t), dtype).double() for t in src)
            exact = a * b + c
            assert torch.equal(exact.float().double(), exact)  # the test's values keep one rounding (fp32 exact)
            regs[d] = _pack(exact.float().to(dtype))
        else:
            raise AssertionError(f"instruction {op!r} not emulated")
    return regs["$0"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pair_decode_ptx_decodes_every_nibble_of_the_layout(dtype):
    gen = torch.Generator().manual_seed(3)
    n, k = 4, 128  # one K tile: word row r, nibble j = code of K row j * 16 + r
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    codes[0, :16], codes[1, 16:32] = 15, 0  # the extremes in some sub-blocks
    words = tw.pack(codes, 4)  # int32 [k / 8, n]
    s = (torch.rand(n, generator=gen) * 0.05 + 0.01).to(dtype)
    o = (torch.randn(n, generator=gen) * 0.05).to(dtype)
    for j in range(8):
        asm = pd._asm(dtype == torch.float16)
        sel = pd.SEL0 + pd.SEL_STEP * (j // 2)  # pair_decode's selector operand ($5; $6 its unused twin)
        for r in range(16):
            for c in (0, 2):  # column pairs (c, c + 1): adjacent elements of a thread's registers
                w = [int(words[r, c + i]) & M32 for i in (0, 1)]
                if j % 2:
                    w = [(x >> 4) | (0xF0000000 if x >> 31 else 0) for x in w]  # p >> 4, arithmetic, as in Triton
                args = [w[0], w[1], _pack(s[c:c + 2]), _pack(o[c:c + 2]), sel, sel]
                got = _halves(run_ptx(asm, args, dtype), dtype)
                q = codes[c:c + 2, j * 16 + r].double()
                want = (q * s[c:c + 2].double() + o[c:c + 2].double()).float().to(dtype)
                assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (j, r, c, got, want)
