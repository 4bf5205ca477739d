"""Does the one-row 4-bit GEMV lose bandwidth to its weight layout? (issue 12, W4A16 batch 1; session 47 probe.)

The packed layout is int32 ``[K/8, N]`` (N fastest): a program's K tile is ``P/8`` = 16 separate runs of ``BLOCK_N``
words (256-512 B each, N * 4 bytes apart), where the dense bf16 GEMV that reaches its floor reads rows of K (8 KB
runs). Here the same kernel (``triton_w4_gemv._w4_gemv_kernel``) reads the same codes stored as column panels of
``PANEL`` words, each ``[K/8, PANEL]`` contiguous (``PANEL`` = the block's width: every K tile one contiguous 4-8 KB
run). Same rules as dispatched today (``choose_config(1, ...)``) and a few others, panel 0 (today's layout) against
panels of the block's width and of 256 / 512 words, µs per linear (int4_gemv_sweep.py's timing: 8 weight copies,
one CUDA graph). Usage: ``python benchmarks/gpu/w4_panel_probe.py`` (``--smoke``: CPU interpreter, tiny shapes).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import int4_gemv_sweep as base  # noqa: E402  (sets TRITON_INTERPRET for --smoke before triton loads)
import torch  # noqa: E402

from pagoda.quantization.kernels import triton_wna16 as tw  # noqa: E402
from pagoda.quantization.kernels.triton_w4_gemv import w4_gemv  # noqa: E402
from pagoda.quantization.kernels.triton_wna16 import Rule  # noqa: E402

EXTRA = [Rule("gemv", 64, block_m=1, waves=8, num_warps=2, prefetch=2, pdl=True, lift=True),
         Rule("gemv", 128, block_m=1, waves=8, num_warps=4, prefetch=2, pdl=True, lift=True),
         Rule("gemv", 128, block_m=1, waves=8, num_warps=4, pdl=True, halves=2),
         Rule("gemv", 256, block_m=1, waves=8, num_warps=4, pdl=True, lift=True, halves=4),
         Rule("gemv", 64, block_m=1, waves=4, num_warps=2, prefetch=2, pdl=True, lift=True),
         Rule("gemv", 64, block_m=1, waves=16, num_warps=2, prefetch=2, pdl=True, lift=True)]
if base.SMOKE:  # the smoke's N (96, 64): a 32-word block and panel
    EXTRA.append(Rule("gemv", 32, block_m=1, waves=8, num_warps=1, prefetch=2, lift=True))


def to_panels(qweight: torch.Tensor, panel: int) -> torch.Tensor:
    """``[K/8, N]`` -> the same words as ``N/panel`` contiguous ``[K/8, panel]`` panels (flat, same element count)."""
    k8, n = qweight.shape
    return qweight.view(k8, n // panel, panel).permute(1, 0, 2).contiguous().view(k8, n)


def main() -> None:
    sms = tw.num_sms(base.dev.index)
    bw = 1e10
    if not base.SMOKE:
        from benchmarks.gpu.bandwidth import device_copy_bandwidth

        bw = device_copy_bandwidth(2**29)
        print(f"{torch.cuda.get_device_name()}  copy bandwidth {bw / 1e9:.0f} GB/s  SMs {sms}", flush=True)
    totals: dict[str, float] = {}
    for name, (n, k) in base.SHAPES.items():
        w = base.Weights(n, k)
        x = torch.randn(1, k, device=base.dev, dtype=base.DT)
        ref = x.float() @ w.dense.t()
        floor = w.floor_bytes / bw * 1e6
        now = tw.rule_for(1, 4, n, k)
        rules = [now] + [r for r in EXTRA if r != now]
        best: dict[str, float] = {}
        for ri, rule in enumerate(rules):
            cfg = tw.resolve(rule, 1, n, k, base.G, sms)
            for panel in sorted({0, cfg.block_n, 2 * cfg.block_n, 256, 512}):
                if panel and (panel % cfg.block_n or n % panel):
                    continue
                copies = [(to_panels(q, panel) if panel else q, s) for q, s, _ in w.int4]

                def run(q, s, cfg=cfg, panel=panel, x=x):
                    return w4_gemv(x, q, s, s, base.G, None, cfg.block_k, 1, cfg.block_n, cfg.split_k,
                                   cfg.num_warps, cfg.num_stages, cfg.prefetch, True, cfg.pdl, cfg.lift, cfg.halves,
                                   panel=panel)
                y = run(*copies[0])
                err = ((y.float() - ref).norm() / ref.norm()).item()
                if err > 1e-2:
                    print(f"    {name} rule {ri} panel {panel}: WRONG ({err:.1e})")
                    continue
                t = base.per_linear_us(lambda run=run, copies=copies: [run(q, s) for q, s in copies])
                tag = "now" if ri == 0 else f"r{ri}"
                key = f"{tag} panel {panel}"
                best[key] = t
                fields = {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule)
                          if getattr(rule, f.name) != getattr(Rule("gemv", 0), f.name)}
                print(f"    {name:8s} {t:6.1f} us  {t / floor:4.2f}x floor  {key:16s} split {cfg.split_k:2d}  "
                      f"{fields}", flush=True)
        plain = min(t for key, t in best.items() if key.endswith("panel 0"))
        paneled = min((t for key, t in best.items() if not key.endswith("panel 0")), default=float("nan"))
        print(f"  {name:8s} floor {floor:5.1f} us  now {best['now panel 0']:6.1f}  best plain {plain:6.1f}  "
              f"best panels {paneled:6.1f}", flush=True)
        for label, t in (("now", best["now panel 0"]), ("plain", plain), ("panels", paneled)):
            totals[label] = totals.get(label, 0.0) + t * base.LAYERS / 1e3
    print("step of linears (32 layers): " + "  ".join(f"{k} {v:.3f} ms" for k, v in totals.items()))


if __name__ == "__main__":
    main()
