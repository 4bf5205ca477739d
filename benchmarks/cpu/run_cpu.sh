#!/usr/bin/env bash
# CPU figures for benchmarks/RESULTS.md: the default model (SmolLM2-135M-Instruct, bf16)
# against HF transformers generate in the same run, plus the machine's two ceilings.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-benchmarks/results/cpu-$(date +%F)}"; mkdir -p "$OUT"
python - <<'PY' | tee "$OUT/ceilings.txt"
import time, torch
x = torch.empty(256 * 2**20, dtype=torch.uint8).fill_(1); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
t = time.perf_counter()
for _ in range(10): y.copy_(x)
print(f"copy bandwidth (read+write): {2 * x.numel() * 10 / (time.perf_counter() - t) / 1e9:.1f} GB/s")
a = torch.randn(2048, 2048, dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(2): a @ b
t = time.perf_counter()
for _ in range(5): a @ b
print(f"bf16 matmul 2048^3: {2 * 2048**3 * 5 / (time.perf_counter() - t) / 1e9:.0f} GFLOP/s")
PY
pagoda --log-level WARNING bench throughput --num-prompts 32 --input-len 56 --output-len 128 --backend both \
  --output-json "$OUT/b32.json" 2>&1 | grep -E "^\[|x$" | tee "$OUT/b32.txt"
pagoda --log-level WARNING bench throughput --num-prompts 1 --input-len 56 --output-len 128 --backend both \
  --output-json "$OUT/b1.json" 2>&1 | grep -E "^\[|x$" | tee "$OUT/b1.txt"
