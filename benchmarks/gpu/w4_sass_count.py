"""Instructions per nibble in the 4-bit kernels' K loops, read from the sm_90 SASS that Triton compiles here (no GPU).

Why: the instructions each nibble costs bound the 4-bit kernels where the bytes do not (RESULTS.md, sessions 29 and
30; session 30 also found that fewer K-loop instructions do not promise a faster launch: the GPU decides). This
compiles :func:`triton_w4_gemv._w4_gemv_kernel` and the dequantizing ``dot`` kernel (fp32 and paired decode) for
``cuda:90`` with Triton's own ``ptxas``, disassembles the cubin with its ``nvdisasm`` and counts the instructions of
the longest loop (the K loop), with an opcode histogram and the registers / spills ``cuobjdump`` reports.

Usage: ``python benchmarks/gpu/w4_sass_count.py [--quick]`` (``--quick``: the one-row GEMV and the 64 x 128 dot
tile: what the CI test runs). Group 128, symmetric, K tile 128, the shapes' N divisible by 16 (as on the GPU, where
Triton specializes it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, never interpret
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pagoda.quantization.kernels.triton_w4_gemv import _w4_gemv_kernel  # noqa: E402
from pagoda.quantization.kernels.triton_wna16 import _int4_dot_kernel  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
ALIGNED = {"N", "stride_xm", "stride_om", "stride_os"}  # ints Triton specializes as multiples of 16 on the GPU
TYPES = {"qw_ptr": "*i32", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "magic": "i32"}


def compile_sm90(fn, constexprs: dict, num_warps: int):
    sig, attrs = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            continue
        sig[p.name] = TYPES.get(p.name, "*bf16" if p.name.endswith("_ptr") else "i32")
        if p.name.endswith("_ptr") or p.name in ALIGNED:
            attrs[(i,)] = [["tt.divisibility", 16]]
    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}  # as a launch binds them
    src = ASTSource(fn=fn, signature=sig, constexprs={**defaults, **constexprs}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def k_loop(kernel) -> tuple[list[str], str]:
    """The longest loop's instructions (a backward branch to a label) and cuobjdump's resource line."""
    with tempfile.TemporaryDirectory() as d:
        cubin = Path(d) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        text = subprocess.run([str(BIN / "nvdisasm"), "-c", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
        res = subprocess.run([str(BIN / "cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                             text=True).stdout
    instrs, labels = [], {}
    for line in text.splitlines():
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if m:
            instrs.append(m.group(1).strip())
    loops = []
    for i, ins in enumerate(instrs):
        m = re.search(r"BRA\s+(?:`\()?(\.L_x_\d+)", ins)
        if m and labels.get(m.group(1), i + 1) <= i:
            loops.append((labels[m.group(1)], i))
    a, b = max(loops, key=lambda ab: ab[1] - ab[0])
    usage = next((ln.strip() for ln in res.splitlines() if "REG:" in ln), "")
    return instrs[a:b + 1], " ".join(w for w in usage.split() if w.split(":")[0] in ("REG", "STACK", "LOCAL"))


def histogram(body: list[str], top: int = 8) -> str:
    ops = Counter(re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0] for ins in body)
    return " ".join(f"{op}:{n}" for op, n in ops.most_common(top))


def main() -> None:
    quick = "--quick" in sys.argv
    gemv = [(1, 32, 1)] if quick else [(1, 32, 1), (1, 64, 2), (1, 128, 2), (1, 128, 4), (1, 256, 4), (1, 256, 8),
                                       (2, 64, 4), (4, 64, 4), (8, 64, 8)]
    print("4-bit GEMV (group 128, symmetric): K-loop instructions per thread per 128-row K tile")
    for bm, bn, nw in gemv:
        words = 16 * bn // (32 * nw)  # int32 words per thread per K tile
        c = dict(GROUP=128, PACK_K=128, BLOCK_M=bm, BLOCK_N=bn, SPLIT=True,
                 HAS_BIAS=False, EVEN_N=True, EVEN_M=True, SYM=True, PREFETCH=1, USE_PDL=False)
        one_row = ((False, 1), (True, 1), (False, 4), (True, 2), (True, 4))  # (lift decode, column blocks)
        for lift, halves in one_row if bm == 1 else ((False, 1), (True, 1)):
            if halves > 1 and quick:
                continue
            body, usage = k_loop(compile_sm90(_w4_gemv_kernel, dict(c, LIFT_X=lift, HALVES=halves), nw))
            print(f"  M={bm} {bn} cols x {nw} warps{', lift' if lift else ''}"
                  f"{f', {halves} halves' if halves > 1 else ''}: {len(body)} "
                  f"({len(body) / (8 * words * bm):.2f} per nibble and row)  {usage}  {histogram(body)}")
    print("4-bit dot kernel (group 128, dequantizing in fp32 / paired in bf16x2): K-loop instructions per thread per "
          "128-row K tile")
    for bm, bn, nw in [(64, 128, 4)] if quick else [(16, 64, 4), (64, 128, 4), (128, 128, 8)]:
        nibbles = 16 * bn * 8 // (32 * nw)
        for paired in (False, True):
            c = dict(GROUP=128, PACK_K=128, BLOCK_M=bm, BLOCK_N=bn, DEQUANT=True, DOT_F32=False, PAIRED=paired)
            body, usage = k_loop(compile_sm90(_int4_dot_kernel, c, nw))
            print(f"  M tile {bm} x {bn} cols x {nw} warps, {'paired' if paired else 'fp32'}: {len(body)} "
                  f"({len(body) / nibbles:.2f} per nibble)  {usage}  {histogram(body)}")


if __name__ == "__main__":
    main()
