"""Where the time to first token of a request with a cached 2,000-token prefix goes (GPU).

Usage: python benchmarks/gpu/profile_cached_prefill.py MODEL_DIR
Runs a 2,000-token prefix once (uncached), then the same prefix + a new 100-token suffix
(cached) a few times, timing each generate() call, and profiles one cached call: GPU
kernels grouped by name, and the CPU-side top functions.
"""

import random
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pagoda import LLM, SamplingParams

llm = LLM(sys.argv[1], load_format="dummy", max_model_len=4096)
sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)
rng = random.Random(0)


def gen(ids):
    torch.cuda.synchronize()
    t = time.perf_counter()
    o = llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)[0]
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1000, o.num_cached_tokens


for trial in range(3):
    prefix = [rng.randint(10, 1000) for _ in range(2000)]
    cold = gen(prefix + [rng.randint(10, 1000) for _ in range(100)])
    warm = [gen(prefix + [rng.randint(10, 1000) for _ in range(100)]) for _ in range(3)]
    print(f"trial {trial}: uncached {cold[0]:.1f} ms; cached {[f'{w[0]:.1f} ms ({w[1]} hit)' for w in warm]}")

prefix = [rng.randint(10, 1000) for _ in range(2000)]
gen(prefix + [5] * 100)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    gen(prefix + [6] * 100)
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))
