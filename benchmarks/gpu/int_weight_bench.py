"""W4A16 / W8A16 Triton GEMM vs bf16 ``F.linear`` on the linear layers of a Llama-3-8B-shaped decoder.

32 layers x (qkv 4096->6144, o 4096->4096, gate_up 4096->28672, down 14336->4096), every layer its own
weights (so nothing stays in L2), each linear kind captured as a CUDA graph of its 32 calls (the engine
replays decode steps as graphs, so launch cost is not what we measure). Prints per-linear microseconds
and the whole step's linears in ms at M=1 and M=64, each against the bytes floor (weights + scales read
once at the measured copy bandwidth; FLOPs at 989 TFLOP/s bf16 when larger) and as a ratio to bf16.
Targets (issue 12): W4A16 at M=1 <= 0.45x bf16, at M=64 <= 1.0x. Then a few explicit configs for W4 at M=1
and M=64, incl. the other 4-bit unpack variant (to tune :func:`choose_config`). Runs in well under a minute on an H200.
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
from pagoda.quantization.kernels.triton_wna16 import WNA16Config  # noqa: E402

dev = torch.device("cpu" if SMOKE else "cuda")
L, H, INTER, Q, KV = (2, 256, 384, 256, 128) if SMOKE else (32, 4096, 14336, 4096, 1024)
KINDS = {"qkv": (Q + 2 * KV, H), "o": (H, Q), "gate_up": (2 * INTER, H), "down": (H, INTER)}
PEAK_FLOPS = 989e12


def copy_bandwidth() -> float:
    if SMOKE:
        return 1e10
    x = torch.empty(2**30 // 2, dtype=torch.bfloat16, device=dev)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20):
        y.copy_(x)
    e.record()
    torch.cuda.synchronize()
    return 2 * x.numel() * 2 / (s.elapsed_time(e) / 20 / 1e3)


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
    fn()
    if SMOKE:
        return 1.0
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        s.record()
        g.replay()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]


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
    print("\nW4A16 configs (us/call; * = choose_config's pick)")
    sms = tw.num_sms(dev.index)
    for m in (1, 64):
        for kind in ("gate_up", "down"):
            n, k = KINDS[kind]
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            auto = tw.choose_config(m, n, k, 128, sms)
            cands = {auto, WNA16Config(**{**auto.__dict__, "unpack_gather": True})}
            for bn in ((32, 64, 128) if m == 1 else (64, 128)):
                for split in {1, auto.split_k, 2 * auto.split_k}:
                    cands.add(WNA16Config(auto.block_m, bn, auto.block_k, split, auto.num_warps, auto.num_stages))
            res = []
            for c in sorted(cands, key=lambda c: (c.block_n, c.split_k, c.unpack_gather)):
                ms = graph_ms(run_all(weights[(kind, "w4a16")], x, "w4a16", c))
                tag = f"{'*' if c == auto else ''}bn{c.block_n}/s{c.split_k}{'/gather' if c.unpack_gather else ''}"
                res.append(f"{tag}:{ms / L * 1e3:.0f}")
            print(f"M={m} {kind:8s} " + "  ".join(res))


if __name__ == "__main__":
    main()
