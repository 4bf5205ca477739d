"""Decode-step time of the transformers fallback against the native Llama class, in one process, step by step.

On a shared, loaded VM, separate ``pagoda bench latency`` runs drift by 2x between runs; here the models take
turns step by step (rotating order) on identical batches, so every round's ratio sees the same load. Models:
``native`` (``--model-impl auto``), ``fallback`` (``--model-impl transformers``) and ``fallback-unfused``
(the fallback without its fused RMSNorms: what it was before they existed). A step is the model forward plus
the logits, with the CPU attention backend's metadata as the runner builds it (the scheduler's host work is
the same for both implementations and is left out).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/fallback_step.py --batch-size 1 32 --rounds 15

(``OMP_WAIT_POLICY=PASSIVE``: what pagoda's engine sets before torch loads; this script imports torch first.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.torch_ref import TorchAttentionBackend
from pagoda.config import EngineArgs
from pagoda.models.loader import load_model
from pagoda.worker.kv_cache import allocate_kv_caches

BLOCK = 16


def _load(name: str, args: argparse.Namespace, batch: int) -> Any:
    import pagoda.models.transformers_backend as tb

    impl = "auto" if name == "native" else "transformers"
    fuse = tb.fuse_rms_norms
    if name == "fallback-unfused":
        tb.fuse_rms_norms = lambda model, triton: 0  # type: ignore[assignment]
    try:
        model = {"model": args.model} if args.model else {}  # default: pagoda's default model
        cfg = EngineArgs(**model, load_format=args.load_format, model_impl=impl, dtype=args.dtype,
                         max_num_seqs=batch).create_config()
        return load_model(cfg)
    finally:
        tb.fuse_rms_norms = fuse


class _Runner:
    """One model, its paged cache, ``batch`` requests prefilled to ``context`` tokens, then decode steps."""

    def __init__(self, model: Any, batch: int, context: int, steps: int, dtype: torch.dtype) -> None:
        self.model, self.batch = model, batch
        nb = -(-(context + steps + 1) // BLOCK)
        self.caches = allocate_kv_caches(model.num_layers, 1 + batch * nb, BLOCK, model.num_kv_heads,
                                         model.head_dim, dtype, torch.device("cpu"), "HND")
        self.tables = (1 + torch.arange(batch * nb, dtype=torch.int32)).view(batch, nb)
        self.backend = TorchAttentionBackend()
        g = torch.Generator().manual_seed(0)
        for i in range(batch):
            ids = torch.randint(0, 1000, (context,), generator=g)
            pos = torch.arange(context)
            meta = AttentionMetadata(
                torch.tensor([0, context], dtype=torch.int32), torch.tensor([context], dtype=torch.int32),
                self.tables[i : i + 1], self._slots(i, pos), context, context, [context], [context])
            model(ids, pos, self.caches, meta, self.backend)
        self.lens = torch.full((batch,), context)

    def _slots(self, i: int, pos: torch.Tensor) -> torch.Tensor:
        return self.tables[i, pos // BLOCK].long() * BLOCK + pos % BLOCK

    def step(self) -> float:
        b, lens = self.batch, self.lens
        t0 = time.perf_counter()
        slots = torch.stack([self._slots(i, lens[i]) for i in range(b)])
        nb = int(lens.max()) // BLOCK + 1
        meta = AttentionMetadata(torch.arange(b + 1, dtype=torch.int32), (lens + 1).int(), self.tables[:, :nb],
                                 slots, 1, int(lens.max()) + 1, [1] * b, (lens + 1).tolist(), True)
        self.model.compute_logits(self.model(torch.zeros(b, dtype=torch.long), lens.clone(), self.caches, meta,
                                             self.backend))
        self.lens = lens + 1
        return time.perf_counter() - t0


@torch.inference_mode()
def measure(args: argparse.Namespace, batch: int) -> dict[str, Any]:
    names = ["native", "fallback", "fallback-unfused"]
    dtype = getattr(torch, args.dtype)
    runners = {n: _Runner(_load(n, args, batch), batch, args.context, args.rounds + 2, dtype) for n in names}
    for r in runners.values():
        r.step(), r.step()  # warm-up
    times: dict[str, list[float]] = {n: [] for n in names}
    for k in range(args.rounds):
        for n in names[k % 3:] + names[: k % 3]:
            times[n].append(runners[n].step() * 1e3)
    med = {n: statistics.median(t) for n, t in times.items()}
    ratios = {n: statistics.median(a / b for a, b in zip(times[n], times["native"], strict=True))
              for n in names[1:]}
    return {"batch": batch, "median_ms": med, "median_round_ratio_to_native": ratios, "times_ms": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--load-format", default="safetensors")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 32])
    p.add_argument("--context", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    from pagoda.worker.cpu_malloc import tune_malloc

    tune_malloc()  # as the model runner does on the CPU
    results = []
    for b in args.batch_size:
        res = measure(args, b)
        results.append(res)
        print(f"batch {b}: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in res["median_ms"].items()) + "; per-round "
              "ratio to native (median): " + ", ".join(f"{n} {r:.2f}x" for n, r in
                                                       res["median_round_ratio_to_native"].items()))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
