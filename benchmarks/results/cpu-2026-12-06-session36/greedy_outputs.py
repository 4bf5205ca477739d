import json, sys
from pathlib import Path
from pagoda import LLM, SamplingParams
rows = [json.loads(l) for l in Path('benchmarks/data/input_grounded.jsonl').read_text().splitlines() if l.strip()]
llm = LLM(enable_prefix_caching=False, max_model_len=2048)
tok = llm.get_tokenizer()
out = []
for r in rows:
    res = llm.chat([r["messages"]], SamplingParams(temperature=0.0, max_tokens=128), use_tqdm=False)[0]
    out.append({"task": r["task"], "prompt": list(res.prompt_token_ids), "out": list(res.outputs[0].token_ids)})
json.dump(out, open('/tmp/sim/greedy.json', 'w'))
print([ (o["task"], len(o["prompt"]), len(o["out"])) for o in out])
