#!/bin/bash
# Session 16, call 1: where the verify step's exposed host path goes (finer phases), and where the 64-stream TTFT goes.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
W="pagoda.worker.verify_graphs:VerifyGraphs.run pagoda.worker.verify_graphs:stage_tokens pagoda.worker.model_runner:prepare_inputs pagoda.worker.model_runner:ModelRunner._block_table_rows pagoda.worker.model_runner:ModelRunner._forward_path pagoda.engine.core:EngineCore._result pagoda.engine.core:EngineCore._advance_grammars pagoda.core.kv_cache_manager:KVCacheManager.get_block_ids pagoda.engine.core:EngineCore._merge_outputs"
timeout 240 python benchmarks/gpu/profile_steps.py $M --batch 1 32 --steps 40 --phases --wrap $W \
  --engine-args '{"speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}, "max_model_len": 2048}' \
  > $OUT/call1_phases_verify.txt 2>&1
grep -v Warning $OUT/call1_phases_verify.txt | grep -v warn_once | head -120
export PAGODA_REQUEST_TRACE=$OUT/trace_c64.jsonl
OUT=$OUT CLIENTS=4 N=500 LEVELS=64 TAG=_mbt512 SERVE_FLAGS="--max-num-batched-tokens 512" timeout 300 bash benchmarks/gpu/issue21_timeline.sh stream > $OUT/call1_stream.txt 2>&1
tail -30 $OUT/call1_stream.txt
python benchmarks/ttft_breakdown.py $OUT/serve_c64_mbt512.json $OUT/trace_c64.jsonl | tee $OUT/call1_ttft_breakdown.txt
python benchmarks/ttft_breakdown.py $OUT/serve_c64_mbt512.json $OUT/trace_c64.jsonl --skip 0 | tee -a $OUT/call1_ttft_breakdown.txt
gzip -f $OUT/serve_c64_mbt512.json $OUT/trace_c64.jsonl $OUT/core_steps_c64_mbt512.jsonl 2>/dev/null
ls -la $OUT
