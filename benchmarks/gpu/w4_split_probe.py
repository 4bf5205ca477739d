"""Does the one-row 4-bit GEMV lose time to its last wave? (issue 12, W4A16 batch 1; session 49 probe.)

Each Llama-3-8B linear with today's one-row rule (``choose_config(1, ...)``), its split-K count varied from 1 to 32
(every other field kept): µs per linear (int4_gemv_sweep.py's timing: 8 weight copies, one CUDA graph), the
programs launched, the registers a thread and the programs an SM can hold (so the waves). If the time steps up
where the programs pass a multiple of what the GPU holds at once, the tail of the last wave costs time that a
stream-K split (every program the same share of K tiles, one wave) would give back. Usage:
``python benchmarks/gpu/w4_split_probe.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import int4_gemv_sweep as base  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402

from pagoda.quantization.kernels import triton_w4_gemv as gv  # noqa: E402
from pagoda.quantization.kernels import triton_wna16 as tw  # noqa: E402


def resident(num_warps: int) -> str:
    """Registers a thread and programs an SM holds, of the GEMV variants compiled so far (the largest count)."""
    regs = 0
    try:
        for cache in gv._w4_gemv_kernel.device_caches.values():
            for k in cache[0].values():
                regs = max(regs, int(k.n_regs))
    except Exception as exc:  # noqa: BLE001 - a diagnostic only
        return f"regs ? ({type(exc).__name__})"
    if not regs:
        return "regs ?"
    per_sm = min(65536 // (regs * 32 * num_warps), 64 // num_warps, 32)
    return f"regs {regs}  {per_sm} programs/SM"


def main() -> None:
    from benchmarks.gpu.bandwidth import device_copy_bandwidth

    sms = tw.num_sms(base.dev.index)
    bw = device_copy_bandwidth(2**29)
    print(f"{torch.cuda.get_device_name()}  copy bandwidth {bw / 1e9:.0f} GB/s  SMs {sms}", flush=True)
    for name, (n, k) in base.SHAPES.items():
        w = base.Weights(n, k)
        x = torch.randn(1, k, device=base.dev, dtype=base.DT)
        now = tw.choose_config(1, n, k, base.G, sms)
        floor = w.floor_bytes / bw * 1e6
        k_tiles = k // now.block_k
        print(f"\n{name} {n}x{k}  floor {floor:.1f} us  now split {now.split_k}  {now}", flush=True)
        gv._w4_gemv_kernel.device_caches.clear()
        seen = set()
        for s in range(1, 33):
            per = triton.cdiv(k_tiles, s)
            real = triton.cdiv(k_tiles, per)
            if real in seen:
                continue
            seen.add(real)
            cfg = dataclasses.replace(now, split_k=real)
            t = base.time_config(w, x, cfg, f"split {real}")
            progs = triton.cdiv(n, cfg.block_n) * real
            mark = "  <- now" if real == now.split_k else ""
            print(f"  split {real:2d} ({per:2d} tiles)  programs {progs:5d}  {base.fmt(t)} us  "
                  f"{(t or 0) / floor:4.2f}x floor  {resident(cfg.num_warps)}{mark}", flush=True)


if __name__ == "__main__":
    main()
