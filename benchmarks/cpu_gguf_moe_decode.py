"""CPU decode with a Qwen3-MoE GGUF (Q4_K gate/up, Q6_K down experts): per-expert IntWeights vs the stacked form.

Usage (repo root): ``python benchmarks/cpu_gguf_moe_decode.py [bfloat16|float32]``. Writes a random 2-layer
Qwen3-MoE GGUF (hidden 1024, 32 experts of 768, top 4; tests/test_gguf_qwen.py's writer) and times 48 greedy
tokens at batch 1, alternating the two expert forms twice (``QuantizedExperts.cpu_per_expert``).
"""

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("PAGODA_CACHE", tempfile.mkdtemp())


def main() -> None:
    import test_gguf_qwen as t

    from pagoda import LLM, SamplingParams
    from pagoda.layers.fused_moe.quantized import QuantizedExperts

    t.HIDDEN, t.INTER = 1024, 768
    cls, arch, fields, experts, other = t.CASES["qwen3moe"]
    shape = {"num_experts": 32, "num_experts_per_tok": 4, "moe_intermediate_size": 768, "head_dim": 64}
    t.CASES["qwen3moe"] = (cls, arch, {**fields, **shape}, experts, other)
    path = t._write(Path(tempfile.mkdtemp()) / "m.gguf", "qwen3moe")
    dtype = sys.argv[1] if len(sys.argv) > 1 else "bfloat16"
    sp = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    for per_expert in (False, True, False, True):
        QuantizedExperts.cpu_per_expert = per_expert
        llm = LLM(str(path), device="cpu", dtype=dtype, max_model_len=128, kv_cache_memory_bytes=1 << 24)
        llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                     use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}], sp, use_tqdm=False)
        dt = time.perf_counter() - t0
        print(f"per_expert={per_expert}: {48 / dt:.1f} tok/s, tokens {out[0].outputs[0].token_ids[:8]}", flush=True)
        llm.shutdown()


if __name__ == "__main__":
    main()
