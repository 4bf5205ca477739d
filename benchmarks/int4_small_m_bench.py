"""Small-M CPU int4 matmul: torch's ``_weight_int4pack_mm_for_cpu`` against the native kernel
(``pagoda/quantization/kernels/cpu_int4_gemm.c``) at 1..8 rows on the default model's linear shapes (group 32,
random Q4_1-like weights), bitwise equality checked. Arms alternate call by call; the minimum over ``--reps``
calls is reported (a shared machine's load only adds time). Also the sum over a decode step's 30 layers.

Usage (repository root): PYTHONPATH=. python benchmarks/int4_small_m_bench.py [--rows 1 2 3 4 5 8] [--reps 200]
    [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from pagoda.quantization.kernels import cpu_int4_native

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 5, 8])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    assert cpu_int4_native.available(), "the native kernel is not available here"
    gen = torch.Generator().manual_seed(0)
    g = 32
    step = {m: [0.0, 0.0] for m in args.rows}
    print(f"threads {torch.get_num_threads()}; ms per call (min of {args.reps}): torch / native")
    for name, (n, k) in SHAPES.items():
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = (torch.randn(k // g, n, 2, generator=gen) * 0.02).to(torch.bfloat16)
        line = []
        for m in args.rows:
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            ref = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, g, sz)
            got = cpu_int4_native.int4_mm(x, packed, g, sz)
            assert got is not None and torch.equal(ref.view(torch.int16), got.view(torch.int16)), (name, m)
            best = [1e9, 1e9]
            arms = (torch.ops.aten._weight_int4pack_mm_for_cpu, cpu_int4_native.int4_mm)
            for _ in range(args.reps):
                for i, fn in enumerate(arms):
                    t0 = time.perf_counter()
                    fn(x, packed, g, sz)
                    best[i] = min(best[i], time.perf_counter() - t0)
            step[m][0] += best[0] * 30e3
            step[m][1] += best[1] * 30e3
            line.append(f"M={m}: {best[0] * 1e3:.3f} / {best[1] * 1e3:.3f}")
        print(f"{name:8s} " + "  ".join(line))
    print("30 layers: " + "  ".join(f"M={m}: {a:.2f} / {b:.2f} ms" for m, (a, b) in step.items()))


if __name__ == "__main__":
    main()
