#!/usr/bin/env bash
# The native decode attention before (4cbcd3d) and after session 27's bf16 scores, V in registers and KV-row prefetch:
# one call of the default model's shape (one decode row, 9 query heads over 3 KV heads of 64, bf16 cache) on one thread
# at 100, 300 and 1000 positions, warm (the cache's blocks in order, reused call after call; median of 300) and cold (the
# blocks scattered over a 4,096-block cache, a 64 MiB buffer rewritten before each call; median of 60); then 120 random
# shapes compared (bitwise / max difference).
# Usage (repository root): bash benchmarks/results/cpu-2026-12-05-session27/attn_ab.sh
set -euo pipefail
D=$(mktemp -d)
F="-O3 -fno-math-errno -fno-trapping-math -mavx512f -mavx2 -mfma -fopenmp -shared -fPIC -I$PWD/pagoda/native"
git show 4cbcd3d:pagoda/attention/cpu_decode_attention.c > "$D/old.c"
cc $F -o "$D/old.so" "$D/old.c"
cc $F -o "$D/new.so" pagoda/attention/cpu_decode_attention.c
cat > "$D/bench.py" <<'PY'
import ctypes, random, sys, time
import torch
from pagoda.attention import cpu_decode_native as N
d = sys.argv[1]
libs = {}
for n in ("old", "new"):
    lib = ctypes.CDLL(f"{d}/{n}.so")
    P, I = ctypes.c_void_p, ctypes.c_int64
    lib.pagoda_decode_attention.restype = ctypes.c_int
    lib.pagoda_decode_attention.argtypes = [P, I, I, P, P, I, I, P, I, P, P, I, I, I, I, ctypes.c_float, I,
                                            ctypes.c_int, ctypes.c_int, P]
    libs[n] = lib
flush = torch.empty(64 * 2**20 // 4)
for cold in (False, True):
    for ctx in (100, 300, 1000):
        nb = 4096 if cold else ctx // 16 + 2  # cold: the blocks scattered over a large cache, caches flushed first
        kc, vc = torch.randn(nb, 3, 16, 64).bfloat16(), torch.randn(nb, 3, 16, 64).bfloat16()
        bt = (torch.randperm(nb)[: ctx // 16 + 1] if cold else torch.arange(nb)).to(torch.int32)[None]
        q = torch.randn(1, 9, 64).bfloat16()
        rr, rp = torch.zeros(1, dtype=torch.int32), torch.tensor([ctx - 1], dtype=torch.int32)
        med = {}
        for r in range(2):
            for n, lib in libs.items():
                ts = []
                for _ in range(60 if cold else 300):
                    if cold:
                        flush.add_(1.0)
                    t = time.perf_counter()
                    N._launch(lib, q, kc, vc, bt, rr, rp, ctx - 1, 0.125, None)
                    ts.append(time.perf_counter() - t)
                med.setdefault(n, []).append(sorted(ts)[len(ts) // 2] * 1e6)
        print(f"{'cold' if cold else 'warm'} {ctx:5d} positions: old {min(med['old']):.1f} us, "
              f"new {min(med['new']):.1f} us", flush=True)
random.seed(0); torch.manual_seed(0)
same = worst = cases = 0
for trial in range(60):
    D_ = random.choice([64, 128, 32, 48, 24]); hkv = random.choice([1, 2, 3]); G = random.choice([1, 3, 4])
    bs = random.choice([4, 16]); nreq = random.randint(1, 4)
    s_lens = [random.randint(1, 300) for _ in range(nreq)]
    q_lens = [min(s, random.choice([1, 1, 5, 17])) for s in s_lens]
    nb = sum(-(-s // bs) for s in s_lens) + 2
    perm = torch.randperm(nb).tolist(); tables, at = [], 0
    for s in s_lens:
        k = -(-s // bs); tables.append(perm[at:at + k]); at += k
    bt = torch.tensor([t + [0] * (max(map(len, tables)) - len(t)) for t in tables], dtype=torch.int32)
    rr = torch.tensor([r for r, n in enumerate(q_lens) for _ in range(n)], dtype=torch.int32)
    rp = torch.tensor([p for n, s in zip(q_lens, s_lens) for p in range(s - n, s)], dtype=torch.int32)
    for dtype in (torch.bfloat16, torch.float32):
        kc, vc = torch.randn(nb, hkv, bs, D_).to(dtype), torch.randn(nb, hkv, bs, D_).to(dtype)
        q = torch.randn(int(rr.numel()), hkv * G, D_).to(dtype)
        w = random.choice([None, None, 7, 40])
        o = {n: N._launch(l, q, kc, vc, bt, rr, rp, int(rp.max()), 0.125, w).float() for n, l in libs.items()}
        cases += 1; same += torch.equal(o["old"], o["new"]); worst = max(worst, (o["old"] - o["new"]).abs().max().item())
print(f"{cases} random calls: {same} bitwise equal, largest difference {worst:.2e} (bf16 outputs; only bf16 caches with head_dim % 32 == 0 may differ)")
PY
OMP_NUM_THREADS=1 PYTHONPATH=. python "$D/bench.py" "$D"
rm -rf "$D"
