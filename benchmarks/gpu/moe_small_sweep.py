"""One-call GPU sweep of the fused MoE's small-batch path (two GEMVs) against its grouped path, per layer.

For one MoE layer of the Qwen3-30B-A3B shape (128 experts, top-8, H 2048, I 768) and of the Mixtral-8x7B
shape (8 experts, top-2, H 4096, I 14336), bf16, at T = 1, 2, 4, 8, 16 tokens with random routing
(:func:`fused_topk` of random logits): the grouped path (alignment + grouped GEMMs + SiLU·mul + top-k sum,
``MOE_TABLE``'s launches) and the small path (``pagoda/layers/fused_moe/small_moe.py``) under candidate
launches, the gate_up kernel's then the down kernel's (coordinate-wise: each candidate of one with the other's
current best). Each candidate is checked against the grouped output (rejected above 1e-2 relative error).
Timings: a CUDA graph of one call on each of 4 (Mixtral: 2) distinct layers (so L2 holds none of their weights),
median of replays, per layer. The floor: the bytes of the distinct experts the routing selected
(3 x H x I x 2 each) over the measured copy bandwidth (benchmarks/gpu/bandwidth.py).

Prints per (shape, T) lines, then a ``CHOOSE`` block in the syntax of ``SMALL_MOE_TABLE`` from the Qwen3
shape (the issue's figure): keys ``T * top_k`` for every T from 1 up to the last one where the small path
beats the grouped one; above it the grouped path runs. The Mixtral lines then say which path that table
picks at each T (``small_moe_rules``: not above the expert count either) and which one measured faster.

Usage (GPU machine, repo root): ``python benchmarks/gpu/moe_small_sweep.py`` (< 90 s on an H200);
``--smoke``: CPU, Triton interpreter, tiny shapes (checks the script runs). ``--quant fp8`` / ``--quant int4``:
quantized experts (:mod:`pagoda.layers.fused_moe.quantized`; FP8 codes with per-row scales, or 4-bit codes with
groups of 128) instead of bf16, the floor counting their bytes; the CHOOSE block is then that mode's table
(paste it into ``SMALL_MOE_QUANT_TABLES``).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

from pagoda.layers.fused_moe import quantized as qz  # noqa: E402
from pagoda.layers.fused_moe import small_moe as sm  # noqa: E402
from pagoda.layers.fused_moe import triton_moe as tm  # noqa: E402
from pagoda.layers.fused_moe.routing import RoutingConfig  # noqa: E402
from pagoda.layers.fused_moe.small_moe import MoeGemvRule  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
DT = torch.float32 if SMOKE else torch.bfloat16
# name -> (experts, top_k, hidden, intermediate, routing weights rounded to the model dtype, layer copies)
SHAPES = {"qwen3-30b-a3b": (10, 4, 32, 24, True, 1), "mixtral-8x7b": (4, 2, 32, 48, False, 1)} if SMOKE else \
    {"qwen3-30b-a3b": (128, 8, 2048, 768, True, 4), "mixtral-8x7b": (8, 2, 4096, 14336, False, 2)}
TS = (1,) if SMOKE else (1, 2, 4, 8, 16)
# The first of each list is SMALL_MOE_TABLE's default (the search starts there). Registers (Triton 3.9, sm_90)
# bound the programs an SM holds: 64K / (registers x threads).
GATE_UP = [MoeGemvRule(8, 256), MoeGemvRule(8, 512), MoeGemvRule(4, 512), MoeGemvRule(16, 256),
           MoeGemvRule(16, 256, num_warps=8), MoeGemvRule(4, 1024), MoeGemvRule(2, 1024)]
# The float32 accumulator tile is block_u x block_n x block_k (block_u 0: all of top_k).
DOWN = [MoeGemvRule(4, 128), MoeGemvRule(4, 256), MoeGemvRule(8, 128, num_warps=8), MoeGemvRule(8, 256, num_warps=8),
        MoeGemvRule(4, 256, block_u=2), MoeGemvRule(8, 256, block_u=2), MoeGemvRule(4, 1024, block_u=2),
        MoeGemvRule(8, 512, num_warps=8, block_u=2)]
if SMOKE:
    GATE_UP, DOWN = [MoeGemvRule(8, 32), MoeGemvRule(16, 16)], [MoeGemvRule(4, 32), MoeGemvRule(8, 16, block_u=1)]
QUANT = sys.argv[sys.argv.index("--quant") + 1] if "--quant" in sys.argv else "none"
_MODES = {"none": qz.MODE_PLAIN, "fp8": qz.MODE_FP8, "int4": qz.MODE_INT4}
BYTES = {"none": 2.0, "fp8": 1.0, "int4": 0.5 + 2 * 2 / 128}[QUANT]
if QUANT != "none" and not SMOKE:  # 1-byte / half-byte codes: longer K steps move as many bytes per load
    GATE_UP += [MoeGemvRule(8, 1024), MoeGemvRule(16, 512), MoeGemvRule(32, 256, num_warps=8)]
    DOWN += [MoeGemvRule(8, 1024, num_warps=8, block_u=2), MoeGemvRule(16, 256, num_warps=8),
             MoeGemvRule(8, 512, num_warps=8)]


def copy_bandwidth() -> float:
    if SMOKE:
        return 1e10
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bandwidth import device_copy_bandwidth  # benchmarks/gpu/bandwidth.py, beside this script

    return device_copy_bandwidth(2**29, DEV)


def per_layer_us(call, layers) -> float:
    """Median microseconds per layer of ``call(layer)`` over every layer copy, replayed as one CUDA graph."""
    def fn():
        for lay in layers:
            call(lay)
    if SMOKE:
        fn()  # the code path, under the interpreter
        return 1.0
    from timing import graph_median_ms  # benchmarks/gpu/timing.py, beside this script

    return graph_median_ms(fn, rounds=9, replays=5) * 1e3 / len(layers)


def _stacked(E: int, n: int, k: int) -> qz.StackedWeight:
    """Random experts in the ``--quant`` form (weights of about ±0.02)."""
    if QUANT == "fp8":
        q = (torch.rand(E, n, k, device=DEV) * 2 - 1).mul(448).to(torch.float8_e4m3fn)
        return qz.StackedWeight(qz.MODE_FP8, q, torch.full((E, n, 1), 0.02 / 448, device=DEV), None, n, k, 1, k, DT)
    group = min(128, k)
    q = torch.randint(0, 256, (E, n, k // 2), device=DEV, dtype=torch.uint8)
    scale = torch.full((E, n, k // group), 0.02 / 8, device=DEV, dtype=DT)
    return qz.StackedWeight(qz.MODE_INT4, q, scale, scale * -8, n, k, 1, group, DT)


def make_weights(shape: tuple) -> list[tuple]:
    """``copies`` distinct layers' (w13, w2)."""
    E, _, H, inter, _, copies = shape
    if QUANT != "none":
        return [(_stacked(E, 2 * inter, H), _stacked(E, H, inter)) for _ in range(copies)]
    return [(torch.randn(E, 2 * inter, H, device=DEV, dtype=DT) * 0.02,
             torch.randn(E, H, inter, device=DEV, dtype=DT) * 0.02) for _ in range(copies)]


def make_layers(shape: tuple, weights: list, t: int) -> list[tuple]:
    """One (x, w13, w2, routing weights, ids) per layer copy, each with its own random routing of ``t`` tokens."""
    E, K, H, _, cast, _ = shape
    rc = RoutingConfig(E, K, True, cast)
    out = []
    for w13, w2 in weights:
        wts, ids = tm.fused_topk(torch.randn(t, E, device=DEV, dtype=DT), rc)
        out.append((torch.randn(t, H, device=DEV, dtype=DT), w13, w2, wts, ids))
    return out


def rule_text(r: MoeGemvRule) -> str:
    """The constructor call with the non-default fields only."""
    rest = [f"{f.name}={getattr(r, f.name)!r}" for f in fields(r)[2:] if getattr(r, f.name) != f.default]
    return f"MoeGemvRule({', '.join([f'block_n={r.block_n}', f'block_k={r.block_k}', *rest])})"


def _search(layers, ref: torch.Tensor) -> tuple[MoeGemvRule, MoeGemvRule, float]:
    """Coordinate-wise: the best gate_up launch with the first down candidate, then the best down launch with
    that gate_up launch. Returns the two launches and the last pass's best time."""
    best = [GATE_UP[0], DOWN[0]]
    best_us = float("inf")
    for which, cands in ((0, GATE_UP), (1, DOWN)):
        timed = {}
        for rule in cands:
            rules = (rule, best[1]) if which == 0 else (best[0], rule)
            out = sm.small_fused_experts(*layers[0], rules)
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            if err > 1e-2:
                print(f"    {'gate_up' if which == 0 else 'down'} {rule_text(rule)}: WRONG (rel. error {err:.1e})")
                continue
            timed[rule] = per_layer_us(lambda lay, r=rules: sm.small_fused_experts(*lay, r), layers)
        if not timed:
            raise RuntimeError("every small-path launch gave a wrong result")
        best[which] = min(timed, key=timed.__getitem__)
        best_us = timed[best[which]]
    return best[0], best[1], best_us


def sweep_shape(name: str, shape: tuple, bw: float) -> dict[int, dict]:
    """Per T: floor, grouped and best small timings (us per layer) and the winning launches."""
    E, K, H, inter = shape[:4]
    res = {}
    weights = make_weights(shape)
    for t in TS:
        layers = make_layers(shape, weights, t)
        distinct = statistics.mean(int(torch.unique(lay[4]).numel()) for lay in layers)
        floor = distinct * 3 * H * inter * BYTES / bw * 1e6
        grouped_us = per_layer_us(lambda lay, m=t * K: tm.fused_experts(*lay, rules=tm.moe_rules(m)), layers)
        ref = tm.fused_experts(*layers[0], rules=tm.moe_rules(t * K))
        r13, r2, small_us = _search(layers, ref)
        default = sm.small_moe_rules(t * K, E, sm.SMALL_MOE_QUANT_TABLES.get(_MODES[QUANT]))
        default_us = per_layer_us(lambda lay, r=default: sm.small_fused_experts(*lay, r), layers) if default else None
        note = f"current table {default_us:.1f} us" if default_us else "current table: grouped"
        print(f"[{name}] T={t:2d} ({t * K:3d} pairs, {distinct:5.1f} distinct experts) floor {floor:6.1f} us | "
              f"grouped {grouped_us:6.1f} us ({grouped_us / floor:4.2f}x) | small {small_us:6.1f} us "
              f"({small_us / floor:4.2f}x) {rule_text(r13)}, {rule_text(r2)} | {note}", flush=True)
        res[t] = {"floor": floor, "grouped": grouped_us, "small": small_us, "rules": (r13, r2)}
    return res


def choose(res: dict[int, dict], top_k: int) -> dict[int, tuple[MoeGemvRule, MoeGemvRule]]:
    """``T * top_k`` -> winners for each T from the smallest up to the last one the small path wins."""
    table = {}
    for t in sorted(res):
        if res[t]["small"] >= res[t]["grouped"]:
            break
        table[t * top_k] = res[t]["rules"]
    return table


def table_text(table: dict[int, tuple[MoeGemvRule, MoeGemvRule]]) -> str:
    head = "SMALL_MOE_TABLE: dict[int, tuple[MoeGemvRule, MoeGemvRule]] = {  # max pairs -> (gate_up rule, down rule)"
    body = [f"    {p}: ({rule_text(a)}, {rule_text(b)})," for p, (a, b) in sorted(table.items())]
    return "\n".join([head, *body, "}"])


def check_other(name: str, shape: tuple, res: dict[int, dict], table: dict) -> None:
    """What ``table`` would run for this shape at each T, against the measured faster path."""
    E, K = shape[:2]
    weights = make_weights(shape)
    for t, r in sorted(res.items()):
        rules = sm.small_moe_rules(t * K, E, table)
        picked = "small" if rules else "grouped"
        us = r["grouped"]
        if rules:
            us = per_layer_us(lambda lay, rr=rules: sm.small_fused_experts(*lay, rr), make_layers(shape, weights, t))
        faster = "small" if r["small"] < r["grouped"] else "grouped"
        print(f"[{name}] T={t:2d}: the table runs {picked} ({us:.1f} us, {us / r['floor']:.2f}x floor); measured "
              f"faster: {faster} (small best {r['small']:.1f} us, grouped {r['grouped']:.1f} us)"
              + ("" if picked == faster else "  <-- DISAGREES"))


def main() -> None:
    t0 = time.perf_counter()
    bw = copy_bandwidth()
    dev = "smoke (CPU interpreter)" if SMOKE else torch.cuda.get_device_name()
    print(f"{dev}  copy bandwidth {bw / 1e9:.0f} GB/s  torch {torch.__version__}  experts: {QUANT}")
    results = {}
    for name, shape in SHAPES.items():
        results[name] = sweep_shape(name, shape, bw)
        if not SMOKE:
            torch.cuda.empty_cache()
    qwen = results["qwen3-30b-a3b"]
    table = choose(qwen, SHAPES["qwen3-30b-a3b"][1])
    print(f"[qwen3-30b-a3b] T=1 experts per layer: small {qwen[1]['small']:.1f} us vs grouped "
          f"{qwen[1]['grouped']:.1f} us; x48 layers {qwen[1]['small'] * 48 / 1e3:.2f} ms vs "
          f"{qwen[1]['grouped'] * 48 / 1e3:.2f} ms (floor {qwen[1]['floor'] * 48 / 1e3:.2f} ms)")
    k = SHAPES["qwen3-30b-a3b"][1]
    lost = [t for t in sorted(qwen) if t * k not in table]
    print(f"[qwen3-30b-a3b] the grouped path wins from T={lost[0]} ({lost[0] * k} pairs)" if lost else
          f"[qwen3-30b-a3b] the small path wins at every T measured (up to {max(qwen)}): sweep larger T to find "
          "where the grouped path takes over")
    check_other("mixtral-8x7b", SHAPES["mixtral-8x7b"], results["mixtral-8x7b"], table)
    print(f"\nsweep took {time.perf_counter() - t0:.0f} s")
    print("===== CHOOSE: paste over SMALL_MOE_TABLE in pagoda/layers/fused_moe/small_moe.py =====")
    print(table_text(table))
    print("===== END CHOOSE =====")


if __name__ == "__main__":
    main()
