"""Features must not change outputs: the combinations test_feature_combinations.py leaves out.

That file's fuzzer drives one kind of feature per request and reads every request's final output only. Here:

* requests that each combine several features (n > 1, seeded sampling with top-k / top-p / min-p, logprobs and
  prompt logprobs, penalties, logit_bias, min_tokens, stop strings with and without the stop string in the output,
  stop tokens, bad_words, allowed_token_ids, structured outputs, truncation), read as they stream (DELTA and
  CUMULATIVE outputs, reassembled) as well as final-only, on engines that combine speculative decoding (n-gram,
  the model as its own draft, an EAGLE-3 head) with small token budgets, preemption, async scheduling, the host KV
  tier and the priority policy. Every finished request equals the same request run alone on a plain engine
  (tokens, text, finish and stop reason, logprobs), greedy ones always and seeded sampled ones without speculation
  (with speculation a seeded request's draws follow the verifies' draft counts: docs/design.md); no completion
  emits after its finish; ``check_integrity`` holds after every step and the engine ends idle and clean;
* a request id reused at once after an abort mid-prefill or mid-verify gets exactly its own output;
* with speculation and no budget or preemption cut, seeded sampled requests (n > 1) do not depend on what else
  is in the batch, and sampled tokens' logprobs equal the plain engine's prompt logprobs over the same text;
* ``reset_prefix_cache`` between steps, with the host tier, preemption and speculation, changes no output.
"""

from __future__ import annotations

import copy
import math
import random

import pytest
from test_feature_combinations import CHOICE, MAX_LEN, REGEX, SCHEMA, WORDS, References, _assert_clean, _assert_same
from test_spec_eagle import _write_head

from pagoda import LLM, SamplingParams
from pagoda.sampling_params import RequestOutputKind
from pagoda.structured_output.params import StructuredOutputsParams

SELF_DRAFT = "<the model itself>"
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 2}

CASES = {
    "ngram-budget10-preempt-seqs3-priority": dict(
        block_size=16, max_num_batched_tokens=10, num_gpu_blocks_override=11, max_num_seqs=3,
        scheduling_policy="priority", speculative_config=NGRAM),
    "draft-async-host-tier-preempt-block8": dict(
        block_size=8, max_num_batched_tokens=16, num_gpu_blocks_override=24, kv_offloading_size=0.01,
        async_scheduling=True, speculative_config={"model": SELF_DRAFT, "num_speculative_tokens": 2}),
    "eagle3-budget12-preempt-block4": dict(
        arch="llama8", block_size=4, max_num_batched_tokens=12, num_gpu_blocks_override=48, max_num_seqs=4,
        speculative_config={"method": "eagle3", "num_speculative_tokens": 3}),
    "async-budget7-preempt-no-spec": dict(
        block_size=4, max_num_batched_tokens=7, num_gpu_blocks_override=44, max_num_seqs=4, async_scheduling=True),
}


def _ref_text(refs: References, ids: list[int], mt: int):
    """The greedy continuation of ``ids`` alone (where stop strings and stop tokens are picked from)."""
    sp = SamplingParams(temperature=0, max_tokens=mt, ignore_eos=True)
    return refs.alone({"prompt_token_ids": ids}, sp).outputs[0]


def _mixed_request(rng: random.Random, pool: list[list[int]], refs: References,
                   sampled: bool) -> tuple[dict, SamplingParams]:
    """One request combining a random subset of the features; ``sampled``: seeded sampling, else greedy."""
    ids = list(rng.choice(pool))
    room = MAX_LEN - len(ids)
    mt = rng.randint(1, min(30, room))
    kw: dict = dict(max_tokens=mt, ignore_eos=rng.random() < 0.5, n=rng.choice([1, 1, 2, 3]))
    if sampled:
        kw.update(temperature=rng.choice([0.6, 1.0]), seed=rng.randint(0, 9999))
        kw.update(rng.choice([{}, {"top_k": 5}, {"top_p": 0.9}, {"min_p": 0.05}]))
    else:
        kw["temperature"] = 0.0
    if rng.random() < 0.4:
        kw["logprobs"] = rng.choice([0, 1, 4])
    if rng.random() < 0.3:
        kw["prompt_logprobs"] = rng.choice([0, 3])
    if rng.random() < 0.25:
        kw[rng.choice(["presence_penalty", "frequency_penalty", "repetition_penalty"])] = 1.2
    if rng.random() < 0.3:
        kw["logit_bias"] = {rng.randrange(390): rng.choice([5.0, -5.0, 100.0]) for _ in range(2)}
    if rng.random() < 0.25:
        kw["min_tokens"] = rng.randint(0, mt)
    if rng.random() < 0.35:
        text = _ref_text(refs, ids, mt).text
        a = rng.randint(0, max(0, len(text) - 1))
        kw["stop"] = [text[a:a + rng.randint(1, 4)] or "zzz", rng.choice(WORDS)]
        kw["include_stop_str_in_output"] = rng.random() < 0.5
    if rng.random() < 0.25:
        kw["stop_token_ids"] = [rng.choice(_ref_text(refs, ids, mt).token_ids)]
    if rng.random() < 0.15:
        kw["bad_words"] = [rng.choice(WORDS)]
    if rng.random() < 0.1:
        kw["allowed_token_ids"] = rng.sample(range(390), 40)
    elif rng.random() < 0.15:
        kw["structured_outputs"] = rng.choice([
            StructuredOutputsParams(regex=REGEX), StructuredOutputsParams(choice=CHOICE),
            StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)])
        kw["max_tokens"] = max(mt, min(40, room))
        kw["ignore_eos"] = False  # the grammar ends the output with EOS
        kw.pop("min_tokens", None)
        kw.pop("logit_bias", None)
    if rng.random() < 0.1:
        kw["truncate_prompt_tokens"] = rng.randint(1, len(ids))
    return {"prompt_token_ids": ids}, SamplingParams(**kw)


def _drive(llm, reqs, rng: random.Random, aborts: set[int], priority: bool):
    """Run ``reqs`` (some joining a few steps late, ``aborts`` aborted after a random number of steps), each read
    final-only, DELTA or CUMULATIVE. Returns ({index: final RequestOutput}, {index: {completion: reassembled}},
    {index: kind})."""
    eng = llm.llm_engine
    add_at = {i: rng.choice([0, 0, 0, rng.randint(1, 6)]) for i in range(len(reqs))}
    abort_at = {i: rng.randint(0, 25) for i in aborts}
    rids: dict[str, int] = {}
    done: dict[int, object] = {}
    streams: dict[int, dict[int, dict]] = {}
    kinds: dict[int, str] = {}
    step = 0
    while add_at or eng.has_unfinished_requests():
        for i in [i for i, s in add_at.items() if s <= step]:
            kinds[i] = kind = rng.choice(["final", "delta", "cumulative"])
            sp = reqs[i][1]
            if kind != "final":
                sp = copy.copy(sp)
                sp.output_kind = RequestOutputKind.DELTA if kind == "delta" else RequestOutputKind.CUMULATIVE
            rid = f"m{i}-{rng.randrange(10**6)}"
            eng.add_request(rid, reqs[i][0], sp, final_only=kind == "final",
                            priority=rng.randint(-2, 2) if priority else 0)
            rids[rid] = i
            streams[i] = {}
            del add_at[i]
        for i in [i for i, s in abort_at.items() if s == step and i not in add_at]:
            eng.abort_request(next(r for r, j in rids.items() if j == i))
            del abort_at[i]
        for out in eng.step():
            i = rids[out.request_id]
            for c in out.outputs:
                acc = streams[i].setdefault(c.index, {"text": "", "ids": [], "lps": [], "finish": None, "stop": None})
                if acc["finish"] is not None:  # only CUMULATIVE repeats a finished completion, unchanged
                    assert kinds[i] == "cumulative" and (c.token_ids, c.finish_reason) == (acc["ids"], acc["finish"]), \
                        f"request {i} ({kinds[i]}): completion {c.index} emitted after its finish: {c!r}"
                    continue
                if kinds[i] == "delta":
                    acc["text"] += c.text
                    acc["ids"] += c.token_ids
                    acc["lps"] += c.logprobs or []
                else:
                    acc.update(text=c.text, ids=list(c.token_ids), lps=list(c.logprobs or []))
                acc.update(finish=c.finish_reason, stop=c.stop_reason)
            if out.finished:
                done[i] = out
        eng.core.check_integrity()
        step += 1
        assert step < 5000, "no progress"
    return done, streams, kinds


def _assert_stream_same(stream: dict[int, dict], ref, what: str) -> None:
    assert sorted(stream) == [c.index for c in ref.outputs], what
    for c in ref.outputs:
        a = stream[c.index]
        w = f"{what}[{c.index}]"
        assert a["ids"] == c.token_ids, f"{w}: streamed {a['ids']} vs alone {c.token_ids}"
        assert (a["text"], a["finish"], a["stop"]) == (c.text, c.finish_reason, c.stop_reason), w
        if c.logprobs is not None:
            assert len(a["lps"]) == len(c.logprobs), w
            for x, y in zip(a["lps"], c.logprobs, strict=True):
                assert set(x) == set(y), w
                assert all(math.isclose(x[t].logprob, y[t].logprob, abs_tol=1e-4) for t in x), w


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_combined_features_streamed_and_final_equal_alone(tiny, case):
    cfg = dict(CASES[case])
    refs = References(tiny, cfg.pop("arch", "llama"), det=False)
    spec = cfg.get("speculative_config")
    if spec is not None and spec.get("model") == SELF_DRAFT:
        cfg["speculative_config"] = {**spec, "model": refs.path}
    elif spec is not None and spec["method"] == "eagle3":
        cfg["speculative_config"] = {**spec, "model": _write_head(tiny, "head-eagle3", "eagle3")}
    llm = LLM(refs.path, dtype="float32", max_model_len=MAX_LEN, **cfg)
    tok = llm.get_tokenizer()
    rng = random.Random(f"matrix-{case}")
    prefixes = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))) for _ in range(2)]
    pool = [tok.encode(f"{rng.choice(prefixes)} {' '.join(rng.choice(WORDS) for _ in range(rng.randint(0, 15)))}",
                       add_special_tokens=False)[:100] for _ in range(8)]
    compared = 0
    try:
        for batch in range(2):
            reqs = [_mixed_request(rng, pool, refs, sampled=i % 8 in (1, 4, 6)) for i in range(8)]
            aborts = {i for i in range(len(reqs)) if rng.random() < 0.15}
            done, streams, kinds = _drive(llm, reqs, rng, aborts, cfg.get("scheduling_policy") == "priority")
            for i, (prompt, sp) in enumerate(reqs):
                what = f"{case} batch {batch} request {i} ({kinds.get(i)}: {sp!r})"
                if i not in done:
                    assert i in aborts, f"{what}: never finished"
                    continue
                assert done[i].error is None, what
                for a in streams[i].values():
                    assert a["finish"] in ("stop", "length") and len(a["ids"]) <= sp.max_tokens, what
                if sp.temperature == 0 or (sp.seed is not None and spec is None):
                    ref = refs.alone(prompt, sp)
                    if kinds[i] == "final":
                        _assert_same(done[i], ref, what)
                    else:
                        _assert_stream_same(streams[i], ref, what)
                    compared += 1
            _assert_clean(llm)
        sched = llm.llm_engine.core.scheduler
        assert sched.num_preemptions_total > 0, "the case was meant to preempt"
        if spec is not None:
            assert sched.spec_stats.num_drafts > 0, "the case was meant to speculate"
    finally:
        llm.shutdown()
        refs.llm.shutdown()
    assert compared >= 6, f"{case}: only {compared} requests compared with the reference"


@pytest.mark.parametrize("kw", [
    {}, {"async_scheduling": True, "max_num_batched_tokens": 8},
    {"speculative_config": {"model": SELF_DRAFT, "num_speculative_tokens": 2}},
    {"speculative_config": {"method": "suffix", "num_speculative_tokens": 3}, "max_num_batched_tokens": 8},
], ids=["sync", "async-chunked", "draft", "suffix-chunked"])
def test_request_id_reused_right_after_an_abort(tiny, kw):
    """An id aborted mid-prefill or mid-decode (mid-verify) and added again at once with another prompt gets that
    prompt's own output: no state of the aborted request (runner rows, draft shadow, proposer arrays) leaks."""
    path = str(tiny.path("llama"))
    if "model" in kw.get("speculative_config", {}):
        kw = {**kw, "speculative_config": {**kw["speculative_config"], "model": path}}
    sp = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=1)
    first = {"prompt_token_ids": [7, 8, 9, 7, 8, 9, 7, 8, 9, 7, 8, 9, 7, 8, 9, 7, 8]}
    second = {"prompt_token_ids": list(range(100, 107))}
    plain = tiny.llm("llama", max_model_len=MAX_LEN, enable_prefix_caching=False)
    ref = plain.generate([second], sp, use_tqdm=False)[0]
    llm = LLM(path, dtype="float32", max_model_len=MAX_LEN, **kw)
    eng = llm.llm_engine
    try:
        for abort_after in range(5):
            eng.add_request("x", first, sp)
            for _ in range(abort_after):
                eng.step()
            eng.abort_request("x")
            eng.add_request("x", second, sp, final_only=True)
            outs = []
            while eng.has_unfinished_requests():
                outs += [o for o in eng.step() if o.finished]
                eng.core.check_integrity()
            assert [o.request_id for o in outs] == ["x"]
            _assert_same(outs[0], ref, f"{kw} aborted after {abort_after} steps")
            _assert_clean(llm)
    finally:
        llm.shutdown()


SPEC_METHODS = [NGRAM, {"model": SELF_DRAFT, "num_speculative_tokens": 3},
                {"method": "suffix", "num_speculative_tokens": 4}]


@pytest.mark.parametrize("spec", SPEC_METHODS, ids=["ngram", "draft", "suffix"])
def test_speculation_seeded_batch_independent_and_logprobs_exact(tiny, spec):
    """With speculation and no budget or preemption cut, a seeded sampled request's samples (n = 3) are the same
    alone and in a batch with greedy neighbours, run after run (warm prefix cache and suffix corpus); and every
    sampled token's logprob is the plain engine's prompt logprob of that token over the same text."""
    path = str(tiny.path("llama"))
    if spec.get("model") == SELF_DRAFT:
        spec = {**spec, "model": path}
    prompts = ["The quick brown fox jumps over the lazy dog . The quick brown fox", "a b a b a b a b",
               "Paris is the capital of France Berlin"]
    sp = SamplingParams(temperature=0.9, seed=11, n=3, max_tokens=20, ignore_eos=True, top_k=30, logprobs=1)
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    plain = tiny.llm("llama", max_model_len=MAX_LEN, enable_prefix_caching=False)
    llm = LLM(path, dtype="float32", max_model_len=MAX_LEN, speculative_config=spec)
    try:
        alone = [[c.token_ids for c in llm.generate([q], sp, use_tqdm=False)[0].outputs] for q in prompts]
        for _ in range(2):
            mixed = [x for q in prompts for x in (q, q + " and")]
            outs = llm.generate(mixed, [sp, greedy] * len(prompts), use_tqdm=False)
            assert [[c.token_ids for c in o.outputs] for o in outs[::2]] == alone
        assert llm.llm_engine.core.scheduler.spec_stats.num_drafts > 0
        for o in outs[::2]:
            for c in o.outputs:
                ids = o.prompt_token_ids + c.token_ids
                ref = plain.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                                     use_tqdm=False)[0].prompt_logprobs
                P = len(o.prompt_token_ids)
                for k, t in enumerate(c.token_ids):
                    assert math.isclose(c.logprobs[k][t].logprob, ref[P + k][t].logprob, abs_tol=1e-4), (spec, k)
        _assert_clean(llm)
    finally:
        llm.shutdown()


def test_reset_prefix_cache_between_steps_changes_nothing(tiny):
    """``reset_prefix_cache`` between steps (as the server's route may come) with the host tier, preemption,
    n > 1, prompt logprobs and n-gram speculation: every output equals the request alone."""
    rng = random.Random(5)
    base = list(range(20, 80))
    prompts = [{"prompt_token_ids": base[:rng.randint(20, 60)] + [rng.randrange(300) for _ in range(rng.randint(1, 8))]}
               for _ in range(8)]
    sps = [SamplingParams(temperature=0, max_tokens=rng.randint(5, 20), ignore_eos=True, n=rng.choice([1, 2]),
                          logprobs=1, prompt_logprobs=rng.choice([None, 1])) for _ in prompts]
    plain = tiny.llm("llama", max_model_len=MAX_LEN, enable_prefix_caching=False)
    refs = [plain.generate([q], s, use_tqdm=False)[0] for q, s in zip(prompts, sps, strict=True)]
    llm = LLM(str(tiny.path("llama")), dtype="float32", max_model_len=MAX_LEN, kv_offloading_size=0.01,
              num_gpu_blocks_override=30, block_size=4, max_num_batched_tokens=16, speculative_config=NGRAM)
    eng = llm.llm_engine
    try:
        for rnd in range(2):
            for i, (q, s) in enumerate(zip(prompts, sps, strict=True)):
                eng.add_request(f"r{rnd}-{i}", q, s, final_only=True)
            done = {}
            while eng.has_unfinished_requests():
                if rng.random() < 0.15:
                    eng.reset_prefix_cache()
                done.update({o.request_id: o for o in eng.step() if o.finished})
                eng.core.check_integrity()
            for i, ref in enumerate(refs):
                _assert_same(done[f"r{rnd}-{i}"], ref, f"round {rnd} request {i}")
            _assert_clean(llm)
        core = eng.core
        assert core.kv.host.num_loaded > 0 and core.scheduler.num_preemptions_total > 0
    finally:
        llm.shutdown()


def test_pipeline_scheduler_id_reused_while_the_aborted_one_is_in_flight():
    """Pipeline parallelism: "x" aborted while its step is in flight and added again at once. The new "x"'s own
    step in flight must keep it out of the next step when the old step's update comes (the in-flight mark is the
    new request's, not the aborted one's): else it is put into two steps in flight."""
    from pagoda.core.kv_cache_manager import KVCacheManager
    from pagoda.core.pipeline_scheduler import PipelineScheduler
    from pagoda.core.request import Request

    kv = KVCacheManager(num_blocks=17, block_size=4, enable_prefix_caching=False)
    s = PipelineScheduler(kv, max_num_seqs=4, max_num_batched_tokens=16, max_model_len=64)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    s.add_request(Request("x", list(range(1, 9)), params, set(), 8, 0.0))
    old = s.schedule()
    s.abort_requests(["x"])
    s.add_request(Request("x", list(range(20, 26)), params, set(), 8, 0.0))
    new = s.schedule()
    assert [r.request.request_id for r in new.scheduled] == ["x"]
    s.update_from_output(old, {"x": [42]})  # the aborted request's step: nothing of it counts
    assert s.schedule().is_empty, "the new x was scheduled again while its step is in flight"
    s.update_from_output(new, {"x": [43]})
    assert s.requests["x"].output_token_ids == [43]
    s.check_integrity()
