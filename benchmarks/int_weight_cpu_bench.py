"""CPU timings of :func:`pagoda.quantization.int_weight.int_weight_linear` on the default model's shapes.

SmolLM2-135M as Q4_1 GGUF (hidden 576, inter 1536, 9 heads / 3 KV heads of 64, 30 layers, LM head 49152 as
Q8_0): per linear, at M=1 and M=32, the path ``make_int_weight`` picks (int4pack for 4-bit groups of 32,
two int4pack nibble planes for Q8_0) against today's bf16 oneDNN-prepacked linear and the
dequantize + ``F.linear`` fallback; then the whole step's linears (30 layers with their own weights +
LM head). Minimum of repeats, all in one run (the machine is shared: only same-run ratios count).
Usage: python benchmarks/int_weight_cpu_bench.py [threads]
"""

import sys
import time
from functools import partial

import torch
import torch.nn.functional as F

from pagoda.layers.cpu_linear import pack_weight, packed_linear
from pagoda.quantization.int_weight import IntWeight, int_weight_linear, make_int_weight

DT = torch.bfloat16
SHAPES = {"qkv": (960, 576, 4), "o": (576, 576, 4), "k/v": (192, 576, 4), "gate_up": (3072, 576, 4),
          "down": (576, 1536, 4), "lm_head": (49152, 576, 8)}
LAYER = ("qkv", "o", "gate_up", "down")


def weights(kind: str):
    n, k, bits = SHAPES[kind]
    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8)
    s = torch.rand(n, k // 32) * 0.01
    o = -(2 ** (bits - 1)) * s if bits == 8 else torch.randn(n, k // 32) * 0.01
    iw = make_int_weight(codes, s, o, bits, 32, DT)
    plain = IntWeight(codes, s.to(DT), o.to(DT), bits, 32)
    return iw, plain, pack_weight(plain.dequantize(DT), 1)


def best_ms(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3


def dequant_linear(x, plain):
    return F.linear(x, plain.dequantize(DT))


def step(model, xs, use_int: bool) -> None:
    for iw, _, dn in model:
        x = xs[iw.in_features]
        int_weight_linear(x, iw) if use_int else packed_linear(x, dn, None)


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    print(f"threads {torch.get_num_threads()}; ms per call (min of repeats)")
    print(f"{'linear':8s} {'N x K':>11s} {'M':>3s} {'layout':>9s} {'int_weight':>10s} {'bf16 dnn':>9s} {'dequant':>8s}")
    for kind, (n, k, _) in SHAPES.items():
        iw, plain, dn = weights(kind)
        reps = 5 if kind == "lm_head" else 50
        for m in (1, 32):
            x = torch.randn(m, k).to(DT)
            t_iw = best_ms(partial(int_weight_linear, x, iw), reps)
            t_dn = best_ms(partial(packed_linear, x, dn, None), reps) if dn is not None else float("nan")
            t_dq = best_ms(partial(dequant_linear, x, plain), max(2, reps // 10))
            print(f"{kind:8s} {n:5d}x{k:<5d} {m:3d} {iw.layout:>9s} {t_iw:10.3f} {t_dn:9.3f} {t_dq:8.3f}", flush=True)
    model = [w for _ in range(30) for w in (weights(kind) for kind in LAYER)] + [weights("lm_head")]
    for m in (1, 32):
        xs = {k: torch.randn(m, k).to(DT) for k in (576, 1536)}
        t_i, t_b = best_ms(partial(step, model, xs, True), 5), best_ms(partial(step, model, xs, False), 5)
        print(f"whole step linears, M={m}: int_weight {t_i:.2f} ms, bf16 oneDNN {t_b:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
