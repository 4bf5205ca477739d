"""The Triton W8A8 FP8 GEMM (``triton_fp8_gemm``) against ``torch._scaled_mm`` on the Llama-3-8B linears, 64-1,024 rows.

For each row count and linear: ``_scaled_mm`` (row-wise scales, bf16 out, as the engine calls it) and every rule of
:data:`GRID` (each first checked against ``_scaled_mm``: a rule off by more than bf16 rounding is reported and
skipped), timed as 50 calls replayed in a CUDA graph (weights L2-hot across calls for the small linears, as in a
step only for the largest; the floors say which bound applies). Prints per row count the step sums (32 layers) of
``_scaled_mm`` and of the per-linear best, then the table of winners by >= 3 % (``FP8_GEMM_TABLE`` lines) and a
``BEST`` line with the whole table as ``with_module_values.py`` takes it.

Usage (GPU machine, repo root): ``python benchmarks/gpu/fp8_gemm_sweep.py [--rows 64 128 256 512 1024]``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.bandwidth import device_copy_bandwidth  # noqa: E402
from benchmarks.gpu.timing import graph_time_us  # noqa: E402
from pagoda.quantization.kernels import triton_fp8_gemm as tg  # noqa: E402
from pagoda.quantization.w8a8 import quantize_fp8, quantize_weight_fp8_per_channel  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
"""name -> (N, K)."""
GRID: tuple[tg.Fp8GemmRule, ...] = tuple(
    (bm, bn, 128, w, s) for bm, bn, w, s in itertools.product((64, 128), (64, 128, 256), (4, 8), (3, 4))
    if not (bm == 128 and bn == 256 and w == 4))
QUICK: tuple[tg.Fp8GemmRule, ...] = ((64, 64, 128, 4, 4), (64, 128, 128, 4, 4), (64, 128, 128, 8, 3),
                                     (128, 64, 128, 8, 3), (128, 128, 128, 8, 4), (64, 256, 128, 8, 3),
                                     (128, 256, 128, 8, 3), (128, 128, 128, 4, 4))
WIN = 0.97


def _scaled_mm(xq, sx, wq, ws):
    return torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=ws.view(1, -1), out_dtype=torch.bfloat16)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs() / (ref.abs() + 1e-3 * ref.abs().max())).max().item()


def sweep_linear(m: int, n: int, k: int, grid: tuple[tg.Fp8GemmRule, ...]
                 ) -> tuple[float, float, tg.Fp8GemmRule | None]:
    """(``_scaled_mm`` µs, best Triton µs, its rule) for one linear at ``m`` rows. A rule is checked first against the
    float64 product of the same codes: its error may be at most twice ``_scaled_mm``'s (or one bf16 step)."""
    g = torch.Generator(device="cuda").manual_seed(m + n)
    xq, sx = quantize_fp8(torch.randn(m, k, device="cuda", generator=g).bfloat16(), None, per_token=True)
    wq, ws = quantize_weight_fp8_per_channel(torch.randn(n, k, device="cuda", generator=g) * 0.05)
    ref = (xq.double() @ wq.double().t()) * sx.double() * ws.double()[None, :]
    base_err = _rel_err(_scaled_mm(xq, sx, wq, ws), ref)
    base = graph_time_us(lambda: _scaled_mm(xq, sx, wq, ws))
    best, best_rule = float("inf"), None
    for rule in grid:
        try:
            out = tg.fp8_gemm(xq, sx, wq, ws, None, torch.bfloat16, rule)
        except Exception as exc:  # noqa: BLE001 - a rule the GPU cannot run (shared memory): reported, skipped
            print(f"    {rule}: {type(exc).__name__}: {str(exc)[:80]}", flush=True)
            continue
        err = _rel_err(out, ref)
        if err > max(2 * base_err, 2 ** -7):
            print(f"    {rule}: WRONG (relative error {err:.3g}; _scaled_mm's {base_err:.3g})", flush=True)
            continue
        t = graph_time_us(lambda rule=rule: tg.fp8_gemm(xq, sx, wq, ws, None, torch.bfloat16, rule))
        if t < best:
            best, best_rule = t, rule
    return base, best, best_rule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--quick", action="store_true", help=f"only the first {len(QUICK)} rules of the grid")
    args = ap.parse_args()
    grid = QUICK if args.quick else GRID
    bw = device_copy_bandwidth(1 << 28)
    print(f"{torch.cuda.get_device_name()}  copy bandwidth {bw / 1e9:.0f} GB/s  torch {torch.__version__}", flush=True)
    table: dict[tuple[int, int, int], tg.Fp8GemmRule] = {}
    for m in args.rows:
        bucket = min(b for b in tg.ROW_BUCKETS if b >= m)
        base_sum = best_sum = 0.0
        for name, (n, k) in SHAPES.items():
            base, best, rule = sweep_linear(m, n, k, grid)
            floor = (n * k + m * k + 2 * m * n) / bw * 1e6
            print(f"rows {m} {name:8s} floor {floor:6.1f} us  _scaled_mm {base:7.1f} us  Triton best {best:7.1f} us "
                  f"{rule}", flush=True)
            win = rule is not None and best < WIN * base
            if win:
                table[(bucket, n, k)] = rule  # type: ignore[assignment]
            base_sum += base
            best_sum += best if win else base
        print(f"rows {m}: step linears (32 layers) _scaled_mm {32 * base_sum / 1e3:.3f} ms, with the winners "
              f"{32 * best_sum / 1e3:.3f} ms", flush=True)
    print("FP8_GEMM_TABLE winners:")
    for key, rule in table.items():
        print(f"    {key}: {rule},")
    print("BEST pagoda.quantization.kernels.triton_fp8_gemm.FP8_GEMM_TABLE=" + repr(table).replace(" ", ""), flush=True)


if __name__ == "__main__":
    main()
