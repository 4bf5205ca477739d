#!/bin/bash
# Session 35: n-gram settings on the input-grounded workload, each argument "k min max" its own same-run A/B
# (spec_decode_cpu_bench.py), outputs named PREFIX + kK_minA_maxB. Run from the repository root as:
#   PREFIX=       bash k_sweep.sh "4 2 5" "4 1 5" "8 2 5" "8 1 5" "6 2 5"   (k_sweep.txt: before the session's changes)
#   PREFIX=after_ bash k_sweep.sh "4 2 5" "6 2 5" "8 2 5" "8 1 5"           (k_sweep_after.txt: after the head fix)
#   PREFIX=more_  bash k_sweep.sh "4 1 5" "6 1 5" "6 2 8" "6 3 8" "6 2 5"   (k_sweep_more.txt)
set -uo pipefail
D=benchmarks/results/cpu-2026-12-05-session35
for spec in "$@"; do
  set -- $spec
  cfg="{\"method\": \"ngram\", \"num_speculative_tokens\": $1, \"prompt_lookup_min\": $2, \"prompt_lookup_max\": $3}"
  tag=${PREFIX:-}k$1_min$2_max$3
  OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. .venv/bin/python benchmarks/spec_decode_cpu_bench.py --reps 1 \
    --speculative-config "$cfg" --output-json $D/$tag.json > $D/$tag.txt 2>&1
  .venv/bin/python - "$D/$tag.json" "$tag" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: speed-up {r['speedup']:.3f} (cpu {r['speedup_cpu_time']:.3f}), tok/s {r['tok_s_base']:.1f} -> "
      f"{r['tok_s_spec']:.1f}, acceptance length {r['mean_acceptance_length']:.2f}, step ratio {r['step_ratio']:.2f}, "
      f"identical {r['identical']}", flush=True)
PY
done
