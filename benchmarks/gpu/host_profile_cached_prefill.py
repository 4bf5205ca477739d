"""Host-side (Python) profile of one cached-prefix request on the GPU: where the ~4 ms
between the GPU's kernel time and the call's wall time goes.

Usage: python benchmarks/gpu/host_profile_cached_prefill.py MODEL_DIR
"""

import cProfile
import pstats
import random
import sys
import time

import torch

from pagoda import LLM, SamplingParams

llm = LLM(sys.argv[1], load_format="dummy", max_model_len=4096)
sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)
rng = random.Random(0)
prefix = [rng.randint(10, 1000) for _ in range(2000)]


def gen(ids):
    t = time.perf_counter()
    llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1000


gen(prefix + [5] * 100)
for i in range(4):
    gen(prefix + [6 + i] * 100)
print("cached calls (ms):", [round(gen(prefix + [20 + i] * 100), 2) for i in range(5)])
pr = cProfile.Profile()
pr.enable()
for i in range(10):
    gen(prefix + [40 + i] * 100)
pr.disable()
st = pstats.Stats(pr)
st.sort_stats("tottime").print_stats(22)
st.sort_stats("cumulative").print_stats(30)
