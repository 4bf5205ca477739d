#!/usr/bin/env bash
# The 4-bit dot kernel with and without the next block's scale-line prefetch (session 27), the default model's 120
# linears (random Q4_1-like codes, group 32) at 1 and 5 rows, two OpenMP threads, arms alternating 40 rounds.
# Usage (repository root): bash benchmarks/results/cpu-2026-12-05-session27/sz_prefetch_ab.sh
set -euo pipefail
D=$(mktemp -d)
F="-O3 -ffp-contract=off -fopenmp -shared -fPIC -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -I$PWD/pagoda/native"
git show 58e53fe:pagoda/quantization/kernels/cpu_int4_dot.c > "$D/old.c"
cc $F -o "$D/old.so" "$D/old.c"
cc $F -o "$D/new.so" pagoda/quantization/kernels/cpu_int4_dot.c
cat > "$D/bench.py" <<'PY'
import ctypes, sys, time, torch
d = sys.argv[1]; M = int(sys.argv[2])
libs = {n: ctypes.CDLL(f"{d}/{n}.so") for n in ("old", "new")}
for lib in libs.values():
    lib.pagoda_int4_dot_mm.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 5
G = 32
torch.manual_seed(0)
ws = []
for n, k in [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30:
    q = torch.randint(0, 16, (n, k), dtype=torch.int32)
    ws.append((torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), (torch.randn(k // G, n, 2) * 0.1).bfloat16(), n, k))
xs = [torch.randn(M, k).bfloat16() for *_, k in ws]
outs = {name: [torch.empty(M, n, dtype=torch.bfloat16) for _, _, n, _ in ws] for name in libs}
times = {name: [] for name in libs}
for r in range(40):
    for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
        t = time.perf_counter()
        for (packed, sz, n, k), x, o in zip(ws, xs, outs[name]):
            libs[name].pagoda_int4_dot_mm(x.data_ptr(), packed.data_ptr(), sz.data_ptr(), o.data_ptr(), M, n, k, G, 2)
        times[name].append(time.perf_counter() - t)
same = all(torch.equal(a, b) for a, b in zip(outs["old"], outs["new"]))
med = {n: sorted(v)[len(v) // 2] * 1e3 for n, v in times.items()}
print(f"rows {M}: old {med['old']:.3f} ms  new {med['new']:.3f} ms  new/old {med['new'] / med['old']:.3f}  bitwise equal {same}")
PY
for m in 1 1 5 5; do OMP_NUM_THREADS=2 python "$D/bench.py" "$D" "$m"; done
rm -rf "$D"
