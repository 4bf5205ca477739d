#!/usr/bin/env bash
# Speculative decoding on the GPU (issue 17): the cost of a step that verifies 4 proposals per request
# against a plain decode step, batch 1 and 32, Llama-3-8B shape, bf16, dummy weights, CUDA graphs on
# (verify steps replay worker/verify_graphs.py). The timing-only "synthetic" proposer makes every step
# verify exactly 4 proposals. Prints each median step, the ratio (targets <= 1.15x at batch 1, <= 1.3x at
# batch 32) and the speed-up the costs predict at acceptance lengths 1.5 / 2.5 / 3.5 tokens per step.
# Run from the repository root on the GPU machine (about 2 minutes on an H200):
#   bash benchmarks/gpu/spec_verify_bench.sh [OUT_DIR]
# BATCHES (default "1 32") narrows the batch sizes. PAGODA_CLI replaces the command that runs pagoda (an A/B of
# GEMV tables: "python benchmarks/gpu/with_gemv_table.py --cuda-cores-only --").
set -euo pipefail
OUT=${1:-/tmp/spec_verify}
mkdir -p "$OUT"
M=$OUT/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
run() {  # $1: name, rest: extra flags
  local name=$1; shift
  # shellcheck disable=SC2086
  timeout 170 ${PAGODA_CLI:-python -m pagoda.entrypoints.cli} --log-level INFO bench latency --model "$M" --load-format dummy \
    --batch-size ${BATCHES:-1 32} --input-len 512 --output-len 32 --max-model-len 2048 --max-num-seqs 32 --output-json "$OUT/$name.json" "$@" 2>&1 \
    | grep -E "^batch|Captured|rror" | tee "$OUT/$name.txt"
}
run plain
run verify4 --speculative-config '{"method": "synthetic", "num_speculative_tokens": 4}'
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
plain, spec = ((lambda r: r if isinstance(r, list) else [r])(json.load(open(f"{out}/{n}.json")))
               for n in ("plain", "verify4"))  # one batch size: one record
for p, s in zip(plain, spec, strict=True):
    target = 1.15 if p["batch_size"] == 1 else 1.3
    d, v = p["decode_step_ms_median"], s["decode_step_ms_median"]
    pred = ", ".join(f"{a}: {a * d / v:.2f}x" for a in (1.5, 2.5, 3.5))
    print(f"batch {p['batch_size']}: decode step {d:.2f} ms, verify-4 step {v:.2f} ms = {v / d:.2f}x "
          f"(target <= {target}x); predicted speed-up at acceptance length {pred}")
PY
