#!/usr/bin/env bash
# Session 18 (2026-12-04), the AVX2-only dev VM: copy bandwidth, then the default model against llama.cpp and HF
# (bf16 and float32) in one interleaved run. Repo root, venv active, llama-cpp-python 0.3.36 installed.
set -x
D=benchmarks/results/cpu-default-model-2026-12-04-avx2
grep -o 'avx512[a-z_0-9]*\|avx2\|amx[a-z_]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo; uptime
python - > $D/ceilings.txt <<'PY'
import time, torch
x = torch.empty(256 * 2**20, dtype=torch.uint8); y = torch.empty_like(x); x.fill_(1)
best = min((lambda t0: (y.copy_(x), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(10))
print(f"copy bandwidth (read+write, 256 MiB, best of 10): {2 * x.numel() / best / 1e9:.1f} GB/s")
PY
cat $D/ceilings.txt
OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/cpu_default_model.py --rounds 2 --input-len 32 --output-len 64 \
  --backends pagoda-q llama.cpp hf hf-fp32 --output-json $D/final.json > $D/final.log 2>&1
uptime
python - >> $D/ceilings.txt <<'PY'
import time, torch
x = torch.empty(256 * 2**20, dtype=torch.uint8); y = torch.empty_like(x); x.fill_(1)
best = min((lambda t0: (y.copy_(x), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(10))
print(f"after the run: {2 * x.numel() / best / 1e9:.1f} GB/s")
PY
