"""Deterministic mode's CPU linears against the default mode's: the default model's 120 integer-weight linears at
1 and 32 rows, through their bf16 oneDNN copies (what ``--deterministic`` runs, in 32-row tiles) and through the
per-row int kernels (int4pack / the native int4 kernel: what the default mode runs at those sizes). Minimum of three
passes, 2 threads. Usage: ``python benchmarks/det_linears_cpu.py`` (RESULTS.md, CPU, session 10)."""

from __future__ import annotations

import time

import torch

from pagoda import LLM
from pagoda.quantization.int_weight import IntWeight, int_weight_linear


def main() -> None:
    llm = LLM("default", dtype="bfloat16", deterministic=True)
    model = llm.llm_engine.core.runner.model
    ws = [m for m in model.modules() if isinstance(m, IntWeight)]
    torch.set_num_threads(2)
    for rows in (1, 32):
        xs = {k: torch.randn(rows, k, dtype=torch.bfloat16) for k in {w.in_features for w in ws}}
        best: dict[str, float] = {}
        for mode in ("bf16 copies", "per-row int kernels"):
            for _ in range(3):
                t0 = time.perf_counter()
                for w in ws:
                    saved = w.dense_packed
                    if mode != "bf16 copies":
                        w.dense_packed = None
                    int_weight_linear(xs[w.in_features], w, None)
                    w.dense_packed = saved
                best[mode] = min(best.get(mode, float("inf")), time.perf_counter() - t0)
        print(f"{rows} rows, {len(ws)} int-weight linears: "
              + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in best.items()))


if __name__ == "__main__":
    main()
