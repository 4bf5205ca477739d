#!/usr/bin/env bash
# Session-14 device call 1: GPU tests for quantized + GGUF MoE; native vs transformers-fallback decode step (issue 13).
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a $S
python -c "import transformers, torch, triton; print(transformers.__version__, torch.__version__, triton.__version__)" | tee -a $S
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json /tmp/llama3-8b-shape > /dev/null 2>&1
M=/tmp/llama3-8b-shape
echo "== latency native / fallback ($(date +%T))" | tee -a $S
for impl in auto transformers; do
  timeout 150 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy --model-impl $impl \
    --batch-size 1 64 --input-len 512 --output-len 32 --num-iters 2 --max-model-len 4096 --output-json $OUT/lat_$impl.json > $OUT/lat_$impl.log 2>&1
  echo "-- $impl" | tee -a $S; grep -E "^batch|Captured|rror" $OUT/lat_$impl.log | tee -a $S
done
echo "-- transformers, before this session (only the RMSNorms fused)" | tee -a $S
timeout 150 python -c "import sys; from pagoda.models import transformers_backend as tb; from pagoda.models.transformers_norms import fuse_rms_norms; tb.TransformersForCausalLM.enable_fused_kernels = lambda self: fuse_rms_norms(self.hf, triton=True); from pagoda.entrypoints.cli import main; main(sys.argv[1:])" \
  --log-level INFO bench latency --model $M --load-format dummy --model-impl transformers \
  --batch-size 1 64 --input-len 512 --output-len 32 --num-iters 2 --max-model-len 4096 --output-json $OUT/lat_fb_before.json > $OUT/lat_fb_before.log 2>&1
grep -E "^batch|rror" $OUT/lat_fb_before.log | tee -a $S
echo "== fallback profile b1 ($(date +%T))" | tee -a $S
timeout 120 python benchmarks/gpu/profile_steps.py $M --batch 1 --timeline --engine-args '{"model_impl": "transformers"}' > $OUT/prof_fb.txt 2>&1
grep -B2 -A22 "^== batch" $OUT/prof_fb.txt | head -40 | tee -a $S
echo "== done ($(date +%T))" | tee -a $S
