#!/bin/bash
# Session 23, call 2: (1) the tensor-core GEMV rules with the padded rows masked (zeros, never read: call 1's rules
# re-read the last real row, so every program pulled 16 rows of x per K tile from L2) re-swept at 4, 5 and 8 rows on
# the Llama-3-8B linears, three more tile shapes; (2) decode steps at batch 1, 2, 4 and 8 with the code's table
# against call 1's 2-row winners + this sweep's (decode_ab.py --switch gemv-table); (3) the batch-1 verify-4 step
# with and without them; (4) where the FP8 batch-1 step goes against bf16's (profile_steps.py, issue 12).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
ROOT=$PWD
R=benchmarks/results/h200-2026-12-04-session23
export PYTHONPATH="$ROOT:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 150 python benchmarks/gpu/dense_gemv_sweep.py --shapes llama3-8b --rows 4 5 8 --json /tmp/sweep2.json \
  2>&1 | grep -v Warning | grep -E "m=|CHOOSE|\(" | tee $OUT/call2_sweep.txt
python - $R/call1_sweep.json /tmp/sweep2.json $OUT/call2_sweep.json $OUT/call2_merged.json <<'PY'
import dataclasses, json, sys
sys.path.insert(0, "benchmarks/gpu")
from with_gemv_table import merged_table
rows = [r for r in json.load(open(sys.argv[1])) if r["m"] == 2] + json.load(open(sys.argv[2]))
json.dump(rows, open(sys.argv[3], "w"), indent=1)
table = merged_table(sys.argv[3], False)
json.dump([{"m": m, "n": n, "k": k, "cublas_us": 1.0, "gemv_us": 0.0, "rule": list(dataclasses.astuple(r))}
           for (m, n, k), r in table.items()], open(sys.argv[4], "w"))
print(f"merged table: {len(table)} entries")
PY
timeout 240 python benchmarks/gpu/decode_ab.py $M --switch gemv-table --gemv-table $OUT/call2_merged.json \
  --batch 1 2 4 8 --rounds 2 2>&1 | grep -v Warning | grep -E "^\[|bandwidth" | tee $OUT/call2_decode_ab.txt | grep "on/off"
lat() {  # $1: arm name, $2: CLI prefix, rest: extra flags
  local name=$1 cli=$2; shift 2
  # shellcheck disable=SC2086
  timeout 100 $cli --log-level WARNING bench latency --model $M --load-format dummy --batch-size 1 --input-len 512 \
    --output-len 32 --max-model-len 2048 --max-num-seqs 32 "$@" 2>&1 | grep -E '^batch' | sed "s/^/$name: /" \
    | tee -a $OUT/call2_lat.txt
}
SPEC='{"method": "synthetic", "num_speculative_tokens": 4}'
lat plain "python -m pagoda.entrypoints.cli"
lat verify_base "python -m pagoda.entrypoints.cli" --speculative-config "$SPEC"
lat verify_new "python benchmarks/gpu/with_gemv_table.py --table $OUT/call2_sweep.json --" --speculative-config "$SPEC"
for q in bf16 fp8; do
  ea='{}'; [ $q = fp8 ] && ea='{"quantization": "fp8"}'
  timeout 100 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --engine-args "$ea" 2>&1 \
    | grep -v Warning > $OUT/call2_profile_$q.txt; echo "profile $q rc=$?"; head -30 $OUT/call2_profile_$q.txt
done
