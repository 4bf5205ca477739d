# Fallback vs native decode step on the CPU (default model, bf16 safetensors conversion), before/after the
# fallback's fused RMSNorms: BASE = a checkout of the branch point, NEW = this branch. Interleaved repetitions.
BASE=${BASE:-/tmp/fbg/base}
NEW=${NEW:-$PWD}
OUT=${OUT:-/tmp/fbg/bench}
mkdir -p $OUT
run() {  # name dir impl rep
  echo "=== $1 impl=$3 rep=$4 $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  (cd $2 && PYTHONPATH=$2 /work/main/.venv/bin/python -m pagoda --log-level WARNING bench latency --load-format safetensors \
    --model-impl $3 --batch-size 1 32 --input-len 32 --output-len 32 --num-iters 3 --num-iters-warmup 1 \
    --output-json $OUT/$1_$3_$4.json 2>&1 | grep -v "^\[transformers\]" | tail -2)
}
for rep in 1 2 3; do
  run native $NEW auto $rep
  run before $BASE transformers $rep
  run after $NEW transformers $rep
done
