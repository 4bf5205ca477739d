cd /work/wt/fallback
export PYTHONPATH=$PWD
for rep in 1 2 3; do
for impl in auto transformers; do
  echo "=== impl=$impl rep=$rep $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  /work/main/.venv/bin/python -m pagoda --log-level WARNING bench latency --model-impl $impl --batch-size 1 32 --input-len 32 --output-len 32 --num-iters 3 --num-iters-warmup 1 --output-json /tmp/lat2_${impl}_${rep}.json 2>&1 | grep -v "^\[transformers\]" | tail -2
done
done
