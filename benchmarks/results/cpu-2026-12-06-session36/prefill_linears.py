import json, sys, time
from collections import defaultdict
from pathlib import Path
import torch
from pagoda import LLM, SamplingParams
from pagoda.quantization.kernels import cpu_woq, cpu_int4_dot
T = defaultdict(float); C = defaultdict(int)
orig = cpu_woq.int4_matmul
def wrapped(x, parts, *a, **k):
    t = time.perf_counter(); y = orig(x, parts, *a, **k); T[(x.shape[0] > 8, parts[0][0].shape[0], x.shape[1])] += time.perf_counter() - t; C[(x.shape[0] > 8, parts[0][0].shape[0], x.shape[1])] += 1; return y
cpu_woq.int4_matmul = wrapped
orig_call = cpu_int4_dot.BoundCall.__call__
def bc(self, x, *a, **k):
    t = time.perf_counter(); y = orig_call(self, x, *a, **k); key = (x.shape[0] > 8, y.shape[-1], x.shape[-1]); T[key] += time.perf_counter() - t; C[key] += 1; return y
cpu_int4_dot.BoundCall.__call__ = bc
rows = [json.loads(l) for l in Path('benchmarks/data/input_grounded.jsonl').read_text().splitlines() if l.strip()]
llm = LLM(enable_prefix_caching=False, max_model_len=2048)
sp = SamplingParams(temperature=0.0, max_tokens=1)
for i in range(3):
    llm.chat([rows[i % 10]["messages"]], sp, use_tqdm=False)
T.clear(); C.clear()
t0 = time.perf_counter()
for i in range(10):
    llm.chat([rows[i]["messages"]], sp, use_tqdm=False)
wall = time.perf_counter() - t0
print(f"10 prefills {wall:.3f} s")
for k in sorted(T): print(k, C[k], f"{T[k]*1e3:.1f} ms")
print("linears total", sum(v for k, v in T.items() if k[0]) * 1e3, "ms")
