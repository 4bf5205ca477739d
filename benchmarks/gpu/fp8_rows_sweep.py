"""Time the kernels that quantize their own rows for FP8 linears (``fused_kernels``' norms and SiLU·mul with
``fp8=True``; the plain norm too, which shares the norm's width) against the pair they replace (the bf16 kernel,
then ``quantize_fp8_rows``), per thread-row width.

Usage (GPU machine, repo root): ``python benchmarks/gpu/fp8_rows_sweep.py [--rows 64 256 1024] [--hidden 4096]
[--inter 14336]``. Each figure is the mean of 50 calls replayed in a CUDA graph (inputs L2-hot, as in a step where
the previous kernel just wrote them). The last line names the fastest ``FP8_ROW_ELEMS`` at the middle row count,
in the form ``with_module_values.py`` takes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import graph_time_us  # noqa: E402

from pagoda.layers import fused_kernels as fk  # noqa: E402
from pagoda.quantization.kernels.triton_fp8_quant import quantize_fp8_rows  # noqa: E402
from pagoda.quantization.w8a8 import _MIN_SCALE, FP8_MAX  # noqa: E402

ELEMS = (8, 16, 32, 64)


def sweep(m: int, hidden: int, inter: int) -> dict[str, int]:
    """Print the separate pair and each fused width at ``m`` rows; return the fastest width per kernel."""
    dev = torch.device("cuda")
    x = torch.randn(m, hidden, device=dev, dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(hidden, device=dev, dtype=torch.bfloat16)
    gu = torch.randn(m, 2 * inter, device=dev, dtype=torch.bfloat16)
    sep_norm = graph_time_us(lambda: quantize_fp8_rows(fk.fused_add_rms_norm(x, r, w, 1e-5)[0], None, FP8_MAX,
                                                       _MIN_SCALE))
    sep_silu = graph_time_us(lambda: quantize_fp8_rows(fk.silu_and_mul(gu), None, FP8_MAX, _MIN_SCALE))
    norm, silu = graph_time_us(lambda: fk.fused_add_rms_norm(x, r, w, 1e-5)), graph_time_us(lambda: fk.silu_and_mul(gu))
    print(f"rows {m}: add+norm {norm:.1f} us, + quantize = {sep_norm:.1f} us; silu*up {silu:.1f} us, + quantize = "
          f"{sep_silu:.1f} us", flush=True)
    fused = {"norm": lambda: fk.fused_add_rms_norm(x, r, w, 1e-5, True), "silu": lambda: fk.silu_and_mul(gu, True),
             "plain norm": lambda: fk.fused_add_rms_norm(x, r, w, 1e-5)}
    best = {}
    saved = dict(fk.FP8_ROW_ELEMS)
    for kind, fn in fused.items():
        times = {}
        for e in ELEMS:
            fk.FP8_ROW_ELEMS[kind.split()[-1]] = e
            times[e] = graph_time_us(fn)
        fk.FP8_ROW_ELEMS.update(saved)
        print(f"  fused {kind}: " + ", ".join(f"{e} a thread {t:.1f} us" for e, t in times.items()), flush=True)
        if kind != "plain norm":  # the norm's width serves both: chosen on the FP8 rows, the plain norm printed
            best[kind] = min(times, key=lambda e: times[e])
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=14336)
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    best = {m: sweep(m, args.hidden, args.inter) for m in args.rows}
    mid = args.rows[len(args.rows) // 2]
    print("BEST pagoda.layers.fused_kernels.FP8_ROW_ELEMS=" + repr(best[mid]).replace(" ", ""), flush=True)


if __name__ == "__main__":
    main()
