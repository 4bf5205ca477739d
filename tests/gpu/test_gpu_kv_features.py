"""KV-cache features on the GPU (skipped without CUDA): n > 1 block sharing with its
copy-on-write, and the host KV tier's device <-> pinned-host round trip, both fp32 with
the Triton backend and CUDA graphs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build_tiny_model  # noqa: E402

PROMPT = "PagedAttention stores the key value cache in fixed size blocks. Continuous batching lets " * 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("gpu_kv") / "llama", "llama")


def test_n_samples_share_blocks_and_equal_separate_requests_on_gpu(folder):
    from pagoda import LLM, SamplingParams

    llm = LLM(str(folder), dtype="float32", device="cuda", enable_prefix_caching=False, kv_cache_memory_bytes=2**26)
    T = dict(temperature=1.0, max_tokens=16, ignore_eos=True)
    grouped = llm.generate(PROMPT, SamplingParams(n=4, seed=3, **T), use_tqdm=False)[0]
    separate = [llm.generate(PROMPT, SamplingParams(seed=3 + i, **T), use_tqdm=False)[0] for i in range(4)]
    assert [c.token_ids for c in grouped.outputs] == [s.outputs[0].token_ids for s in separate]
    assert llm.llm_engine.core.kv.num_forked_blocks > 0


def test_host_tier_round_trip_on_gpu(folder):
    from pagoda import LLM, SamplingParams

    ref = LLM(str(folder), dtype="float32", device="cuda", enable_prefix_caching=False, kv_cache_memory_bytes=2**26)
    llm = LLM(str(folder), dtype="float32", device="cuda", num_gpu_blocks_override=16, max_num_seqs=6,
              kv_offloading_size=0.002)
    prompts = [PROMPT[: 40 + 17 * i] for i in range(6)]
    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in ref.generate(prompts, sp, use_tqdm=False)]
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    again = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    kv = llm.llm_engine.core.kv
    assert kv.host.num_stored > 0 and kv.host.num_loaded > 0
    assert got == want and again == want


def test_single_request_chunk_graphs_match_eager(folder):
    """One request alone (a short prompt, or a short suffix after a prefix-cache hit) replays a
    prefill-chunk CUDA graph; its tokens equal the eager run's, fp32."""
    from pagoda import LLM, SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2)
    prompts = [PROMPT, PROMPT + " and then some more words", "Hi", PROMPT[:50]]
    runs = []
    for eager in (True, False):
        llm = LLM(str(folder), dtype="float32", device="cuda", enforce_eager=eager, kv_cache_memory_bytes=2**26)
        assert (llm.llm_engine.core.runner.chunk_graphs is None) == eager
        outs = [llm.generate(p, sp, use_tqdm=False)[0] for p in prompts]  # one request at a time
        assert outs[1].num_cached_tokens > 0  # the second reuses the first's prefix: a short chunk
        runs.append(outs)
        del llm
        torch.cuda.empty_cache()
    for e, g in zip(*runs):
        assert e.outputs[0].token_ids == g.outputs[0].token_ids
        for de, dg in zip(e.outputs[0].logprobs, g.outputs[0].logprobs):
            for t in de:
                assert abs(de[t].logprob - dg[t].logprob) < 1e-4
