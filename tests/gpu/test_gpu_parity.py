"""GPU checks (skipped without CUDA): tiny models on the GPU against HF on the GPU.

fp32 with the Triton backend: greedy tokens equal HF's (or the guide's top-5 rule);
bf16: the top-5 rule; CUDA graphs on and off give identical tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build_tiny_model  # noqa: E402

PROMPTS = [
    "The quick brown fox",
    "Paris is",
    "héllo wörld",
    "Large language models generate text one token at a time.",
    "Continuous",
    "PagedAttention stores the key value cache in fixed size blocks. Continuous batching lets",
    "B",
    "The capital of Germany is Berlin and the capital of France is",
]


def hf_greedy_with_top5(folder: Path, prompts: list[str], n: int, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda().eval()
    res = []
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids.cuda()
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True)
        toks = out.sequences[0, ids.shape[1]:].tolist()
        top5 = [s[0].topk(5).indices.tolist() for s in out.scores]
        res.append((toks, top5))
    return res


def check_top5(ours: list[int], theirs: list[int], top5: list[list[int]]) -> None:
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a != b:
            assert a in top5[i], f"diverged at {i}: ours {a} not in HF top-5 {top5[i]}"
            return


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_matches_hf(tmp_path, arch, dtype):
    from pagoda import LLM, SamplingParams

    folder = build_tiny_model(tmp_path / arch, arch)
    tdtype = getattr(torch, dtype)
    ref = hf_greedy_with_top5(folder, PROMPTS, 32, tdtype)
    sp = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outs = {}
    for eager in (True, False):
        llm = LLM(str(folder), dtype=dtype, device="cuda", enforce_eager=eager, kv_cache_memory_bytes=256 * 2**20)
        assert llm.llm_engine.core.runner.backend.name == "triton"
        outs[eager] = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        del llm
        torch.cuda.empty_cache()
    assert outs[True] == outs[False], "CUDA graphs changed the output"
    exact = 0
    for ours, (theirs, top5) in zip(outs[True], ref, strict=True):
        check_top5(ours, theirs, top5)
        exact += ours == theirs
    if dtype == "float32":
        assert exact >= len(PROMPTS) - 1, f"only {exact}/{len(PROMPTS)} fp32 sequences token-exact"
