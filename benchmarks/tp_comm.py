"""Per-step communication of tensor parallelism on this machine (CPU, gloo): how much of a step rank 0 spends in
all-reduce and in the vocabulary-parallel LM head's logits gather, TP=2 against TP=1 on the same requests.

    PYTHONPATH=. python benchmarks/tp_comm.py [--layers 16 --hidden 512 --batch 8 --new 64]

A Llama-shaped model with random weights (--load-format dummy, fp32) and the tiny test tokenizer; prompts are
random token ids. Measured only: on 2 shared cores TP=2 is a correctness path, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def write_model(folder: Path, layers: int, hidden: int) -> Path:
    from tiny_models import build_tokenizer

    tok = build_tokenizer(folder)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": len(tok),
           "hidden_size": hidden, "intermediate_size": 3 * hidden, "num_hidden_layers": layers,
           "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 128, "max_position_embeddings": 1024,
           "rms_norm_eps": 1e-6, "torch_dtype": "float32", "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def timed_generate(llm: Any, prompts: list[list[int]], params: Any, counted: str) -> tuple[float, int]:
    """Wall seconds of generating ``prompts`` and how many times the engine core's method ``counted`` ran
    during it (its steps). Counter snapshots the caller takes just before and read just after cover the same run."""
    core = llm.llm_engine.core
    calls = 0
    orig = getattr(core, counted)

    def count(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return orig(*args)

    setattr(core, counted, count)
    t0 = time.perf_counter()
    llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return time.perf_counter() - t0, calls


def run(model: Path, tp: int, prompts: list[list[int]], new: int) -> dict[str, float]:
    from pagoda import LLM, SamplingParams

    llm = LLM(str(model), dtype="float32", load_format="dummy", device="cpu", tensor_parallel_size=tp,
              enable_prefix_caching=False)
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:1]], params, use_tqdm=False)  # warm-up
    group = llm.llm_engine.core.runner.tp
    st = group.stats if group else None
    c0, s0, g0, gs0 = (st.calls, st.seconds, st.gather_calls, st.gather_seconds) if st else (0, 0, 0, 0.0)
    wall, steps0 = timed_generate(llm, prompts, params, "step")
    calls, secs = (st.calls - c0, st.seconds - s0) if st else (0, 0.0)
    gcalls, gsecs = (st.gather_calls - g0, st.gather_seconds - gs0) if st else (0, 0.0)
    llm.llm_engine.shutdown()
    return {"tp": tp, "steps": steps0, "wall_s": wall, "step_ms": 1e3 * wall / steps0,
            "allreduce_calls_per_step": calls / steps0, "allreduce_ms_per_step": 1e3 * secs / steps0,
            "allreduce_share": secs / wall, "gather_calls_per_step": gcalls / steps0,
            "gather_ms_per_step": 1e3 * gsecs / steps0, "comm_share": (secs + gsecs) / wall}


def workload_parser() -> argparse.ArgumentParser:
    """The model shape and requests both communication benches take."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    return ap


def main() -> None:
    a = workload_parser().parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        model = write_model(Path(d), a.layers, a.hidden)
        prompts = [[rng.randrange(10, 300) for _ in range(a.prompt_len)] for _ in range(a.batch)]
        for tp in (1, 2):
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in run(model, tp, prompts, a.new).items()}), flush=True)


if __name__ == "__main__":
    main()
