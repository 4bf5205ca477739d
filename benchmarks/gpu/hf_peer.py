"""HF transformers ``generate_batch`` (paged attention, continuous batching) on the ShareGPT-like set.

Same seeded prompts as ``pagoda bench throughput --dataset sharegpt`` (the first N of
them); one generation config for all, so every request gets the set's mean output
length (179 tokens), ``eos`` disabled. Prints output tokens/s and requests/s.
"""

import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from pagoda.benchmarks.datasets import sharegpt_like_requests

folder, n = sys.argv[1], int(sys.argv[2])
cfg = AutoConfig.from_pretrained(folder)
reqs = sharegpt_like_requests(500, cfg.vocab_size, 0)[:n]
out_len = 179
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="paged|sdpa")
model.eval()
gc = GenerationConfig(max_new_tokens=out_len, do_sample=False, eos_token_id=-1, pad_token_id=0)
inputs = [r.prompt_token_ids for r in reqs]
model.generate_batch(inputs=inputs[:8], generation_config=GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=-1, pad_token_id=0))
torch.cuda.synchronize()
t0 = time.perf_counter()
res = model.generate_batch(inputs=inputs, generation_config=gc)
torch.cuda.synchronize()
dt = time.perf_counter() - t0
toks = sum(len(v.generated_tokens) for v in res.values())
print(f"[hf generate_batch] {len(reqs)} requests, {toks} output tokens in {dt:.1f} s: "
      f"{toks / dt:.1f} output tok/s, {len(reqs) / dt:.2f} req/s")
