#!/usr/bin/env bash
# One device call: environment, GPU tests, kernel timings, Llama-3-8B-shape benchmarks
# (pagoda and the HF transformers peer). Everything lands in $OUT.
# Usage on the GPU machine: bash benchmarks/gpu/run_h100.sh [parts...]
# parts: env tests kernels intweight torchattn breakdown latency spec throughput sync prefix hf moe quant det   (default: env tests kernels latency throughput hf)
# spec: speculative verify-4 step vs decode step, batch 1 and 32 (benchmarks/gpu/spec_verify_bench.sh)
# sync: latency and throughput again with --no-async-scheduling (the A/B of async scheduling)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" TOKENIZERS_PARALLELISM=false
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
M=/tmp/llama3-8b-shape
parts="${*:-env tests kernels latency throughput hf}"
has() { [[ " $parts " == *" $1 "* ]]; }
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/summary.txt"; }

# The GPU image lacks msgspec (engine messages), the server packages and gguf: carry them as wheels in
# ./wheels (git-ignored; name it in the device call's carry) and install them without dependency resolution.
if [ -d wheels ]; then
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
  export PYTHONPATH="$PWD:/tmp/site"
fi
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null

if has env; then
  log env
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee -a "$OUT/summary.txt"
  python - <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import torch, triton, transformers, time
print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)
x = torch.randn(2**30 // 2, dtype=torch.bfloat16, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(20): y.copy_(x)
e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / 20
print(f"copy bandwidth (read+write): {2 * x.numel() * 2 / (ms / 1e3) / 1e9:.0f} GB/s")
PY
fi

if has tests; then
  log "gpu tests"
  timeout 400 python -m pytest tests/gpu tests/kernels -q -x 2>&1 | tail -15 | tee -a "$OUT/summary.txt"
fi

if has kernels; then
  log "kernel timings"
  timeout 200 python benchmarks/gpu/kernel_bench.py 2>&1 | tail -30 | tee -a "$OUT/summary.txt"
fi

if has intweight; then
  log "int weights: Triton W4A16/W8A16 vs bf16 linears (Llama-3-8B shape, M=1 and 64) + its tests"
  timeout 120 python -m pytest tests/kernels/test_int_weight_triton.py tests/kernels/test_w4_gemv_triton.py \
    tests/gpu/test_gpu_int4_kernels.py -q -x 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
  timeout 200 python benchmarks/gpu/int_weight_bench.py 2>&1 | tail -60 | tee -a "$OUT/summary.txt"
  timeout 300 python benchmarks/gpu/int4_gemv_sweep.py 2>&1 | tee "$OUT/int4_gemv_sweep.txt" | tail -40 | tee -a "$OUT/summary.txt"
fi

if has torchattn; then
  log "torch's attention (varlen_attn, SDPA) vs ours on prompts without cached context"
  timeout 200 python benchmarks/gpu/torch_attention_bench.py 2>&1 | tail -12 | tee -a "$OUT/summary.txt"
fi

if has breakdown; then
  log "decode step breakdown (Llama-3-8B shape)"
  timeout 200 python benchmarks/gpu/step_breakdown.py $M 2>&1 | grep -E "^batch|rror" | tee -a "$OUT/summary.txt"
fi

if has latency; then
  log "latency (Llama-3-8B shape, bf16, dummy)"
  timeout 400 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy \
    --batch-size 1 64 256 --input-len 1024 --output-len 96 --num-iters 1 --max-model-len 4096 --output-json "$OUT/latency.json" 2>&1 \
    | grep -E "^batch|KV cache|Captured|Loaded|rror" | tee -a "$OUT/summary.txt"
fi

if has spec; then
  log "speculative decoding: verify-4 step vs decode step (Llama-3-8B shape, bf16, dummy, CUDA graphs)"
  bash benchmarks/gpu/spec_verify_bench.sh "$OUT/spec" 2>&1 | tee -a "$OUT/summary.txt"
fi

if has throughput; then
  log "throughput sharegpt-like 500 (pagoda)"
  timeout 300 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy \
    --dataset sharegpt --num-prompts 500 --max-model-len 4096 --output-json "$OUT/tp_pagoda.json" 2>&1 | grep -E "pagoda\]|digest|KV cache|Captured|Loaded|rror" | tee -a "$OUT/summary.txt"
fi

if has det; then
  # --deterministic (batch-invariant mode): its GPU tests, then the throughput and batch-1/64 decode cost.
  log "deterministic mode: tests, then sharegpt-like 300 and latency, off vs on (Llama-3-8B shape, bf16, dummy)"
  timeout 300 python -m pytest tests/gpu/test_gpu_deterministic.py tests/kernels/test_batch_invariant_triton.py -q -x 2>&1 \
    | tail -5 | tee -a "$OUT/summary.txt"
  for det in "" "--deterministic"; do
    log "throughput ${det:-default}"
    timeout 200 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy $det \
      --dataset sharegpt --num-prompts 300 --max-model-len 4096 --output-json "$OUT/tp_det${det:+_on}.json" 2>&1 \
      | grep -E "pagoda\]|digest|rror" | tee -a "$OUT/summary.txt"
    log "latency ${det:-default}"
    timeout 200 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy $det \
      --batch-size 1 64 --input-len 512 --output-len 64 --num-iters 1 --max-model-len 4096 2>&1 \
      | grep -E "^batch|rror" | tee -a "$OUT/summary.txt"
  done
fi

if has sync; then
  log "latency, synchronous scheduling (--no-async-scheduling)"
  timeout 400 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy --no-async-scheduling \
    --batch-size 1 64 256 --input-len 1024 --output-len 96 --num-iters 1 --max-model-len 4096 --output-json "$OUT/latency_sync.json" 2>&1 \
    | grep -E "^batch|rror" | tee -a "$OUT/summary.txt"
  log "throughput sharegpt-like 500, synchronous scheduling (--no-async-scheduling)"
  timeout 300 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy --no-async-scheduling \
    --dataset sharegpt --num-prompts 500 --max-model-len 4096 --output-json "$OUT/tp_pagoda_sync.json" 2>&1 | grep -E "pagoda\]|rror" | tee -a "$OUT/summary.txt"
fi

if has prefix; then
  log "shared-prefix workload (prefix_repetition: 20 prefixes x 2000 tokens, 200 requests), caching on vs off"
  timeout 400 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy \
    --dataset-name prefix_repetition --prefix-repetition-num-prefixes 20 --prefix-repetition-prefix-len 2000 \
    --prefix-repetition-suffix-len 100 --prefix-repetition-output-len 32 --num-prompts 200 --max-model-len 4096 \
    --compare-no-prefix-caching --output-json "$OUT/prefix_gpu.json" 2>&1 | grep -E "^\[|x faster|TTFT|hit|rror" | tee -a "$OUT/summary.txt"
fi

if has hf; then
  log "throughput peer: HF transformers generate_batch (paged|sdpa), the same 500 requests as pagoda (digests match)"
  timeout 240 python benchmarks/gpu/hf_peer.py --model $M --dataset sharegpt --num-prompts 500 \
    --output-json "$OUT/tp_hf.json" 2>&1 | tail -4 | tee -a "$OUT/summary.txt"
fi
if has moe; then
  log "MoE: Qwen3-30B-A3B shape decode vs floor and HF; Mixtral-8x7B shape fits (bf16 dummy)"
  timeout 300 python benchmarks/gpu/moe_bench.py --output-json "$OUT/moe.json" 2>&1 \
    | grep -E "^\[|copy bandwidth|total|rror" | tee -a "$OUT/summary.txt"
fi
if has quant; then
  # Issue 12's figures: W4A16 (GPTQ layout, group 128) and FP8 weights against bf16, the same call.
  for q in none gptq fp8; do
    log "latency (Llama-3-8B shape, dummy, quantization: $q)"
    qflag=(); [ "$q" != none ] && qflag=(--quantization "$q")
    timeout 120 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy "${qflag[@]}" \
      --batch-size 1 64 --input-len 512 --output-len 32 --num-iters 1 --max-model-len 4096 \
      --output-json "$OUT/latency_q_$q.json" 2>&1 | grep -E "^batch|KV cache|Loaded|rror" | tee -a "$OUT/summary.txt"
  done
  for q in none fp8; do
    log "throughput sharegpt-like 500 (quantization: $q, kv cache: $([ $q = fp8 ] && echo fp8 || echo auto))"
    qflag=(); [ "$q" != none ] && qflag=(--quantization fp8 --kv-cache-dtype fp8)
    timeout 110 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy "${qflag[@]}" \
      --dataset sharegpt --num-prompts 300 --max-model-len 4096 --output-json "$OUT/tp_q_$q.json" 2>&1 \
      | grep -E "pagoda\]|KV cache|Loaded|rror" | tee -a "$OUT/summary.txt"
  done
fi
log done
