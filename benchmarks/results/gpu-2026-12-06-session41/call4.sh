#!/bin/bash
# Session 41, call 4 (carry ["wheels"]): after the session's second round of changes (sampler top-k ties / top-p
# boundary, scheduler queues, AsyncLLM shutdown): the sampler's truncation on CUDA against the CPU on the same
# logits, then the GPU parity, speculative-verify (rejection sampling, seeded draws) and structured-output tests.
set -uo pipefail
export CAP=330
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step sampler_cuda 60 python - <<'PY'
import torch
from pagoda.layers.sampler import _apply_top_k_top_p
from pagoda.sampling_params import SamplingParams
torch.manual_seed(0)
x = torch.randn(8, 50000).round(decimals=1)  # many ties
ps = [SamplingParams(temperature=1.0, top_k=k, top_p=p) for k, p in
      [(1, 1.0), (5, 1.0), (50, 0.9), (0, 0.5), (-1, 0.95), (3, 0.3), (1000, 0.99), (2, 1.0)]]
a = _apply_top_k_top_p(x.clone(), ps)
b = _apply_top_k_top_p(x.cuda(), ps).cpu()
print("kept per row", (a > float("-inf")).sum(1).tolist(), "equal", torch.equal(a, b))
assert torch.equal(a, b)
PY
P="python -m pytest -q -p no:cacheprovider -x --timeout 200"
step gpu_parity 80 $P tests/gpu/test_gpu_parity.py
step gpu_spec 90 $P tests/gpu/test_gpu_spec_verify_graphs.py tests/gpu/test_gpu_spec_no_sync.py
step gpu_structured 60 $P tests/gpu/test_gpu_structured.py
cat $S
exit 0
