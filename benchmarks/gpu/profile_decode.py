"""Per-kernel GPU time of one decode step (CUDA-graph replay), Llama-3-8B shape, ~1k context.

Usage: python benchmarks/gpu/profile_decode.py MODEL_DIR [batch ...]
Prints, per batch size, the kernels of 20 graph replays grouped by name (total time per
step, launches per step) and the step total, so the gap to the memory floor can be
attributed (GEMVs vs attention vs elementwise vs LM head).
"""

import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from pagoda import SamplingParams
from pagoda.config import EngineArgs
from pagoda.engine.llm_engine import LLMEngine

model = sys.argv[1]
batches = [int(b) for b in sys.argv[2:]] or [1]
eng = LLMEngine.from_engine_args(EngineArgs(model=model, load_format="dummy", max_model_len=4096))
g = eng.core.runner.graphs
N = 20
for b in batches:
    sp = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, detokenize=False)
    for i in range(b):
        prompt = {"prompt_token_ids": [100 + (i + j) % 500 for j in range(1024)]}
        eng.add_request(f"{b}-{i}", prompt, sp, final_only=True)
    while eng.core.scheduler.waiting or any(r.num_output_tokens == 0 for r in eng.core.scheduler.running):
        eng.step()
    size = next(s for s in g.sizes if s >= b)
    for _ in range(3):
        g.graphs[size].replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(N):
            g.graphs[size].replay()
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = ev.name[:90]
            per[k][0] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
            per[k][1] += 1
    total = sum(v[0] for v in per.values()) / N
    print(f"== batch {b}: kernel time per step {total / 1000:.3f} ms, {sum(v[1] for v in per.values()) // N} kernels")
    for name, (t, n) in sorted(per.items(), key=lambda kv: -kv[1][0])[:14]:
        print(f"  {t / N / 1000:7.3f} ms  {n // N:4d}x  {name}")
    eng.abort_request([f"{b}-{i}" for i in range(b)])
