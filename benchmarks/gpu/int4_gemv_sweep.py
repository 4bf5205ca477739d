"""W4A16 at decode batch sizes (issue 12): the small-M GEMV (pagoda/quantization/kernels/triton_w4_gemv.py)
against bf16 ``F.linear`` and the kernel main dispatched before it, on the Llama-3-8B linears.

Shapes (N, K): qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336; group 128, symmetric (offsets = -8 *
scales, as ``-q gptq`` dummy weights). For M in 1, 2, 4, 8, 16: bf16 ``F.linear``; ``before`` = :data:`INT4_TABLE`'s
rule alone (the ``dot`` kernel + split-K reduce launch that ``-q gptq`` ran before :data:`SMALL_M_TABLE`); ``now`` =
what ``choose_config`` dispatches today (symmetric GEMV); ``asym`` = the same launch on the asymmetric code path
(reads offsets); from M = 64 on ``deq`` (the weights dequantized to a dense copy, then ``torch.matmul``); then each
GEMV candidate (block N, warps, split-K waves, prefetch, PDL) up to 16 rows and, from 3 rows, the table's ``dot``
rule with its decode switched (``Rule.paired``; ``before`` times the rule as it is) plus ``DOT_GRID``'s candidates,
each first checked against dequantize + matmul (rejected above 1e-2 relative error). ``now`` includes
:data:`INT4_SHAPE_TABLE`; the printed ``INT4_TABLE`` changes are the best single rule per M bucket (a per-shape
winner goes to ``INT4_SHAPE_TABLE`` by hand, from the per-shape lines). Timing: one CUDA graph of ``REPS`` rounds
over ``COPIES`` distinct weights (more bytes than L2 holds), benchmarks/gpu/timing.py; the floor is codes + scales +
offsets read once at the measured copy bandwidth (benchmarks/gpu/bandwidth.py).

Prints per (M, shape) microseconds per linear and x floor, per M the 32-layer step of linears, and the
``SMALL_M_TABLE`` literal (winner per shape class and M bucket, least summed time over the class's shapes):
paste it over the one in pagoda/quantization/kernels/triton_wna16.py. Runs in about 2-4 minutes on an H200
(Triton compiles ~50 variants). Usage: ``python benchmarks/gpu/int4_gemv_sweep.py [--json PATH] [--ms M ...]``
(``--json``: the winners as JSON for ``with_gemv_table.py --w4-table``; ``--ms``: only these row counts, last on
the line; ``--smoke``: CPU, Triton interpreter, tiny shapes, no timing; checks the script runs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pagoda.quantization.kernels import triton_wna16 as tw  # noqa: E402
from pagoda.quantization.kernels.triton_wna16 import Rule  # noqa: E402

dev = torch.device("cpu" if SMOKE else "cuda")
DT = torch.float32 if SMOKE else torch.bfloat16
SHAPES = {"qkv": (96, 256), "down": (64, 512)} if SMOKE else \
    {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
MS = (1, 2, 4, 16) if SMOKE else (1, 2, 4, 8, 16, 64)
if "--ms" in sys.argv:  # a subset of the row counts, e.g. --ms 1 2 4 16 64
    MS = tuple(int(a) for a in sys.argv[sys.argv.index("--ms") + 1:] if a.isdigit())
G, LAYERS, COPIES, REPS = 128, 32, (1 if SMOKE else 8), 10
GRID = {  # block_m -> (block_n, num_warps, waves, prefetch tiles, pdl[, lift, halves]); block_m = min(M, 8). Each tile
    # shape here compiles (Triton 3.6, sm_90) without a shared-memory layout conversion in its K loop and with <= 16
    # words per thread (e.g. block_m 4 or 8 with 32 columns x 2 warps does convert: left out). pdl: programmatic
    # dependent launch (the graph's back-to-back launches of one linear overlap; it won at one row on an H100, session
    # 30); lift and halves: Rule's fields of those names (default off, 1).
    1: ((64, 2, 4, 1, 0), (64, 2, 8, 1, 0), (32, 1, 8, 1, 0), (64, 2, 4, 2, 0), (128, 4, 8, 1, 0),
        (32, 1, 8, 1, 1), (64, 2, 8, 1, 1), (64, 2, 4, 1, 1), (64, 2, 8, 2, 1),
        # session 36 (for the H200, where one row streams ~40 % more bytes per clock than on an H100): more
        # columns per thread (x converted once for more words), more warps in flight, more waves
        (128, 2, 8, 1, 1), (128, 4, 8, 1, 1), (64, 4, 8, 2, 1), (64, 2, 16, 1, 1), (32, 1, 16, 1, 1),
        (128, 4, 8, 2, 1), (256, 4, 8, 1, 1),
        # the lift decode (one LOP3 + one FFMA a nibble: Rule.lift), then with 2 or 4 column blocks a thread
        (64, 2, 8, 1, 1, 1), (64, 2, 8, 2, 1, 1), (64, 4, 8, 1, 1, 1), (128, 4, 8, 1, 1, 1), (32, 1, 8, 1, 1, 1),
        (64, 2, 8, 1, 1, 1, 2), (128, 2, 8, 1, 1, 1, 2), (128, 4, 8, 1, 1, 1, 2), (128, 4, 8, 1, 1, 1, 4),
        (256, 4, 8, 1, 1, 1, 4), (128, 2, 8, 1, 1, 1, 4), (256, 8, 8, 1, 1, 1, 4), (128, 4, 4, 1, 1, 1, 4),
        (128, 4, 16, 1, 1, 1, 4), (128, 4, 8, 2, 1, 1, 4),
        # column blocks with the plain decode (exact for every x)
        (64, 2, 8, 1, 1, 0, 4), (128, 4, 8, 1, 1, 0, 4), (128, 4, 8, 1, 1, 0, 2)),
    2: ((64, 4, 4, 1, 0), (32, 2, 4, 1, 0), (64, 8, 4, 1, 0), (64, 4, 4, 2, 0), (64, 4, 4, 2, 1), (64, 8, 4, 1, 1)),
    4: ((64, 4, 4, 1, 0), (32, 4, 4, 1, 0), (64, 8, 4, 1, 0), (64, 4, 4, 1, 1)),
    8: ((64, 8, 4, 1, 0), (64, 8, 8, 1, 0), (64, 8, 4, 1, 1)),
}


DOT_GRID = {  # INT4_TABLE key -> dot candidates besides the table's own rule. At 64+ rows split-K's fp32 workspace
    # ([split, M, N], written then summed by a second launch) costs more bytes than the weights: fewer waves.
    # One row (session 36): the tensor cores take the multiply-adds off the issue slots the GEMV's FMAs fill.
    # Session 46: Rule.swap (the decoded weights as wgmma's register operand, x through shared memory) at 2+ rows.
    1: (Rule("dot", 64, waves=2), Rule("dot", 64, waves=8), Rule("dot", 128, waves=4), Rule("dot", 32, waves=8)),
    4: (Rule("dot", 64, waves=2), Rule("dot", 64, waves=8),
        Rule("dot", 64, swap=True, waves=4), Rule("dot", 64, swap=True, waves=8), Rule("dot", 128, swap=True, waves=4)),
    16: (Rule("dot", 64, waves=2), Rule("dot", 64, waves=8), Rule("dot", 128, waves=2),
         Rule("dot", 64, swap=True, waves=4), Rule("dot", 64, swap=True, waves=8), Rule("dot", 128, swap=True, waves=2),
         Rule("dot", 128, swap=True, waves=4)),
    64: (Rule("dot", 128, block_m=64, waves=1), Rule("dot", 128, block_m=64, waves=2),
         Rule("dot", 64, block_m=64, waves=1), Rule("dot", 64, block_m=64, waves=2),
         Rule("dot", 128, block_m=64, num_warps=8, waves=1), Rule("dot", 128, block_m=64, num_warps=8, waves=2),
         Rule("dot", 256, block_m=64, num_warps=8, waves=1), Rule("dot", 64, block_m=32, waves=2),
         Rule("dot", 128, block_m=32, waves=2),
         Rule("dot", 128, block_m=64, swap=True, waves=1), Rule("dot", 128, block_m=64, swap=True, waves=2),
         Rule("dot", 64, block_m=64, swap=True, waves=2), Rule("dot", 128, block_m=32, swap=True, waves=2),
         Rule("dot", 256, block_m=64, num_warps=8, swap=True, waves=1),
         Rule("dot", 128, block_m=64, num_stages=4, swap=True, waves=2)),
    128: (Rule("dot", 256, block_m=128, waves=1, num_warps=8), Rule("dot", 256, block_m=128, waves=2, num_warps=8),
          Rule("dot", 128, block_m=64, waves=1), Rule("dot", 128, block_m=64, waves=2),
          Rule("dot", 128, block_m=128, waves=2, num_warps=8),
          Rule("dot", 128, block_m=128, swap=True, waves=1), Rule("dot", 128, block_m=128, swap=True, waves=2),
          Rule("dot", 256, block_m=128, num_warps=8, swap=True, waves=1),
          Rule("dot", 128, block_m=64, swap=True, waves=2)),
    256: (Rule("dot", 128, block_m=128, swap=True, waves=1), Rule("dot", 128, block_m=256, num_warps=8, swap=True,
                                                                  waves=1),
          Rule("dot", 64, block_m=256, swap=True, waves=1), Rule("dot", 256, block_m=128, num_warps=8, swap=True,
                                                                 waves=1)),
}


def dot_candidates(m: int) -> list[Rule]:
    """From 2 rows: the table's dot rule with the fp32 decode (the arm ``before`` times it as the table has it,
    paired), then DOT_GRID's (paired)."""
    key = min(b for b in tw.INT4_TABLE if b >= m)
    table = tw.INT4_TABLE[key]
    own = [dataclasses.replace(table, paired=not table.paired)] if table.kind == "dot" else []
    return own + [r for r in DOT_GRID.get(key, ()) if r != table] if m >= 2 else []


def candidates(m: int) -> list[Rule]:
    bm = min(m, 8)
    return [Rule("gemv", bn, block_m=bm, num_warps=nw, waves=wv, prefetch=pf, pdl=bool(pd), lift=bool(lift),
                 halves=halves) for bn, nw, wv, pf, pd, lift, halves in ((*g, *(0, 1)[len(g) - 5:]) for g in GRID[bm])]


class Weights:
    """``COPIES`` random 4-bit weights of one shape in the Triton layout, their bf16 twins, one dense check."""

    def __init__(self, n: int, k: int) -> None:
        self.n, self.k = n, k
        codes = torch.randint(0, 16, (n, k), device=dev, dtype=torch.uint8)
        s = (torch.rand(n, k // G, device=dev) * 0.01 + 0.001).to(DT)
        o = s * -8
        self.dense = (codes.view(n, -1, G).float() * s.float()[..., None] + o.float()[..., None]).view(n, k)
        packed, st, ot = tw.pack(codes, 4), s.t().contiguous(), o.t().contiguous()
        self.int4 = [(packed if i == 0 else packed.clone(), st, ot) for i in range(COPIES)]
        self.bf16 = [self.dense.to(DT) for _ in range(COPIES)]
        self.floor_bytes = n * k / 2 + 2 * s.numel() * s.element_size()

    def rel_err(self, y: torch.Tensor, x: torch.Tensor) -> float:
        ref = x.float() @ self.dense.t()
        return ((y.float() - ref).norm() / ref.norm()).item()


DEQ_RULE = Rule("deq", 128)  # from M = 64 on: the weights dequantized to a dense copy, then torch.matmul


def per_linear_us(fn) -> float:
    fn()
    if SMOKE:
        return 1.0
    from benchmarks.gpu.timing import graph_time_us

    return graph_time_us(fn, REPS) / COPIES


def time_config(w: Weights, x: torch.Tensor, cfg: tw.WNA16Config, label: str, sym: bool = 1) -> float | None:
    try:
        y = tw.wna16_matmul(x, *w.int4[0], 4, G, config=cfg, symmetric=sym)
    except Exception as exc:  # a config that does not compile here: reported, never chosen
        print(f"    {label}: failed ({type(exc).__name__}: {str(exc)[:120]})")
        return None
    if w.rel_err(y, x) > 1e-2:
        print(f"    {label}: WRONG (rel. error {w.rel_err(y, x):.1e}), rejected")
        return None
    return per_linear_us(lambda: [tw.wna16_matmul(x, q, s, o, 4, G, config=cfg, symmetric=sym) for q, s, o in w.int4])


def sweep_m(m: int, weights: dict[str, Weights], bw: float, sms: int) -> dict[str, dict]:
    """Times of every arm on every shape at ``m`` rows: ``{shape: {arm: us}}`` (arms: bf16, before, now, rules)."""
    res: dict[str, dict] = {}
    print(f"\nM={m}")
    for name, w in weights.items():
        x = torch.randn(m, w.k, device=dev, dtype=DT)
        before = tw.resolve(tw.INT4_TABLE[min(b for b in tw.INT4_TABLE if b >= m)], m, w.n, w.k, G, sms)
        arms: dict = {"bf16": per_linear_us(lambda x=x, w=w: [F.linear(x, d) for d in w.bf16])}
        arms["before"] = time_config(w, x, before, "before")
        if m >= 64:  # the dense copy + torch.matmul (Rule('deq'): its dequantization is part of the time)
            arms["deq"] = time_config(w, x, tw.resolve(DEQ_RULE, m, w.n, w.k, G, sms), "deq")
        now = tw.choose_config(m, w.n, w.k, G, sms)
        arms["now"] = time_config(w, x, now, "now")
        arms["asym"] = time_config(w, x, now, "asym", sym=0)
        for rule in [*(candidates(m) if m <= max(GRID) * 2 else ()), *dot_candidates(m)]:
            arms[rule] = time_config(w, x, tw.resolve(rule, m, w.n, w.k, G, sms), str(rule))
            print(f"    {name:8s} {fmt(arms[rule])} us  {short(rule)}")
        floor = w.floor_bytes / bw * 1e6
        ok = {r: t for r, t in arms.items() if isinstance(r, Rule) and t is not None}
        best = min(ok, key=ok.__getitem__) if ok else None
        line = f"  {name:8s} floor {floor:6.1f} us  bf16 {arms['bf16']:6.1f}  before {fmt(arms['before'])}" \
               f"  deq {fmt(arms.get('deq'))}" \
               f"  now {fmt(arms['now'])}  asym {fmt(arms['asym'])}"
        if best is not None:
            line += f"  best rule {ok[best]:6.1f} us = {ok[best] / floor:4.2f}x floor  {short(best)}"
        print(line)
        res[name] = arms
    return res


def fmt(t: float | None) -> str:
    return "  fail" if t is None else f"{t:6.1f}"


def short(rule: Rule) -> str:
    """A rule as a constructor call with its non-default fields (fits the 120-column limit)."""
    default = Rule(rule.kind, rule.block_n)
    rest = [f"{f}={getattr(rule, f)!r}" for f in rule.__dataclass_fields__ if f not in ("kind", "block_n")
            and getattr(rule, f) != getattr(default, f)]
    return f"Rule({', '.join([repr(rule.kind), str(rule.block_n)] + rest)})"


def summed(res: dict[str, dict], names: list[str], arm) -> float | None:
    ts = [res[n].get(arm) for n in names]
    return None if any(t is None for t in ts) else sum(ts)


def step_summary(m: int, res: dict[str, dict]) -> None:
    names = list(res)
    arms = {a: summed(res, names, a) for a in ("bf16", "before", "deq", "now", "asym")}
    best = sum(min((t for r, t in res[n].items() if isinstance(r, Rule) and t is not None), default=float("nan"))
               for n in names)
    parts = [f"{a} {fmt_ms(t)}" for a, t in arms.items()] + [f"best-per-shape {fmt_ms(best)}"]
    ratio = f"  (now/bf16 {arms['now'] / arms['bf16']:.2f})" if arms["now"] and arms["bf16"] else ""
    print(f"  M={m} step linears ({LAYERS} layers): " + ", ".join(parts) + ratio)


def fmt_ms(t: float | None) -> str:
    return "fail" if t is None else f"{t * LAYERS / 1e3:.3f} ms"


def dot_arms(m: int, res: dict[str, dict], names: list[str]) -> dict[Rule, float]:
    """INT4_TABLE's launches measured at ``m`` rows, summed over ``names``: the table's own rule (``before``) and,
    from 64 rows, :data:`DEQ_RULE`; as rules for INT4_TABLE."""
    arms = {tw.INT4_TABLE[min(b for b in tw.INT4_TABLE if b >= m)]: summed(res, names, "before"),
            DEQ_RULE: summed(res, names, "deq")}
    arms.update({r: summed(res, names, r) for r in res[names[0]] if isinstance(r, Rule) and r.kind == "dot"})
    return {r: t for r, t in arms.items() if t is not None and r.kind in ("dot", "deq")}


def class_winners(results: dict[int, dict[str, dict]]) -> dict[str, dict[int, Rule]]:
    """Per shape class and M: the GEMV rule with the least summed time over the class's shapes, kept only
    while it beats every measured launch of the dot kernel on that class."""
    table: dict[str, dict[int, Rule]] = {"small": {}, "large": {}}
    for cls in table:
        names = [n for n, (nn, kk) in SHAPES.items() if tw.shape_class(nn, kk) == cls]
        for m, res in sorted(results.items()) if names else ():
            totals = {r: summed(res, names, r) for r in res[names[0]] if isinstance(r, Rule) and r.kind == "gemv"}
            valid = {r: t for r, t in totals.items() if t is not None}
            dots = dot_arms(m, res, names)
            if not valid or (dots and min(valid.values()) >= min(dots.values())):
                break  # from here on the dot kernel (INT4_TABLE) wins: the table stops below this M
            table[cls][m] = min(valid, key=valid.__getitem__)
    return table


def dot_winners(results: dict[int, dict[str, dict]]) -> dict[int, Rule]:
    """Per INT4_TABLE key covering a measured M (all shapes summed): the fastest dot launch, where it is not the
    table's own rule."""
    out: dict[int, Rule] = {}
    for m, res in sorted(results.items()):
        key = min(b for b in tw.INT4_TABLE if b >= m)
        dots = dot_arms(m, res, list(res))
        if dots and key not in out:
            best = min(dots, key=dots.__getitem__)
            if best != tw.INT4_TABLE[key]:
                out[key] = best
    return out


def table_text(table: dict[str, dict[int, Rule]]) -> str:
    lines = ["SMALL_M_TABLE: dict[str, dict[int, Rule]] = {  # shape class -> max M -> rule; before INT4_TABLE "
             "up to its last M.", "    # benchmarks/gpu/int4_gemv_sweep.py prints this."]
    for cls, rules in table.items():
        lines.append(f"    {cls!r}: {{")
        lines += [f"        {m}: {short(r)}," for m, r in sorted(rules.items())]
        lines.append("    },")
    return "\n".join(lines + ["}"])


def main() -> None:
    t0 = time.perf_counter()
    if SMOKE:
        bw, name = 1e10, "smoke (CPU interpreter)"
    else:
        from benchmarks.gpu.bandwidth import device_copy_bandwidth

        bw, name = device_copy_bandwidth(2**29), torch.cuda.get_device_name()
    sms = tw.num_sms(dev.index)
    print(f"{name}  copy bandwidth {bw / 1e9:.0f} GB/s  SMs {sms}  torch {torch.__version__}  triton "
          f"{triton.__version__}")
    weights = {n: Weights(nn, kk) for n, (nn, kk) in SHAPES.items()}
    results = {}
    for m in MS:
        results[m] = sweep_m(m, weights, bw, sms)
        step_summary(m, results[m])
        if "--json" in sys.argv:  # after every M: a run cut short by a time limit still leaves its winners so far
            write_json(Path(sys.argv[sys.argv.index("--json") + 1]), results)
    print(f"\nsweep took {time.perf_counter() - t0:.0f} s")
    print("\n===== CHOOSE: paste over SMALL_M_TABLE in pagoda/quantization/kernels/triton_wna16.py =====")
    print(table_text(class_winners(results)))
    dots = dot_winners(results)
    print("INT4_TABLE entries to change (max M -> rule):" if dots else "INT4_TABLE: its rules won where measured")
    for key, rule in dots.items():
        print(f"    {key}: {short(rule)},")
    print("INT4_SHAPE_TABLE with this run's per-shape winners (3 % or more under the dispatched rule):")
    for (key, n, k), rule in shape_winners(results).items():
        print(f"    ({key}, {n}, {k}): {short(rule)},")
    print("===== END CHOOSE =====")
    if "--json" in sys.argv:
        print(f"winners written to {sys.argv[sys.argv.index('--json') + 1]} (benchmarks/gpu/with_gemv_table.py "
              "--w4-table reads them)")


def write_json(path: Path, results: dict[int, dict[str, dict]]) -> None:
    """The winners of the Ms measured so far: ``SMALL_M_TABLE`` per shape class and ``int4_table`` entries."""
    table: dict[str, dict] = {cls: {str(m): asdict(r) for m, r in rules.items()}
                              for cls, rules in class_winners(results).items()}
    table["int4_table"] = {str(key): asdict(r) for key, r in dot_winners(results).items()}
    table["ms"] = sorted(results)
    table["int4_shapes"] = {f"{key},{n},{k}": asdict(r) for (key, n, k), r in shape_winners(results).items()}
    path.write_text(json.dumps(table))


def shape_winners(results: dict[int, dict[str, dict]], margin: float = 0.97) -> dict[tuple[int, int, int], Rule]:
    """``INT4_SHAPE_TABLE`` with, per measured M and shape, the fastest rule where it runs under ``margin`` times
    the rule dispatched today (``now``); the first M measured in an INT4_TABLE bucket speaks for it."""
    table = dict(tw.INT4_SHAPE_TABLE)
    seen: set[int] = set()
    for m, res in sorted(results.items()):
        key = min(b for b in tw.INT4_TABLE if b >= m)
        if key in seen:
            continue
        seen.add(key)
        for name, arms in res.items():
            n, k = SHAPES[name]
            ok = {r: t for r, t in arms.items() if isinstance(r, Rule) and t is not None}
            if ok and arms.get("now") and min(ok.values()) < margin * arms["now"]:
                table[key, n, k] = min(ok, key=ok.__getitem__)
    return table


def w4_table_from_json(path: str) -> dict[str, dict[int, Rule]]:
    """The ``SMALL_M_TABLE`` that a ``--json`` run chose."""
    raw = json.loads(Path(path).read_text())
    return {cls: {int(m): Rule(**fields) for m, fields in rules.items()} for cls, rules in raw.items()
            if cls not in ("int4_table", "ms", "int4_shapes")}


def int4_table_from_json(path: str) -> dict[int, Rule]:
    """The ``INT4_TABLE`` entries that a ``--json`` run would change (max M -> the fastest dot launch)."""
    raw = json.loads(Path(path).read_text()).get("int4_table", {})
    return {int(key): Rule(**fields) for key, fields in raw.items()}


def apply_json_tables(path: str) -> str:
    """Install a ``--json`` run's winners in this process: ``SMALL_M_TABLE`` (when the run measured one row: a run
    of large M only leaves it alone) and the ``INT4_TABLE`` entries it chose (for ``with_gemv_table.py`` and
    ``profile_steps.py``); returns a line describing both tables."""
    raw = json.loads(Path(path).read_text())
    if 1 in raw.get("ms", [1]):
        tw.SMALL_M_TABLE = w4_table_from_json(path)
    tw.INT4_TABLE = {**tw.INT4_TABLE, **int4_table_from_json(path)}
    if "int4_shapes" in raw:  # "key,n,k" -> rule: replaces INT4_SHAPE_TABLE ({} clears it: an A/B without it)
        tw.INT4_SHAPE_TABLE = {tuple(int(v) for v in key.split(",")): Rule(**fields)
                               for key, fields in raw["int4_shapes"].items()}
    return f"4-bit GEMV table: {tw.SMALL_M_TABLE}\n4-bit dot table: {tw.INT4_TABLE}\n4-bit shape table: " \
           f"{tw.INT4_SHAPE_TABLE}"


if __name__ == "__main__":
    main()
