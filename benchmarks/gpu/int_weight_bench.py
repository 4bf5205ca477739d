"""W4A16 / W8A16 Triton GEMM vs bf16 ``F.linear`` on the linear layers of a Llama-3-8B-shaped decoder.

32 layers x (qkv 4096->6144, o 4096->4096, gate_up 4096->28672, down 14336->4096), every layer its own
weights (so nothing stays in L2), each linear kind captured as a CUDA graph of its 32 calls (the engine
replays decode steps as graphs, so launch cost is not what we measure). Prints per-linear microseconds
and the whole step's linears in ms at M=1 and M=64, each against the bytes floor (weights + scales read
once at the measured copy bandwidth; FLOPs at 989 TFLOP/s bf16 when larger) and as a ratio to bf16.
Targets (issue 12): W4A16 at M=1 <= 0.45x bf16, at M=64 <= 1.0x. Config tuning:
benchmarks/gpu/int_weight_sweep.py. Runs in well under a minute on an H200.
Usage: python benchmarks/gpu/int_weight_bench.py   (``--smoke``: CPU, Triton interpreter, tiny shapes, no
graphs; checks the script itself runs)
"""

import os
import sys

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import triton  # noqa: E402

from pagoda.quantization.kernels import triton_wna16 as tw  # noqa: E402

dev = torch.device("cpu" if SMOKE else "cuda")
L, H, INTER, Q, KV = (2, 256, 384, 256, 128) if SMOKE else (32, 4096, 14336, 4096, 1024)
KINDS = {"qkv": (Q + 2 * KV, H), "o": (H, Q), "gate_up": (2 * INTER, H), "down": (H, INTER)}
PEAK_FLOPS = 989e12


def copy_bandwidth() -> float:
    if SMOKE:
        return 1e10
    from bandwidth import device_copy_bandwidth  # benchmarks/gpu/bandwidth.py, beside this script

    return device_copy_bandwidth(2**30 // 2, dev)


def make(kind: str, fmt: str):
    n, k = KINDS[kind]
    if fmt == "bf16":
        return [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(L)]
    bits, g = (4, 128) if fmt == "w4a16" else (8, k)
    out = []
    for _ in range(L):
        if bits == 4:
            qw = torch.randint(-2**31, 2**31 - 1, (k // 8, n), device=dev, dtype=torch.int32)
        else:
            qw = torch.randint(0, 256, (k, n), device=dev, dtype=torch.uint8)
        s = torch.rand(k // g, n, device=dev, dtype=torch.bfloat16) * 0.01
        out.append((qw, s, -(2 ** (bits - 1)) * s, bits, g))
    return out


def nbytes(ws) -> int:
    return sum(t.numel() * t.element_size() for w in ws for t in ((w,) if torch.is_tensor(w) else w[:3]))


def graph_ms(fn) -> float:
    if SMOKE:
        fn()
        return 1.0
    from timing import graph_median_ms  # benchmarks/gpu/timing.py, beside this script

    return graph_median_ms(fn, rounds=10, replays=1)


def run_all(ws, x, fmt, cfg=None):
    def fn():
        for w in ws:
            if fmt == "bf16":
                torch.nn.functional.linear(x, w)
            else:
                tw.wna16_matmul(x, w[0], w[1], w[2], w[3], w[4], config=cfg)
    return fn


def check(kind: str) -> float:
    """Relative error of the kernel vs dequantize + matmul on one real packed weight."""
    n, k = KINDS[kind]
    codes = torch.randint(0, 16, (n, k), device=dev, dtype=torch.uint8)
    s = (torch.rand(n, k // 128, device=dev) * 0.01 + 0.001).bfloat16().float()
    o = (torch.randn(n, k // 128, device=dev) * 0.01).bfloat16().float()
    w = (codes.view(n, -1, 128).float() * s[..., None] + o[..., None]).view(n, k)
    x = torch.randn(3, k, device=dev, dtype=torch.bfloat16)
    y = tw.wna16_matmul(x, tw.pack(codes, 4), s.t().contiguous().bfloat16(), o.t().contiguous().bfloat16(), 4, 128)
    ref = x.float() @ w.t()
    return ((y.float() - ref).norm() / ref.norm()).item()


def main() -> None:
    bw = copy_bandwidth()
    name = "smoke (CPU interpreter)" if SMOKE else torch.cuda.get_device_name()
    print(f"{name}  copy bandwidth {bw / 1e9:.0f} GB/s  triton {triton.__version__}")
    print("correctness (rel. error vs dequantize+matmul): " +
          "  ".join(f"{k} {check(k):.1e}" for k in ("o", "down")))
    weights = {(kind, fmt): make(kind, fmt) for kind in KINDS for fmt in ("bf16", "w4a16", "w8a16")}
    for m in (1, 64):
        print(f"\nM={m}  {'kind':8s} {'fmt':6s} {'us/call':>8s} {'floor us':>8s} {'x floor':>7s} {'x bf16':>7s}")
        step = {}
        for kind, (n, k) in KINDS.items():
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            base = None
            for fmt in ("bf16", "w4a16", "w8a16"):
                ws = weights[(kind, fmt)]
                ms = graph_ms(run_all(ws, x, fmt))
                floor = max(nbytes(ws) / bw, 2 * m * n * k * L / PEAK_FLOPS) * 1e3
                base = base or ms
                step.setdefault(fmt, [0.0, 0.0])
                step[fmt][0] += ms
                step[fmt][1] += floor
                print(f"      {kind:8s} {fmt:6s} {ms / L * 1e3:8.1f} {floor / L * 1e3:8.1f} {ms / floor:7.2f} "
                      f"{ms / base:7.2f}")
        for fmt, (ms, floor) in step.items():
            print(f"M={m} step linears {fmt:6s} {ms:7.3f} ms  floor {floor:6.3f} ms  x floor {ms / floor:5.2f}  "
                  f"x bf16 {ms / step['bf16'][0]:5.2f}")
    sweep(weights)


def sweep(weights) -> None:
    """Per-config tuning moved to benchmarks/gpu/int_weight_sweep.py (prints the dispatch tables)."""
    print("\nconfig sweep: run benchmarks/gpu/int_weight_sweep.py")


if __name__ == "__main__":
    main()
