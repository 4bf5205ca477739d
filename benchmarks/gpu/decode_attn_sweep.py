"""GPU sweep of the split-KV decode kernel's launch (keys per tile, warps) on the shapes of the decode benchmarks.

Why: an offline sm_90 compile (Triton 3.6, the H200's version, and 3.9) shows ``_split_kv_decode_kernel`` at its
default launch (64 keys per tile, 4 warps, head dim 128) using 255 registers and spilling ~290 bytes per thread;
32 keys per tile (243 registers) or 8 warps (220) compile without spills (benchmarks/RESULTS.md, session 6).
Whether that makes it faster is what this measures.

Shapes: Llama-3-8B (32 query heads, 8 KV heads) and Qwen3-30B-A3B (32 / 4), head dim 128, bf16 cache, block 16;
batch 1 and 4 at contexts 100, 1,000 and 4,000 tokens; the split count the engine's decode graphs use
(``choose_num_splits`` with ``max_model_len`` 1024 or 4096: the bound, not the context). Timing: one call on each of
8 layers' caches in a CUDA graph (``timing.graph_median_ms``), per call; every launch checked against the default
launch's output (rejected above 1e-2 relative error).

Usage (GPU machine, repo root): ``python benchmarks/gpu/decode_attn_sweep.py`` (< 1 min); ``--smoke``: CPU,
Triton interpreter, one tiny case (checks the script runs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

from pagoda.attention import triton_kernels as tk  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
DT = torch.float32 if SMOKE else torch.bfloat16
SHAPES = {"tiny": (4, 2, 32)} if SMOKE else {"llama3-8b": (32, 8, 128), "qwen3-30b-a3b": (32, 4, 128)}
CASES = [(1, 40, 64)] if SMOKE else [(b, ctx, bound) for b in (1, 4) for ctx, bound in
                                     ((100, 1024), (1000, 1024), (1000, 4096), (4000, 4096))]
# (keys per tile, warps); None: 64 (no context bound is passed, so the engine's short-split rule is not applied)
LAUNCHES = [(None, 4), (32, 4), (64, 8), (32, 8)] if not SMOKE else [(None, 4), (16, 4)]
LAYERS = 1 if SMOKE else 8
BLOCK = 16


def make_layer(b: int, ctx: int, hq: int, hkv: int, d: int) -> tuple:
    nb = -(-ctx // BLOCK)
    k = torch.randn(b * nb + 1, BLOCK, hkv, d, device=DEV, dtype=DT)
    v = torch.randn_like(k)
    bt = (torch.randperm(b * nb, device=DEV) + 1).view(b, nb).to(torch.int32)
    q = torch.randn(b, hq, d, device=DEV, dtype=DT)
    qsl = torch.arange(b + 1, device=DEV, dtype=torch.int32)
    lens = torch.full((b,), ctx, device=DEV, dtype=torch.int32)
    return q, k, v, qsl, lens, bt


def run(layers: list[tuple], splits: int, block_n: int | None, warps: int) -> list[torch.Tensor]:
    return [tk.split_kv_decode(q, k, v, qsl, lens, bt, q.shape[-1] ** -0.5, splits, block_n=block_n, num_warps=warps)
            for q, k, v, qsl, lens, bt in layers]


def time_us(layers: list[tuple], splits: int, block_n: int | None, warps: int) -> float:
    if SMOKE:
        return 1.0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from timing import graph_median_ms  # benchmarks/gpu/timing.py, beside this script

    return graph_median_ms(lambda: run(layers, splits, block_n, warps)) * 1e3 / len(layers)


def main() -> None:
    sms = tk.num_sms(DEV) if not SMOKE else 132
    for name, (hq, hkv, d) in SHAPES.items():
        for b, ctx, bound in CASES:
            splits = max(2, tk.choose_num_splits(b, hkv, bound, sms))
            layers = [make_layer(b, ctx, hq, hkv, d) for _ in range(LAYERS)]
            ref = run(layers[:1], splits, None, 4)[0].float()
            cells = []
            for block_n, warps in LAUNCHES:
                out = run(layers[:1], splits, block_n, warps)[0].float()
                err = ((out - ref).norm() / ref.norm()).item()
                label = f"n{block_n or 'default'} w{warps}"
                if err > 1e-2:
                    cells.append(f"{label}: WRONG ({err:.1e})")
                    continue
                cells.append(f"{label} {time_us(layers, splits, block_n, warps):6.2f} us")
            print(f"[{name}] batch {b}, context {ctx}, {splits} splits (max_model_len {bound}): " + " | ".join(cells),
                  flush=True)


if __name__ == "__main__":
    main()
