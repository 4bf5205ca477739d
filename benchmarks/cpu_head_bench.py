"""The CPU LM head at a few rows: :mod:`pagoda.layers.cpu_head_q8` (a Q8_0 table's codes) and
:mod:`pagoda.layers.cpu_head_dot` (its bf16 copy; both float32 logits, on the decoder stack's thread team) against
oneDNN's prepacked bf16 matmul plus the float32 refinement of each row's 8 leading logits (the head they replace up
to ``MAX_ROWS`` rows), on a random Q8_0 weight of the default model's head shape (49152 x 576) and its bf16 copy.
Before each timed call a 64 MiB buffer is rewritten, as a decode step's layers flush the caches before the head
runs. Prints the median ms of each at each row count, each kernel's max error against float64 (the bf16 copy's
includes its weights' rounding) and whether each row alone gives the same bits as in the batch.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/cpu_head_bench.py [--rows 1 2 4 5 8 16 32] [--reps 15]
        [--vocab 49152 --hidden 576] [--batch-hint 256]
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 5, 8, 16, 32])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--batch-hint", type=int, default=256,
                    help="oneDNN's packing hint (the engine passes min(max_num_seqs, 256); serve's default: 256)")
    args = ap.parse_args(argv)

    from pagoda.layers import cpu_head_dot, cpu_head_q8
    from pagoda.layers.cpu_linear import pack_weight, packed_linear
    from pagoda.layers.logits import refine_top_logits

    if not cpu_head_dot.available():
        raise SystemExit("cpu_head_dot is not available here (needs AVX512-BF16 and a C compiler)")
    if not cpu_head_q8.available():
        raise SystemExit("cpu_head_q8 is not available here (needs AVX-512 VNNI and a C compiler)")
    g = torch.Generator().manual_seed(0)
    q8 = cpu_head_q8.Q8Head.pack(torch.randint(-127, 128, (args.vocab, args.hidden), generator=g, dtype=torch.int8),
                                 torch.rand(args.vocab, args.hidden // 32, generator=g) * 0.001)
    exact = q8.dense().double()
    w = q8.dense().bfloat16()
    packed = pack_weight(w, args.batch_hint)
    flush = torch.empty(64 * 2**20 // 4)
    saved_max = cpu_head_dot.MAX_ROWS, cpu_head_q8.MAX_ROWS
    cpu_head_dot.MAX_ROWS = cpu_head_q8.MAX_ROWS = max(args.rows)  # time the kernels above their threshold too

    def dot(x: torch.Tensor) -> torch.Tensor:
        out = cpu_head_dot.head(x, w)
        assert out is not None
        return out

    def q8_head(x: torch.Tensor) -> torch.Tensor:
        out = q8.head(x)
        assert out is not None
        return out

    def onednn(x: torch.Tensor) -> torch.Tensor:
        logits = (packed_linear(x, packed, None) if packed is not None else x @ w.t()).float()
        return refine_top_logits(logits, x, w)

    print(f"torch threads {torch.get_num_threads()}, head {args.vocab} x {args.hidden} (Q8_0 {q8.nbytes / 2**20:.1f} "
          f"MiB, bf16 {w.numel() * 2 / 2**20:.1f} MiB), oneDNN prepacked (batch hint {args.batch_hint}): "
          f"{packed is not None}")
    for m in args.rows:
        x = torch.randn(m, args.hidden, generator=g).bfloat16()
        med, notes = {}, []
        for name, fn in (("q8", q8_head), ("bf16-dot", dot), ("oneDNN+refine", onednn)):
            if name != "oneDNN+refine":
                got = fn(x)
                err = (got.double() - x.double() @ exact.t()).abs().max().item()
                alone = all(torch.equal(fn(x[i : i + 1])[0], got[i]) for i in range(m))
                notes.append(f"{name} max err {err:.1e}, rows alone bitwise {alone}")
            ts = []
            for _ in range(args.reps):
                flush.add_(1.0)
                t = time.perf_counter()
                fn(x)
                ts.append(time.perf_counter() - t)
            med[name] = sorted(ts)[len(ts) // 2] * 1e3
        print(f"rows {m:3d}: " + "  ".join(f"{k} {v:.3f} ms" for k, v in med.items())
              + f"  q8/oneDNN {med['q8'] / med['oneDNN+refine']:.2f}  ({'; '.join(notes)})", flush=True)
    cpu_head_dot.MAX_ROWS, cpu_head_q8.MAX_ROWS = saved_max


if __name__ == "__main__":
    main()
