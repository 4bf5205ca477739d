"""One-call GPU sweep of the bf16 GEMV (pagoda/layers/dense_gemv.py) against cuBLAS (``F.linear``) per weight shape.

Shapes: the linears of the Qwen3-30B-A3B shape (qkv, o, router), Llama-3-8B (qkv, o, gate_up, down, LM head),
Qwen3-8B (qkv, gate_up, down) and the default model SmolLM2-135M (qkv, o, gate_up, down), at 1, 2, 4, 5 and 8
token rows (5: a batch-1 verify of 4 proposals; ``--rows``, ``--shapes`` narrow it), bf16, CUDA-core and
tensor-core rules.
Timings: a CUDA graph of one call on each of enough distinct weight copies that L2 holds none of them (as in a
decode step, where the other layers' weights pass through L2 in between), median of replays, per call; the floor
is the weight bytes over the copy bandwidth (benchmarks/gpu/bandwidth.py). Every candidate is checked against
``F.linear`` (rejected above 1e-2 relative error).

Prints per (rows, N, K) cuBLAS and the best GEMV rule, then a ``CHOOSE`` block in the syntax of ``GEMV_TABLE``
with the shapes where the GEMV beat cuBLAS by at least 3 %. ``--json PATH`` also writes the winners as JSON.

Usage (GPU machine, repo root): ``python benchmarks/gpu/dense_gemv_sweep.py`` (~2 min on an H200);
``--smoke``: CPU, Triton interpreter, tiny shapes (checks the script runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pagoda.layers.dense_gemv import GemvRule, dense_gemv  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
DT = torch.float32 if SMOKE else torch.bfloat16
SHAPES: dict[str, tuple[int, int]] = {"tiny-a": (24, 64), "tiny-b": (40, 96)} if SMOKE else {
    "qwen3-30b-a3b qkv": (5120, 2048), "qwen3-30b-a3b o": (2048, 4096), "qwen3-30b-a3b router": (128, 2048),
    "llama3-8b qkv": (6144, 4096), "llama3-8b o": (4096, 4096), "llama3-8b gate_up": (28672, 4096),
    "llama3-8b down": (4096, 14336), "llama3-8b lm_head": (128256, 4096),
    "qwen3-8b gate_up": (24576, 4096), "qwen3-8b down": (4096, 12288),
    "smollm2 qkv": (960, 576), "smollm2 o": (576, 576), "smollm2 gate_up": (3072, 576), "smollm2 down": (576, 1536),
}
ROWS = (1, 2) if SMOKE else (1, 2, 4, 5, 8)
ONE_ROW = [GemvRule(8, 512), GemvRule(4, 512), GemvRule(8, 256), GemvRule(16, 256), GemvRule(2, 1024),
           GemvRule(4, 1024), GemvRule(8, 512, 8), GemvRule(16, 512, 8)]
FMA_ROWS = [GemvRule(4, 512, 2), GemvRule(8, 512, 2), GemvRule(8, 256, 1), GemvRule(4, 256, 1), GemvRule(2, 1024, 4),
            GemvRule(4, 1024, 4), GemvRule(8, 1024, 4)]
"""CUDA-core rules for 2..8 rows: ``block_k / 8 == 32 * num_warps`` (every thread on its own 16 bytes of K, its
channels in registers: no cross-thread work in the K loop, checked in the compiled code, RESULTS.md session 23)."""
DOT_ROWS = [GemvRule(16, 128, 4, True, 3), GemvRule(16, 256, 4, True, 3), GemvRule(16, 256, 2, True, 4),
            GemvRule(32, 128, 4, True, 3), GemvRule(32, 256, 4, True, 3), GemvRule(16, 512, 4, True, 2),
            GemvRule(64, 128, 4, True, 4), GemvRule(16, 128, 1, True, 6), GemvRule(16, 256, 4, True, 4),
            GemvRule(32, 128, 4, True, 4), GemvRule(32, 256, 4, True, 4),
            # session 38: fewer programs a weight (one resident wave: 28,672 / 128 = 224 on 132 SMs) and deeper
            # pipelines, for the 5-row verify that ran ~6 % behind the one-row GEMV on the same weights
            GemvRule(128, 128, 4, True, 4), GemvRule(128, 128, 8, True, 4), GemvRule(128, 64, 4, True, 6),
            GemvRule(64, 128, 4, True, 6), GemvRule(64, 128, 8, True, 4), GemvRule(64, 256, 4, True, 4),
            GemvRule(64, 64, 4, True, 8), GemvRule(32, 128, 4, True, 6)]
SPLIT_ROWS = [GemvRule(64, 128, 4, True, 4, 2), GemvRule(64, 128, 4, True, 4, 4), GemvRule(64, 128, 4, True, 4, 8),
              GemvRule(32, 128, 4, True, 4, 2), GemvRule(32, 128, 4, True, 4, 4), GemvRule(32, 256, 4, True, 3, 2),
              GemvRule(32, 256, 4, True, 3, 4), GemvRule(64, 256, 4, True, 3, 4), GemvRule(128, 128, 8, True, 3, 4),
              GemvRule(16, 256, 4, True, 3, 2), GemvRule(16, 256, 4, True, 4, 4)]
"""Tensor-core rules with K in slices (``split_k``): more programs on the narrow 8B linears (N = 4096: 64 tiles of
64 channels for 132 SMs)."""
if SMOKE:
    ONE_ROW, FMA_ROWS, DOT_ROWS = [GemvRule(8, 32), GemvRule(4, 64)], [GemvRule(8, 32)], [GemvRule(16, 32, 4, True, 2)]
    SPLIT_ROWS = [GemvRule(16, 32, 4, True, 2, 2)]


def candidates(m: int) -> list[GemvRule]:
    """One row: the element-wise rules; 2..8 rows: CUDA-core and tensor-core rules, whole K and in slices."""
    return ONE_ROW if m == 1 else FMA_ROWS + DOT_ROWS + SPLIT_ROWS


L2_FLUSH_BYTES = 256 << 20
BYTES = 2


def copy_bandwidth() -> float:
    if SMOKE:
        return 1e10
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bandwidth import device_copy_bandwidth  # benchmarks/gpu/bandwidth.py, beside this script

    return device_copy_bandwidth(2**29, DEV)


def per_call_us(call, weights: list[torch.Tensor]) -> float:
    """Median microseconds per call of ``call(w)`` over every weight copy, replayed as one CUDA graph."""
    def fn():
        for w in weights:
            call(w)
    if SMOKE:  # one call: the interpreter runs each in ~0.1 s
        call(weights[0])
        return 1.0
    from timing import graph_median_ms  # benchmarks/gpu/timing.py, beside this script

    return graph_median_ms(fn, rounds=9, replays=5) * 1e3 / len(weights)


def sweep_shape(n: int, k: int, bw: float, rows: list[int]) -> list[dict]:
    copies = max(2, min(64, -(-L2_FLUSH_BYTES // (n * k * BYTES))))
    weights = [torch.randn(n, k, device=DEV, dtype=DT) * 0.02 for _ in range(copies)]
    floor_us = n * k * BYTES / bw * 1e6
    found = []
    for m in rows:
        x = torch.randn(m, k, device=DEV, dtype=DT)
        ref = F.linear(x, weights[0]).float()
        cublas = per_call_us(lambda w, x=x: F.linear(x, w), weights)
        best: tuple[float, GemvRule] | None = None
        for rule in candidates(m):
            err = ((dense_gemv(x, weights[0], None, rule).float() - ref).norm() / ref.norm()).item()
            if err > 1e-2:
                print(f"    m={m} {rule.short()}: WRONG (rel. error {err:.1e})")
                continue
            us = per_call_us(lambda w, x=x, rule=rule: dense_gemv(x, w, None, rule), weights)
            if best is None or us < best[0]:
                best = (us, rule)
        assert best is not None
        print(f"  m={m} N={n} K={k}: cuBLAS {cublas:7.2f} us ({cublas / floor_us:4.2f}x floor {floor_us:.2f}), "
              f"GEMV best {best[0]:7.2f} us ({best[0] / floor_us:4.2f}x) {best[1].short()}", flush=True)
        found.append({"m": m, "n": n, "k": k, "cublas_us": cublas, "gemv_us": best[0], "floor_us": floor_us,
                      "rule": list(dataclasses.astuple(best[1]))})
    return found


def table_from_json(path: str) -> dict[tuple[int, int, int], GemvRule]:
    """``--json``'s winners (GEMV faster than cuBLAS by 3 % or more) as a ``GEMV_TABLE``."""
    return {(r["m"], r["n"], r["k"]): GemvRule(*r["rule"]) for r in json.loads(Path(path).read_text())
            if r["gemv_us"] < 0.97 * r["cublas_us"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rows", type=int, nargs="+", default=list(ROWS),
                    help="token rows to sweep (1, 2, 4, 5, 8: the table's row buckets, and 5 for a batch-1 verify)")
    ap.add_argument("--shapes", nargs="+", default=None, help="only the shapes whose name contains one of these")
    args = ap.parse_args()
    bw = copy_bandwidth()
    print(f"copy bandwidth (read+write): {bw / 1e9:.0f} GB/s")
    results = []
    for name, (n, k) in SHAPES.items():
        if args.shapes and not any(part in name for part in args.shapes):
            continue
        print(f"== {name}", flush=True)
        results += sweep_shape(n, k, bw, args.rows)
    print("CHOOSE (paste into GEMV_TABLE):")
    for r in results:
        if r["gemv_us"] < 0.97 * r["cublas_us"]:
            print(f"    ({r['m']}, {r['n']}, {r['k']}): {GemvRule(*r['rule'])!r},  "
                  f"# {r['cublas_us']:.1f} -> {r['gemv_us']:.1f} us")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
