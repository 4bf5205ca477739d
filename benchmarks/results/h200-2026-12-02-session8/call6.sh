#!/usr/bin/env bash
# Session-8 device call 6 (run inline; output in call6_output.txt): the default model's bf16 chat answer on the GPU,
# which call 3 found wrong ("L'Étoile, ..."): quantized (GGUF) with graphs / eager / torch attention, fp32, and the
# dequantized conversion (no quantization) in bf16.
export PYTHONPATH="$PWD:/tmp/site" PAGODA_CACHE=$PWD/out/pc PYTHONUNBUFFERED=1; mkdir -p /tmp/dm
cat out/g1/p out/g2/p out/g3/p > /tmp/dm/m.gguf; md5sum /tmp/dm/m.gguf
python - <<'PY'
from pagoda import LLM, SamplingParams
from pagoda.models.model_files import resolve_model
G = "/tmp/dm/m.gguf"
msg = [{"role": "user", "content": "What is the capital of France?"}]
sp = SamplingParams(temperature=0, max_tokens=16)
def run(tag, model=G, **kw):
    llm = LLM(model, max_model_len=1024, gpu_memory_utilization=0.2, **kw)
    o = llm.chat(msg, sp, use_tqdm=False)[0].outputs[0]
    print(tag, repr(o.text), o.token_ids[:8], flush=True)
    llm.shutdown()
run("quant bf16 graphs")
run("quant bf16 eager", enforce_eager=True)
run("quant fp32 graphs", dtype="float32")
run("quant bf16 torch-attn", attention_backend="torch", enforce_eager=True)
run("dense bf16", model=str(resolve_model(G)))
PY
