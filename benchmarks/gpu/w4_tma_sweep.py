"""The one-row 4-bit GEMV by TMA (pagoda/quantization/kernels/triton_w4_gemv_tma.py) against the rule dispatched
today (``choose_config(1, ...)``: triton_w4_gemv.w4_gemv) and bf16 ``F.linear``, on the Llama-3-8B linears (issue 12,
W4A16 batch 1).

Timing as benchmarks/gpu/int4_gemv_sweep.py (its ``Weights``: ``COPIES`` distinct weights, more bytes than L2 holds;
one CUDA graph of back-to-back launches, so PDL overlaps consecutive linears as in a decode step). Candidates: block
N, warps, shared-memory stages, split-K waves, the ``lift`` decode, PDL; each checked against dequantize + matmul
first (rejected above 1e-2 relative error). Prints µs per linear, x floor, each shape's best and the 32-layer step
of linears (best per shape) against today's. Usage: ``python benchmarks/gpu/w4_tma_sweep.py [--json PATH]
[--tables PATH] [--quick]`` (``--tables``: today's 4-bit tables with this run's one-row TMA winners, for
``with_gemv_table.py --w4-table``; ``--smoke``: CPU interpreter, tiny shapes).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import int4_gemv_sweep as base  # noqa: E402  (sets TRITON_INTERPRET for --smoke before triton loads)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from pagoda.quantization.kernels import triton_wna16 as tw  # noqa: E402
from pagoda.quantization.kernels.triton_wna16 import Rule  # noqa: E402

QUICK = "--quick" in sys.argv
# Rule fields: (block_n, num_warps, stages, waves, lift, pdl)
GRID = [(bn, w, st, wv, lift, 1) for bn, w in ((64, 2), (64, 4), (128, 4), (128, 8), (256, 8))
        for st in (3, 5) for wv in (1, 2, 4) for lift in (0, 1)]
GRID += [(128, 4, 4, 2, 1, 0), (128, 4, 4, 2, 0, 0)]  # PDL off, for its effect
if QUICK or base.SMOKE:
    GRID = [(64, 2, 3, 2, 0, 1), (64, 4, 4, 1, 1, 1), (32, 2, 2, 2, 1, 0)]


def tma_rule(bn: int, nw: int, st: int, wv: int, lift: int, pdl: int) -> Rule:
    return Rule("gemv", bn, block_m=1, waves=wv, num_warps=nw, num_stages=st, pdl=bool(pdl), lift=bool(lift),
                tma=True)


def label(rule: Rule, split: int) -> str:
    return f"tma bn{rule.block_n} w{rule.num_warps} st{rule.num_stages} wv{rule.waves:g} split{split} " \
           f"lift{int(rule.lift)} pdl{int(rule.pdl)}"


def main() -> None:
    sms = tw.num_sms(base.dev.index)
    if base.SMOKE:
        bw = 1e10
    else:
        from benchmarks.gpu.bandwidth import device_copy_bandwidth

        bw = device_copy_bandwidth(2**29)
        print(f"{torch.cuda.get_device_name()}  copy bandwidth {bw / 1e9:.0f} GB/s  SMs {sms}  torch "
              f"{torch.__version__}  triton {triton.__version__}")
    out: dict[str, dict] = {}
    shapes = dict(tw.INT4_SHAPE_TABLE)
    step_now = step_best = step_bf16 = 0.0
    for name, (n, k) in base.SHAPES.items():
        w = base.Weights(n, k)
        x = torch.randn(1, k, device=base.dev, dtype=base.DT)
        floor = w.floor_bytes / bw * 1e6
        bf16 = base.per_linear_us(lambda x=x, w=w: [F.linear(x, d) for d in w.bf16])
        now_cfg = tw.choose_config(1, n, k, base.G, sms)
        now = base.time_config(w, x, now_cfg, "now")
        res: dict[Rule, float] = {}
        for fields in GRID:
            rule = tma_rule(*fields)
            cfg = tw.resolve(rule, 1, n, k, base.G, sms)
            t = base.time_config(w, x, cfg, label(rule, cfg.split_k))
            if t is not None:
                res[rule] = t
                print(f"    {name:8s} {t:6.1f} us  {t / floor:4.2f}x floor  {label(rule, cfg.split_k)}", flush=True)
        best = min(res, key=res.__getitem__) if res else None
        best_t = res[best] if best else float("nan")
        print(f"  {name:8s} floor {floor:5.1f} us  bf16 {bf16:6.1f}  now {base.fmt(now)}  best tma {best_t:6.1f}  "
              f"{label(best, tw.resolve(best, 1, n, k, base.G, sms).split_k) if best else '-'}  (now: {now_cfg})",
              flush=True)
        out[name] = {"floor": floor, "bf16": bf16, "now": now, "best": asdict(best) if best else None,
                     "tma": {label(r, tw.resolve(r, 1, n, k, base.G, sms).split_k): t for r, t in res.items()}}
        if best is not None and now is not None and best_t < 0.97 * now:
            shapes[1, n, k] = best
        step_bf16 += bf16 * base.LAYERS / 1e3
        step_now += (now or 0) * base.LAYERS / 1e3
        step_best += min(now or 1e9, best_t if best else 1e9) * base.LAYERS / 1e3
    print(f"\nstep of linears (32 layers): bf16 {step_bf16:.3f} ms  now {step_now:.3f} ms  "
          f"best of now / tma per shape {step_best:.3f} ms")
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(out, indent=1))
    if "--tables" in sys.argv:  # today's tables with the TMA winners (3 % or more under today's rule): the
        # with_gemv_table.py --w4-table format
        tables: dict = {cls: {str(m): asdict(r) for m, r in rules.items()} for cls, rules in tw.SMALL_M_TABLE.items()}
        tables.update(int4_table={}, ms=[1], int4_shapes={f"{key},{nn},{kk}": asdict(r)
                                                          for (key, nn, kk), r in shapes.items()})
        Path(sys.argv[sys.argv.index("--tables") + 1]).write_text(json.dumps(tables))
        print("INT4_SHAPE_TABLE one-row entries from this run:")
        for (key, nn, kk), r in shapes.items():
            if key == 1:
                print(f"    ({key}, {nn}, {kk}): {r},")


if __name__ == "__main__":
    main()
