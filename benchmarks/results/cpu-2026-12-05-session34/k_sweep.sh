#!/bin/bash
# Issue 17 on the CPU: n-gram speculation's speed-up by proposal length k (lookup 2..5), the input-grounded
# workload, batch 1, greedy; each k its own same-run A/B (spec_decode_cpu_bench.py). Run from the repository root.
set -uo pipefail
D=benchmarks/results/cpu-2026-12-05-session34
for k in 1 2 3 4; do
  cfg="{\"method\": \"ngram\", \"num_speculative_tokens\": $k, \"prompt_lookup_min\": 2, \"prompt_lookup_max\": 5}"
  OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/spec_decode_cpu_bench.py --reps 1 \
    --speculative-config "$cfg" --output-json $D/k_sweep_k$k.json > $D/k_sweep_k$k.txt 2>&1
  python - "$D/k_sweep_k$k.json" "$k" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"k={sys.argv[2]}: speed-up {r['speedup']:.3f} (cpu {r['speedup_cpu_time']:.3f}), tok/s {r['tok_s_base']:.1f} -> "
      f"{r['tok_s_spec']:.1f}, acceptance length {r['mean_acceptance_length']:.2f}, step ratio {r['step_ratio']:.2f}, "
      f"identical {r['identical']}")
PY
done
