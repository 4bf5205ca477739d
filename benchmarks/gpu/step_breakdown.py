"""Where a decode step's time goes (Llama-3-8B shape, dummy weights, ~1k context).

For batch sizes 1, 64 and 256: GPU time of the CUDA-graph replay alone (device events),
of logits + argmax, and the whole engine step on the host clock; the difference is
host-side work (scheduling, input preparation, sampling bookkeeping) not overlapped
with the GPU.
"""

import sys
import time

import torch

from pagoda import SamplingParams
from pagoda.config import EngineArgs
from pagoda.engine.llm_engine import LLMEngine

model = sys.argv[1]
eng = LLMEngine.from_engine_args(EngineArgs(model=model, load_format="dummy", max_model_len=4096))
runner = eng.core.runner
g = runner.graphs


def ev_time(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n


for b in (1, 64, 256):
    sp = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, detokenize=False)
    for i in range(b):
        prompt = {"prompt_token_ids": [100 + (i + j) % 500 for j in range(1024)]}
        eng.add_request(f"{b}-{i}", prompt, sp, final_only=True)
    while eng.last_stats.num_prompt_tokens or not eng.core.scheduler.running or any(
        r.num_output_tokens == 0 for r in eng.core.scheduler.running
    ) or eng.core.scheduler.waiting:
        eng.step()
    host = []
    for _ in range(10):
        t = time.perf_counter()
        eng.step()
        host.append(time.perf_counter() - t)
    host.sort()
    size = next(s for s in g.sizes if s >= b)
    replay = ev_time(g.graphs[size].replay)
    hidden = g.outputs[size][:b]
    with torch.inference_mode():
        logits = ev_time(lambda h=hidden: runner.model.compute_logits(h).argmax(-1))
    print(f"batch {b:4d}: step {host[len(host) // 2] * 1000:6.2f} ms | graph replay {replay:6.2f} ms | "
          f"logits+argmax {logits:5.2f} ms | host/other {host[len(host) // 2] * 1000 - replay - logits:5.2f} ms")
    eng.abort_request([f"{b}-{i}" for i in range(b)])
