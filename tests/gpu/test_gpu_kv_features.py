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
    for e, g in zip(*runs, strict=True):
        assert e.outputs[0].token_ids == g.outputs[0].token_ids
        for de, dg in zip(e.outputs[0].logprobs, g.outputs[0].logprobs, strict=True):
            for t in de:
                assert abs(de[t].logprob - dg[t].logprob) < 1e-4


def test_mixed_step_graphs_match_eager(folder):
    """Chunked prefill with a small token budget puts several requests' prompt chunks beside running decodes in
    one step: those steps replay a mixed-step CUDA graph; greedy tokens and logprobs, a seeded sample and prompt
    logprobs equal the eager run's, fp32."""
    from pagoda import LLM, SamplingParams

    prompts = [PROMPT[: 20 + 29 * i] for i in range(8)]
    params = [SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=2) for _ in range(6)]
    params += [SamplingParams(temperature=0.9, seed=7, max_tokens=20, ignore_eos=True),
               SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, prompt_logprobs=1)]
    runs = []
    for eager in (True, False):
        llm = LLM(str(folder), dtype="float32", device="cuda", enforce_eager=eager, kv_cache_memory_bytes=2**26,
                  max_num_seqs=8, max_num_batched_tokens=96, enable_prefix_caching=False)
        runs.append(llm.generate(prompts, params, use_tqdm=False))
        mg = llm.llm_engine.core.runner.mixed_graphs
        assert (mg is None) if eager else mg.replays > 0
        del llm
        torch.cuda.empty_cache()
    for e, g in zip(*runs, strict=True):
        assert e.outputs[0].token_ids == g.outputs[0].token_ids
        for de, dg in zip(e.outputs[0].logprobs or [], g.outputs[0].logprobs or [], strict=True):
            for t in de:
                assert abs(de[t].logprob - dg[t].logprob) < 1e-4
        for pe, pg in zip(e.prompt_logprobs or [], g.prompt_logprobs or [], strict=True):
            assert (pe is None) == (pg is None)
            for t in pe or {}:
                assert abs(pe[t].logprob - pg[t].logprob) < 1e-4


def test_large_mixed_buckets_match_eager(folder):
    """A step budget above 512 tokens adds the large mixed-step buckets (mixed_graphs.mixed_buckets): steps of
    several long prompt chunks, alone and beside decodes, replay them; greedy tokens and logprobs equal the eager
    run's, fp32."""
    import random

    from pagoda import LLM, SamplingParams

    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(5, 300) for _ in range(100 + 33 * i)]} for i in range(8)]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=2)
    runs, buckets = [], set()
    for eager in (True, False):
        llm = LLM(str(folder), dtype="float32", device="cuda", enforce_eager=eager, kv_cache_memory_bytes=2**26,
                  max_num_seqs=8, max_num_batched_tokens=1024, enable_prefix_caching=False)
        mg = llm.llm_engine.core.runner.mixed_graphs
        if mg is not None:
            assert mg.buckets[-3:] == (512, 768, 1024)
            run = mg.run

            def recorded(*args, run=run, mg=mg, **kwargs):
                out = run(*args, **kwargs)
                buckets.add(mg.last_bucket)
                return out

            mg.run = recorded
        runs.append(llm.generate(prompts, params, use_tqdm=False))
        del llm
        torch.cuda.empty_cache()
    assert {768, 1024} <= buckets, buckets
    for e, g in zip(*runs, strict=True):
        assert e.outputs[0].token_ids == g.outputs[0].token_ids
        for de, dg in zip(e.outputs[0].logprobs, g.outputs[0].logprobs, strict=True):
            for t in de:
                assert abs(de[t].logprob - dg[t].logprob) < 1e-4


def test_async_scheduling_matches_synchronous_on_gpu(folder):
    """Async scheduling on the GPU (CUDA graphs, the next step's token taken from the previous
    step's device output, pinned staging in turn): the tokens and logprobs of greedy, seeded,
    n > 1 and penalised requests, with preemption, equal the synchronous run's, fp32."""
    from pagoda import LLM, SamplingParams

    prompts = [PROMPT[: 30 + 23 * i] for i in range(8)]
    params = [
        SamplingParams(temperature=0.0, max_tokens=40, logprobs=3),
        SamplingParams(temperature=0.9, seed=11, max_tokens=30),
        SamplingParams(temperature=0.8, seed=5, n=3, max_tokens=20),
        SamplingParams(temperature=0.0, max_tokens=25, repetition_penalty=1.2),
        SamplingParams(temperature=0.0, max_tokens=33),
        SamplingParams(temperature=1.0, seed=2, max_tokens=28, min_tokens=20),
        SamplingParams(temperature=0.0, max_tokens=35, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=1),
    ]
    got = {}
    for flag in (False, True):
        llm = LLM(str(folder), dtype="float32", device="cuda", async_scheduling=flag, num_gpu_blocks_override=20,
                  max_num_seqs=8)
        outs = llm.generate(prompts, params, use_tqdm=False)
        got[flag] = [[(c.token_ids, c.finish_reason, [sorted((t, round(lp.logprob, 3)) for t, lp in d.items())
                                                      for d in (c.logprobs or [])]) for c in o.outputs] for o in outs]
        core = llm.llm_engine.core
        assert (core.num_steps_ahead > 0) is flag
        assert core.scheduler.num_preemptions_total > 0
        assert not core.has_unfinished_requests() and core.kv.pool.num_used_blocks == 0
    assert got[True] == got[False]
