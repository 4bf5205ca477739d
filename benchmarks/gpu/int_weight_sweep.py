"""One-call GPU sweep that picks the W4A16 / W8A16 kernel launches and the fused-MoE GEMM launches.

Measures, on Llama-3-8B linear shapes (qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336) at
M in {1, 4, 16, 64, 256}: bf16 ``F.linear`` (reference), torch's tinygemm ``_weight_int4pack_mm`` (group 128),
and a handful of :class:`~pagoda.quantization.kernels.triton_wna16.Rule` candidates per M (GEMV and ``tl.dot``
kernels; from 64 rows also the dense copy, ``deq``); each candidate is first checked against dequantize + matmul
(rejected above 1e-2 relative error). Each timing is a CUDA graph of one call on each of ``COPIES`` distinct
weights (so L2 holds none of them), median of replays. Then a W8A16 pass, and the fused-MoE GEMMs of a
Qwen3-30B-A3B layer (E=128, top-8, H=2048, I=768) at batch 1 and 64 against the bytes of the experts actually
selected.

Prints per-shape tables, then ``CHOOSE`` blocks in the exact syntax of ``INT4_TABLE`` / ``U8_TABLE``
(pagoda/quantization/kernels/triton_wna16.py) and ``MOE_TABLE`` (pagoda/layers/fused_moe/triton_moe.py):
paste them over those definitions. Usage: ``python benchmarks/gpu/int_weight_sweep.py [--only int4|u8|moe]
[--ms M ...]`` (~1-2 min on an H200; ``--only``: one pass; ``--ms``: these row counts); ``--smoke``: CPU, Triton
interpreter, tiny shapes (checks the script runs).
"""

from __future__ import annotations

import os
import sys

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from pagoda.layers.fused_moe import triton_moe as tm  # noqa: E402
from pagoda.layers.fused_moe.routing import RoutingConfig  # noqa: E402
from pagoda.layers.fused_moe.triton_dequant import kernel_args  # noqa: E402
from pagoda.quantization.kernels import tinygemm  # noqa: E402
from pagoda.quantization.kernels import triton_wna16 as tw  # noqa: E402
from pagoda.quantization.kernels.triton_wna16 import Rule  # noqa: E402

dev = torch.device("cpu" if SMOKE else "cuda")
DT = torch.float32 if SMOKE else torch.bfloat16
SHAPES = {"down": (256, 512)} if SMOKE else \
    {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
MS = (1, 4, 16) if SMOKE else (1, 4, 16, 64, 256)
if "--ms" in sys.argv:  # these row counts only, e.g. --only u8 --ms 256 1024 (last on the line)
    MS = tuple(int(a) for a in sys.argv[sys.argv.index("--ms") + 1:] if a.isdigit())
ONLY = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None  # int4, u8 or moe
COPIES = 1 if SMOKE else 8
LAYERS = 32
G = 128


WAVES = ((1, 4), (1,))  # dot candidates' split-K targets, M <= 64 / above (plenty of output tiles there)


def int4_candidates(m: int) -> list[Rule]:
    if m <= 8:
        bm = min(m, 8)
        c = [Rule("gemv", bn, block_m=bm, waves=wv) for bn in (64, 128, 256) for wv in (2, 4, 8)]
        c += [Rule("gemv", 128, block_m=bm, waves=4, num_warps=8), Rule("dot", 64, block_m=16, waves=4)]
        return c
    bms = {16: (16,), 64: (32, 64), 256: (64, 128)}.get(m, (16,))
    c = [Rule("dot", bn, block_m=bm, waves=wv, num_stages=st, dequant=dq, num_warps=8 if bm == 128 else 4)
         for bm in bms for bn in (64, 128) for wv in WAVES[m > 64] for st, dq in ((3, True), (4, True), (3, False))]
    return c + ([Rule("gemv", 64, block_m=8, waves=4)] if m == 16 else []) + deq_candidates(m)


def u8_candidates(m: int) -> list[Rule]:
    bm = 16 if m <= 16 else 64
    return [Rule("u8", bn, block_m=bm, waves=wv, block_k=bk, num_warps=8 if bm == 128 else 4)
            for bn in (64, 128) for wv in (1, 4) for bk in (64, 128)] + deq_candidates(m)


def deq_candidates(m: int) -> list[Rule]:
    """From 64 rows: the dense copy + torch.matmul (``Rule('deq')``; won for 4-bit from 256 rows, session 30)."""
    return [Rule("deq", 128)] if m >= 64 else []


def copy_bandwidth() -> float:
    if SMOKE:
        return 1e10
    from bandwidth import device_copy_bandwidth  # benchmarks/gpu/bandwidth.py, beside this script

    return device_copy_bandwidth(2**29, dev)


def per_call_us(fn, calls: int) -> float:
    """Median microseconds per call of ``fn`` (which makes ``calls`` calls), replayed as a CUDA graph."""
    if SMOKE:
        fn()
        return 1.0
    from timing import graph_median_ms  # benchmarks/gpu/timing.py, beside this script

    return graph_median_ms(fn, rounds=7, replays=3) * 1e3 / calls


class Weights:
    """COPIES random weights of one shape in every candidate's packing, plus one checked copy."""

    def __init__(self, n: int, k: int, bits: int) -> None:
        self.n, self.k, self.bits = n, k, bits
        g = G if bits == 4 else k
        self.g = g
        self.codes = torch.randint(0, 2**bits, (n, k), device=dev, dtype=torch.uint8)
        self.s = (torch.rand(n, k // g, device=dev) * 0.01 + 0.001).to(DT)
        self.o = (torch.randn(n, k // g, device=dev) * 0.01).to(DT)
        self.dense = (self.codes.view(n, -1, g).float() * self.s.float()[..., None]
                      + self.o.float()[..., None]).view(n, k)
        packed = tw.pack(self.codes, bits)
        st, ot = self.s.t().contiguous(), self.o.t().contiguous()
        self.triton = [(packed if i == 0 else packed.clone(), st, ot) for i in range(COPIES)]
        self.tiny = None
        if bits == 4 and not SMOKE and tinygemm.supported(4, g, n, k):
            tp = tinygemm.pack(self.codes)
            sz = tinygemm.scales_and_zeros(self.s, self.o)
            self.tiny = [(tp if i == 0 else tp.clone(), sz) for i in range(COPIES)]
        self.bf16 = [self.dense.to(DT) if i == 0 else self.dense.to(DT).clone() for i in range(COPIES)] \
            if bits == 4 else None

    def rel_err(self, y: torch.Tensor, x: torch.Tensor) -> float:
        ref = x.float() @ self.dense.t()
        return ((y.float() - ref).norm() / ref.norm()).item()


def time_triton(w: Weights, x: torch.Tensor, rule: Rule) -> float | None:
    cfg = tw.resolve(rule, x.shape[0], w.n, w.k, w.g, tw.num_sms(dev.index))
    try:
        y = tw.wna16_matmul(x, *w.triton[0], w.bits, w.g, config=cfg)
    except Exception as exc:  # a config that does not compile here: reported, never chosen
        print(f"    {rule}: failed ({type(exc).__name__}: {str(exc)[:120]})")
        return None
    if w.rel_err(y, x) > 1e-2:
        print(f"    {rule}: WRONG (rel. error {w.rel_err(y, x):.1e}), rejected")
        return None

    def fn():
        for qw, s, o in w.triton:
            tw.wna16_matmul(x, qw, s, o, w.bits, w.g, config=cfg)
    return per_call_us(fn, COPIES)


def time_ref(w: Weights, x: torch.Tensor) -> tuple[float, float | None]:
    assert w.bf16 is not None
    bf = per_call_us(lambda: [F.linear(x, d) for d in w.bf16], COPIES)
    tiny = None
    if w.tiny is not None:
        y = tinygemm.matmul(x, *w.tiny[0][:1], G, w.tiny[0][1])
        if w.rel_err(y, x) > 1e-2:
            print(f"    tinygemm: WRONG (rel. error {w.rel_err(y, x):.1e}): the mapping or nibble order is off")
        else:
            tiny = per_call_us(lambda: [tinygemm.matmul(x, p, G, sz) for p, sz in w.tiny], COPIES)
    return bf, tiny


def sweep_bits(bits: int, bw: float) -> dict[int, Rule]:
    """Per M: every candidate on every shape; the rule with the least summed time over the shapes wins."""
    weights = {name: Weights(n, k, bits) for name, (n, k) in SHAPES.items()}
    chosen: dict[int, Rule] = {}
    ms = MS if bits == 4 or "--ms" in sys.argv else tuple(m for m in MS if m in (1, 16, 64, 256))
    for m in ms:
        cands = int4_candidates(m) if bits == 4 else u8_candidates(m)
        totals = {r: 0.0 for r in cands}
        ref = {"bf16": 0.0, "tinygemm": 0.0}
        print(f"\nW{bits}A16 M={m}")
        for name, w in weights.items():
            x = torch.randn(m, w.k, device=dev, dtype=DT)
            floor = (w.n * w.k * bits / 8 + 2 * w.s.numel() * 2) / bw * 1e6
            line = f"  {name:8s} floor {floor:6.1f} us"
            if bits == 4:
                bf, tiny = time_ref(w, x)
                ref["bf16"] += bf
                ref["tinygemm"] = ref["tinygemm"] + tiny if tiny is not None and ref["tinygemm"] is not None else None
                line += f"  bf16 {bf:6.1f}  tinygemm {tiny if tiny is None else round(tiny, 1)}"
            res = {r: time_triton(w, x, r) for r in cands}
            for r, t in res.items():
                totals[r] = totals[r] + t if t is not None and totals[r] is not None else None
            ok = {r: t for r, t in res.items() if t is not None}
            if ok:
                best = min(ok, key=ok.__getitem__)
                line += f"  best triton {ok[best]:6.1f} us = {ok[best] / floor:4.2f}x floor  {best}"
            print(line)
        valid = {r: t for r, t in totals.items() if t is not None}
        if not valid:
            print(f"  no valid candidate at M={m}")
            continue
        best = min(valid, key=valid.__getitem__)
        chosen[m] = best
        step = valid[best] * LAYERS / 1e3
        summary = f"  M={m} step linears ({LAYERS} layers): triton {step:.3f} ms"
        if bits == 4:
            summary += f", bf16 {ref['bf16'] * LAYERS / 1e3:.3f} ms (triton/bf16 {valid[best] / ref['bf16']:.2f})"
            if ref["tinygemm"]:
                tg = ref["tinygemm"]
                summary += f", tinygemm {tg * LAYERS / 1e3:.3f} ms (/bf16 {tg / ref['bf16']:.2f})"
        print(summary + f"\n  chosen {best}")
    return chosen


def short(rule) -> str:
    """A rule as a short constructor call: the non-default fields only (fits the 120-column limit)."""
    default = type(rule)(**({"kind": rule.kind, "block_n": rule.block_n} if isinstance(rule, Rule) else {}))
    lead = f"{rule.kind!r}, {rule.block_n}" if isinstance(rule, Rule) else ""
    rest = [f"{f}={getattr(rule, f)!r}" for f in rule.__dataclass_fields__
            if f not in ("kind",) and (f != "block_n" or not isinstance(rule, Rule))
            and getattr(rule, f) != getattr(default, f)]
    return f"{type(rule).__name__}(" + ", ".join(([lead] if lead else []) + rest) + ")"


def table_text(name: str, chosen: dict[int, Rule], keys: tuple[int, ...]) -> str:
    """``chosen`` by measured M -> the table literal, each key taking the rule of the smallest measured M
    at or above it (the last measured M also serves ``BIG``)."""
    if not chosen:
        return f"{name}: not measured in this run"
    lines = [f"{name}: dict[int, Rule] = {{  # max M (inclusive) -> rule. \
" "benchmarks/gpu/int_weight_sweep.py prints this."]
    measured = sorted(chosen)
    for key in keys:
        m = next((mm for mm in measured if mm >= key), measured[-1])
        lines.append(f"    {'BIG' if key == tw.BIG else key}: {short(chosen[m])},")
    return "\n".join(lines + ["}"])


MOE = dict(E=8, H=64, I=32, top_k=2) if SMOKE else dict(E=128, H=2048, I=768, top_k=8)  # Qwen3-30B-A3B layer


def moe_candidates() -> list[tm.MoeRule]:
    ks = ((64, 3), (64, 4), (128, 3))
    return [tm.MoeRule()] + [tm.MoeRule(bn, bk, 4, st) for bn in (32, 64, 128) for bk, st in ks]


def moe_layer_inputs(t: int):
    """Per layer copy: weights, routing of ``t`` random tokens, alignment (as :func:`tm.fused_experts`)."""
    E, H, inter, k = MOE["E"], MOE["H"], MOE["I"], MOE["top_k"]
    rc = RoutingConfig(E, k, True, True)
    bm = tm._block_m(t * k, E)
    layers = []
    for _ in range(COPIES):
        w13 = torch.randn(E, 2 * inter, H, device=dev, dtype=DT) * 0.02
        w2 = torch.randn(E, H, inter, device=dev, dtype=DT) * 0.02
        x = torch.randn(t, H, device=dev, dtype=DT)
        wts, ids = tm.fused_topk(torch.randn(t, E, device=dev, dtype=DT), rc)
        sorted_ids, expert_ids, npost = tm.moe_align_block_size(ids, E, bm)
        act = torch.randn(t * k, inter, device=dev, dtype=DT)
        layers.append((x, w13, w2, wts, ids, sorted_ids, expert_ids, npost, act))
    return layers, bm


def moe_gemm_us(layers, bm: int, which: int, rule: tm.MoeRule) -> tuple[float, torch.Tensor]:
    k, H, inter = MOE["top_k"], MOE["H"], MOE["I"]
    outs = [torch.empty(lay[0].shape[0] * k, 2 * inter if which == 0 else H, device=dev, dtype=DT) for lay in layers]

    def fn():
        for (x, w13, w2, wts, _, sid, eid, npost, act), out in zip(layers, outs, strict=True):
            if which == 0:
                tm._moe_gemm(x, kernel_args(w13), out, wts, sid, eid, npost, k, False, bm, rule)
            else:
                tm._moe_gemm(act, kernel_args(w2), out, wts, sid, eid, npost, 1, True, bm, rule)
    return per_call_us(fn, len(layers)), outs[0].clone()


def sweep_moe(bw: float) -> dict[int, tuple[tm.MoeRule, tm.MoeRule]]:
    H, inter, k = MOE["H"], MOE["I"], MOE["top_k"]
    chosen = {}
    for t in ((1, 4) if SMOKE else (1, 64)):
        layers, bm = moe_layer_inputs(t)
        distinct = sum(int(torch.unique(lay[4]).numel()) for lay in layers) / len(layers)
        floor = [distinct * 2 * inter * H * 2 / bw * 1e6, distinct * H * inter * 2 / bw * 1e6]
        best = []
        for which, name in ((0, "gate_up"), (1, "down")):
            base_us, base_out = moe_gemm_us(layers, bm, which, tm.MoeRule())
            res = {}
            for rule in moe_candidates():
                us, out = moe_gemm_us(layers, bm, which, rule)
                err = ((out.float() - base_out.float()).norm() / base_out.float().norm()).item()
                if err <= 1e-2:
                    res[rule] = us
                else:
                    print(f"    MoE {name} {rule}: WRONG (rel. error {err:.1e} vs the default launch)")
            pick = min(res, key=res.__getitem__)
            best.append(pick)
            print(f"MoE T={t} (BLOCK_M {bm}, {distinct:.1f} distinct experts/layer) {name:7s}: default "
                  f"{base_us:6.1f} us, best {res[pick]:6.1f} us = {res[pick] / floor[which]:4.2f}x floor "
                  f"({floor[which]:.1f} us)  {pick}")
        grouped = tm.moe_rules(t * k)  # the grouped path (fused_experts' own choice at T=1 is the small one)
        default_us = per_call_us(lambda lays=layers, r=grouped: [tm.fused_experts(*lay[:5], rules=r) for lay in lays],
                                 len(layers))
        rules = (best[0], best[1])
        chosen_us = per_call_us(lambda lays=layers, r=rules: [tm.fused_experts(*lay[:5], rules=r) for lay in lays],
                                len(layers))
        print(f"MoE T={t} whole fused_experts per layer: default {default_us:.1f} us, chosen {chosen_us:.1f} us, "
              f"floor {sum(floor):.1f} us (x48 layers: {chosen_us * 48 / 1e3:.2f} ms)")
        chosen[t * k] = rules
    return chosen


def moe_table_text(chosen: dict[int, tuple[tm.MoeRule, tm.MoeRule]]) -> str:
    head = "MOE_TABLE: dict[int, tuple[MoeRule, MoeRule]] = {  # max (token, expert) pairs -> (gate_up rule, down rule)"
    lines = [head]
    lines += [f"    {pairs}: ({short(r13)}, {short(r2)})," for pairs, (r13, r2) in sorted(chosen.items())]
    lines.append("    BIG: (MoeRule(), MoeRule()),  # benchmarks/gpu/int_weight_sweep.py prints a measured table")
    return "\n".join(lines + ["}"])


def main() -> None:
    import time

    t0 = time.perf_counter()
    bw = copy_bandwidth()
    name = "smoke (CPU interpreter)" if SMOKE else torch.cuda.get_device_name()
    print(f"{name}  copy bandwidth {bw / 1e9:.0f} GB/s  torch {torch.__version__}  triton {triton.__version__}")
    int4 = sweep_bits(4, bw) if ONLY in (None, "int4") else {}
    u8 = sweep_bits(8, bw) if ONLY in (None, "u8") else {}
    moe = sweep_moe(bw) if ONLY in (None, "moe") else {}
    print(f"\nsweep took {time.perf_counter() - t0:.0f} s")
    print("\n===== CHOOSE: paste over INT4_TABLE and U8_TABLE in pagoda/quantization/kernels/triton_wna16.py =====")
    print(table_text("INT4_TABLE", int4, (1, 4, 16, 64, 256, tw.BIG)))
    print(table_text("U8_TABLE", u8, (16, 32, 64, tw.BIG)).replace("INT4", "U8"))
    print("===== CHOOSE: paste over MOE_TABLE in pagoda/layers/fused_moe/triton_moe.py =====")
    print(moe_table_text(moe))
    print("===== END CHOOSE =====")


if __name__ == "__main__":
    main()
