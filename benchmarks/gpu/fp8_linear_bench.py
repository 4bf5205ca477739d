"""FP8 W8A8 linears of the Llama-3-8B shape against bf16, per linear and per decode step (32 layers).

For M in 1, 16, 64 and each linear (qkv, o, gate_up, down), times under CUDA graphs (so launch gaps are as in
the engine): bf16 ``F.linear``; FP8 = the fused activation quantization + ``torch._scaled_mm`` (what
``fp8_linear`` runs); the torch-form quantization + ``_scaled_mm`` (the previous path); ``_scaled_mm`` alone;
``_scaled_mm`` alone with the operands swapped (``W x^T``, tokens padded to 16), a candidate for small M.
The floor is the weight bytes over the measured copy bandwidth.

Usage (GPU machine, repository root): python benchmarks/gpu/fp8_linear_bench.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.bandwidth import device_copy_bandwidth  # noqa: E402
from benchmarks.gpu.timing import graph_time_us  # noqa: E402
from pagoda.quantization.kernels.triton_fp8_quant import quantize_fp8_rows  # noqa: E402
from pagoda.quantization.w8a8 import _MIN_SCALE, FP8_MAX, quantize_fp8, quantize_weight_fp8_per_channel  # noqa: E402

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}


def main() -> None:
    bw = device_copy_bandwidth(2**29)
    print(f"{torch.cuda.get_device_name()}  copy bandwidth {bw / 1e9:.0f} GB/s  torch {torch.__version__}")
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


if __name__ == "__main__":
    main()
