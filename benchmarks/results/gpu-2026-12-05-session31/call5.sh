#!/bin/bash
# Session 31, call 5 (carry ["wheels"]; s31_base/ = the package at the commit before the in-launch split-K sum,
# travelling as untracked files): GPU tests of the dot/u8 kernels summing split-K partials in their own launch, then
# decode steps at batch 1/2/64: bf16, W4A16 (this tree), W4A16 (s31_base: a second launch sums the partials).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d /tmp/site/fastapi ] || python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn \
  uvloop httptools msgspec pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call5_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $S
M=/tmp/llama3-8b-shape
[ -f $M/config.json ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null &
timeout 90 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_int4_kernels.py tests/kernels/test_int_weight_triton.py \
  > $OUT/call5_tests.txt 2>&1
echo "tests: $(tail -1 $OUT/call5_tests.txt)" | tee -a $S
grep -E "^FAILED" $OUT/call5_tests.txt | head | tee -a $S
wait
LAT="bench latency --model $M --load-format dummy --batch-size 1 2 64 --input-len 512 --output-len 32"
run() {  # name, directory to run in (its pagoda package is the one imported), then the command's arguments
  local name=$1 dir=$2; shift 2
  # shellcheck disable=SC2086
  (cd "$dir" && PYTHONPATH="$PWD:/tmp/site" timeout 80 python "$@") > $OUT/call5_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call5_lat_$name.txt | tr '\n' ' ')" | tee -a $S
}
R=$PWD
(cd s31_base && PYTHONPATH="$PWD:/tmp/site" python -c "import pagoda.quantization.kernels.triton_wna16 as t; print(t.__file__, hasattr(t, '_splitk_reduce_kernel'))") | tee -a $S
run gptq_tree "$R" -m pagoda.entrypoints.cli --log-level WARNING $LAT --quantization gptq
run gptq_base "$R/s31_base" -m pagoda.entrypoints.cli --log-level WARNING $LAT --quantization gptq
run bf16 "$R" -m pagoda.entrypoints.cli --log-level WARNING $LAT
