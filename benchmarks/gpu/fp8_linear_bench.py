"""FP8 W8A8 linears of the Llama-3-8B shape against bf16, per linear and per decode step (32 layers).

For M in 1, 16, 64 and each linear (qkv, o, gate_up, down), times under CUDA graphs (so launch gaps are as in
the engine): bf16 ``F.linear``; FP8 = the fused activation quantization + ``torch._scaled_mm`` (what
``fp8_linear`` runs); the torch-form quantization + ``_scaled_mm`` (the previous path); ``_scaled_mm`` alone;
``_scaled_mm`` alone with the operands swapped (``W x^T``, tokens padded to 16), a candidate for small M.
The floor is the weight bytes over the measured copy bandwidth.

GEMV section (M in 1, 2, 4, 8): the weight-only FP8 GEMV (``kernels/triton_fp8_gemv.py``) over a grid of
:data:`GEMV_GRID` configs (each checked against the dequantized reference first; a wrong one is reported and
skipped), next to bf16 and the fused-quant ``_scaled_mm`` path. Here every timed call reads a different copy of
the weights (copies cycled up to about 256 MB per linear, bf16 and FP8 alike), so small weights are not served
from the 50 MB L2 as they are in the first section. It prints the best config per (linear, M), the per-step sums
(32 layers) of bf16, fused FP8, the GEMV's default rule, the GEMV's best config and the FP8 floor, and
``GEMV_TABLE`` lines to paste into ``triton_fp8_gemv.py``.

Usage (GPU machine, repository root): python benchmarks/gpu/fp8_linear_bench.py [--gemv-only | --no-gemv]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.bandwidth import device_copy_bandwidth  # noqa: E402
from benchmarks.gpu.timing import graph_time_us  # noqa: E402
from pagoda.quantization.kernels import triton_fp8_gemv as gemv  # noqa: E402
from pagoda.quantization.kernels.triton_fp8_gemv import GemvConfig, fp8_gemv  # noqa: E402
from pagoda.quantization.kernels.triton_fp8_quant import quantize_fp8_rows  # noqa: E402
from pagoda.quantization.w8a8 import _MIN_SCALE, FP8_MAX, quantize_fp8, quantize_weight_fp8_per_channel  # noqa: E402

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
GEMV_MS = (1, 2, 4, 8)
GEMV_GRID = (  # CUDA cores (fma; prefetch unless "nopf") and tensor cores (dot; Triton-pipelined, num_stages)
    GemvConfig(block_n=8, block_k=512),
    GemvConfig(block_n=16, block_k=512),
    GemvConfig(block_n=16, block_k=512, prefetch=False),
    GemvConfig(block_n=32, block_k=256),
    GemvConfig(block_n=16, block_k=1024, num_warps=8),
    GemvConfig(block_n=4, block_k=1024),
    GemvConfig(block_n=8, block_k=1024),
    GemvConfig(block_n=8, block_k=1024, prefetch=False),
    GemvConfig(block_n=16, block_k=512, split_k=0),
    GemvConfig(block_n=16, block_k=256, num_stages=2, use_dot=True),
    GemvConfig(block_n=16, block_k=512, num_stages=3, use_dot=True),
    GemvConfig(block_n=32, block_k=256, num_stages=3, use_dot=True),
    GemvConfig(block_n=32, block_k=256, num_stages=2, split_k=0, use_dot=True),
    GemvConfig(block_n=64, block_k=128, num_stages=3, split_k=0, use_dot=True),
    GemvConfig(block_n=32, block_k=512, num_warps=8, num_stages=2, use_dot=True),
    # session 15: the bf16 GEMV's 1-row winners carried over (2-4 channels a program, 2-4 KB of each row a step,
    # the first tile read before the PDL wait)
    GemvConfig(block_n=2, block_k=1024, prefetch=False),
    GemvConfig(block_n=2, block_k=2048, prefetch=False),
    GemvConfig(block_n=4, block_k=1024, prefetch=False),
    GemvConfig(block_n=4, block_k=2048, prefetch=False),
    GemvConfig(block_n=8, block_k=2048, prefetch=False),
    GemvConfig(block_n=4, block_k=4096, prefetch=False),
    GemvConfig(block_n=2, block_k=2048, num_warps=2, prefetch=False),
    GemvConfig(block_n=4, block_k=2048, num_warps=8, prefetch=False),
)
ROTATE_BYTES = 256 * 2**20


def graph_time_cycle_us(fns: Sequence[Callable[[], object]]) -> float:
    """Mean time per call inside one CUDA graph (benchmarks/gpu/timing.py), call ``r`` running ``fns[r % len(fns)]``."""
    return graph_time_us(_Cycle(fns))


class _Cycle:
    def __init__(self, fns: Sequence[Callable[[], object]]) -> None:
        self.fns, self.i = fns, 0

    def __call__(self) -> object:
        self.i += 1
        return self.fns[self.i % len(self.fns)]()


def _gemv_one_m(name: str, m: int, ws: list[torch.Tensor], qs: list[tuple[torch.Tensor, torch.Tensor]], bw: float
                ) -> tuple[dict[str, float], dict[GemvConfig, float]]:
    """One linear at ``m`` rows: bf16, fused FP8, the GEMV's default rule and every grid config (checked first)."""
    n, k = ws[0].shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ (qs[0][0].float() * qs[0][1][:, None]).T

    def fused(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        xq, sx = quantize_fp8_rows(x, None, FP8_MAX, _MIN_SCALE)
        return torch._scaled_mm(xq, q.t(), scale_a=sx, scale_b=s.view(1, n), out_dtype=torch.bfloat16)

    t = {"bf16": graph_time_cycle_us([functools.partial(F.linear, x, w) for w in ws]),
         "fp8 fused": graph_time_cycle_us([functools.partial(fused, q, s) for q, s in qs]),
         "gemv default": graph_time_cycle_us([functools.partial(fp8_gemv, x, q, s) for q, s in qs]),
         "floor fp8": n * k / bw * 1e6}
    grid: dict[GemvConfig, float] = {}
    for cfg in GEMV_GRID:
        try:
            err = (fp8_gemv(x, *qs[0], config=cfg).float() - ref).abs().max().item()
        except Exception as e:  # a config that does not compile or launch here: reported, not fatal
            print(f"M={m} {name:8s} {cfg.short():32s} FAILED ({type(e).__name__}: {str(e)[:120]})")
            continue
        if err > 2e-2 * ref.abs().max().item():
            print(f"M={m} {name:8s} {cfg.short():32s} WRONG (max error {err:.3g})")
            continue
        grid[cfg] = graph_time_cycle_us([functools.partial(fp8_gemv, x, q, s, config=cfg) for q, s in qs])
    return t, grid


def _gemv_shape(name: str, k: int, n: int, bw: float, step: dict[str, float], best: dict, ms: Sequence[int]
                ) -> None:
    """One linear at every M of ``ms``, weights cycled over copies (module docstring)."""
    copies = max(1, min(16, ROTATE_BYTES // (n * k)))  # FP8 bytes; bf16 cycles half as many copies
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(max(1, copies // 2))]
    qs = [quantize_weight_fp8_per_channel(ws[i % len(ws)]) for i in range(copies)]
    for m in ms:
        t, grid = _gemv_one_m(name, m, ws, qs, bw)
        cfg_best = min(grid, key=grid.__getitem__)
        t["gemv best"] = grid[cfg_best]
        best[(m, n, k)] = cfg_best
        for key, v in t.items():
            step[f"{m}:{key}"] = step.get(f"{m}:{key}", 0.0) + 32 * v
        print(f"M={m} {name:8s} " + "  ".join(f"{key} {v:6.1f}" for key, v in t.items())
              + f" us  best {cfg_best.short()}  | grid: " + " ".join(f"{v:.1f}" for v in grid.values()))


def gemv_section(bw: float, ms: Sequence[int] = GEMV_MS, json_out: str | None = None) -> None:
    """The weight-only FP8 GEMV against bf16 and fused FP8 at M in ``ms`` (module docstring); ``json_out``: the
    winners as JSON for ``with_gemv_table.py --fp8-table``."""
    print("grid: " + " | ".join(c.short() for c in GEMV_GRID))
    step: dict[str, float] = {}
    best: dict[tuple[int, int, int], GemvConfig] = {}
    for name, (k, n) in SHAPES.items():
        _gemv_shape(name, k, n, bw, step, best, ms)
        torch.cuda.empty_cache()
    for m in ms:
        row = {key.split(":", 1)[1]: v for key, v in step.items() if key.startswith(f"{m}:")}
        print(f"M={m} step linears (32 layers): " + "  ".join(f"{key} {v / 1e3:.3f} ms" for key, v in row.items())
              + f"  gemv best/bf16 {row['gemv best'] / row['bf16']:.2f}  default/bf16 "
              f"{row['gemv default'] / row['bf16']:.2f}  best/floor {row['gemv best'] / row['floor fp8']:.2f}")
    print(f"# GEMV_TABLE entries (triton_fp8_gemv.py; GEMV_MAX_M = {gemv.GEMV_MAX_M} now):")
    for key, cfg in best.items():
        print(f"    {key}: {cfg!r},")
    if json_out:
        Path(json_out).write_text(json.dumps([[list(key), dataclasses.asdict(cfg)] for key, cfg in best.items()]))


def fp8_table_from_json(path: str) -> dict[tuple[int, int, int], GemvConfig]:
    """The winners written by ``--json``: ``{(m, n, k): GemvConfig}``."""
    return {(m, n, k): GemvConfig(**cfg) for (m, n, k), cfg in json.loads(Path(path).read_text())}


def scaled_mm_section(bw: float) -> None:
    for m in (1, 16, 64):
        step = dict.fromkeys(("bf16", "fp8 fused", "fp8 torch-form", "scaled_mm only", "swap-AB scaled_mm only",
                              "floor fp8"), 0.0)
        for name, (k, n) in SHAPES.items():
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
            wq, ws = quantize_weight_fp8_per_channel(w)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            xq, sx = quantize_fp8_rows(x, None, FP8_MAX, _MIN_SCALE)
            wt, sb = wq.t(), ws.view(1, n)

            def mm(a: torch.Tensor, sa: torch.Tensor, wt: torch.Tensor = wt, sb: torch.Tensor = sb) -> torch.Tensor:
                return torch._scaled_mm(a, wt, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

            mp = -(-m // 16) * 16  # swap-AB: out^T = W x^T, the tokens padded to 16 (a _scaled_mm rule)
            xqp = torch.zeros(mp, k, device="cuda", dtype=xq.dtype)
            xqp[:m] = xq
            sxp = torch.ones(1, mp, device="cuda")

            def swap_ab(wq: torch.Tensor = wq, ws: torch.Tensor = ws, xqp: torch.Tensor = xqp,
                        sxp: torch.Tensor = sxp) -> torch.Tensor:
                return torch._scaled_mm(wq, xqp.t(), scale_a=ws.view(-1, 1), scale_b=sxp, out_dtype=torch.bfloat16)

            t = {
                "bf16": graph_time_us(lambda: F.linear(x, w)),  # noqa: B023
                "fp8 fused": graph_time_us(lambda: mm(*quantize_fp8_rows(x, None, FP8_MAX, _MIN_SCALE))),  # noqa: B023
                "fp8 torch-form": graph_time_us(lambda: mm(*quantize_fp8(x, None, True))),  # noqa: B023
                "scaled_mm only": graph_time_us(lambda: mm(xq, sx)),  # noqa: B023
                "swap-AB scaled_mm only": graph_time_us(swap_ab),
                "floor fp8": n * k / bw * 1e6,  # one byte per weight over the copy bandwidth (as bandwidth.py)
            }
            for key, v in t.items():
                step[key] += 32 * v
            print(f"M={m:3d} {name:8s} " + "  ".join(f"{key} {v:7.1f} us" for key, v in t.items()))
        print(f"M={m:3d} step linears (32 layers): " + "  ".join(f"{key} {v / 1e3:.3f} ms" for key, v in step.items())
              + f"  fused/bf16 {step['fp8 fused'] / step['bf16']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemv-only", action="store_true", help="only the GEMV section (M = 1, 2, 4, 8)")
    ap.add_argument("--no-gemv", action="store_true", help="only the first section (M = 1, 16, 64)")
    ap.add_argument("--ms", type=int, nargs="+", default=list(GEMV_MS), help="the GEMV section's row counts")
    ap.add_argument("--json", default=None, help="write the GEMV winners here (for with_gemv_table.py --fp8-table)")
    args = ap.parse_args()
    bw = device_copy_bandwidth(2**29)
    print(f"{torch.cuda.get_device_name()}  copy bandwidth {bw / 1e9:.0f} GB/s  torch {torch.__version__}")
    if not args.gemv_only:
        scaled_mm_section(bw)
    if not args.no_gemv:
        gemv_section(bw, args.ms, args.json)


if __name__ == "__main__":
    main()
