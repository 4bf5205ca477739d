import json, sys, time
from pathlib import Path
sys.path.insert(0, '.')
from pagoda import LLM, SamplingParams
from pagoda.benchmarks.latency import recording
rows = [json.loads(l) for l in Path('benchmarks/data/input_grounded.jsonl').read_text().splitlines() if l.strip()]
NG = {"method": "ngram", "num_speculative_tokens": 6, "prompt_lookup_min": 2, "prompt_lookup_max": 5}
common = dict(enable_prefix_caching=False, max_model_len=2048)
llms = {"base": LLM(**common), "spec": LLM(**common, speculative_config=NG)}
sp = SamplingParams(temperature=0.0, max_tokens=128)
for name, llm in llms.items():  # warm-up
    llm.chat([rows[0]["messages"]], sp, use_tqdm=False)
walls = {"base": 0.0, "spec": 0.0}
for rep in range(2):
    for r in rows:
        for name in (("base", "spec") if rep % 2 == 0 else ("spec", "base")):
            llm = llms[name]
            eng = getattr(llm, "llm_engine", None) or getattr(llm, "engine")
            with recording(eng.core, f"/tmp/sim/tl_{name}.jsonl", name):
                t = time.perf_counter()
                llm.chat([r["messages"]], sp, use_tqdm=False)
                walls[name] += time.perf_counter() - t
print(walls)
