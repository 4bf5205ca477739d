#!/usr/bin/env bash
# Session-8 device call 7 (run inline; output in call7_output.txt): the reference, HF transformers on the same
# (dequantized) weights on the same GPU: greedy answer and the first token's top-5 log-probabilities, bf16 and fp32.
export PYTHONPATH="$PWD:/tmp/site" PAGODA_CACHE=$PWD/out/pc PYTHONUNBUFFERED=1
python - <<'PY'
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from pagoda.models.model_files import resolve_model
F = str(resolve_model("/tmp/dm/m.gguf"))
tok = AutoTokenizer.from_pretrained(F)
ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
                              return_tensors="pt")
ids = ids["input_ids"] if hasattr(ids, "keys") else ids
for dt in (torch.bfloat16, torch.float32):
    m = AutoModelForCausalLM.from_pretrained(F, dtype=dt).cuda().eval()
    with torch.no_grad():
        lg = m(ids.cuda()).logits[0, -1].float().log_softmax(-1)
        out = m.generate(ids.cuda(), max_new_tokens=12, do_sample=False)
    top = lg.topk(5)
    print("HF", dt, repr(tok.decode(out[0, ids.shape[1]:])),
          [(tok.decode([int(i)]), round(float(v), 3)) for v, i in zip(top.values, top.indices)])
    del m
PY
