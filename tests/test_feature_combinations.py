"""Features must not change outputs, under combinations (a fixed-seed cut of a combination fuzzer run in
session 40; the seeds keep its names).

Each case builds one small engine on a tiny fp32 model (Llama; Mistral with an 8-key sliding window; Gemma 3 with
sliding and full layers; max_model_len 160) with a combination of prefix caching,
chunked prefill under a small token budget, a KV cache small enough to preempt, speculative decoding (n-gram,
suffix, the model as its own draft), few sequences, async scheduling, --deterministic, the host KV tier, the
priority policy and long_prefill_token_threshold; then runs seeded random batches through ``llm.llm_engine``
(requests joining late, some aborted mid-way) mixing greedy requests with logprobs / prompt_logprobs / n > 1,
seeded sampled n > 1, stop strings, stop tokens with min_tokens, max_tokens up to past the context, prompts that
nearly fill the context, structured outputs (JSON schema, regex, choice), truncate_prompt_tokens, cache_salt,
logit_bias / allowed_token_ids / bad_words / logprob_token_ids and penalties, over prompts sharing prefixes; a
batch is sometimes repeated (warm prefix cache and suffix corpus); and a beam search.

Every finished request must equal the same request run alone on a plain engine (prefix caching off, defaults;
``deterministic=True`` for a deterministic case): tokens, text, finish and stop reason, logprobs and prompt logprobs
within 1e-4 (ranks within 2: near-ties among low-probability tokens), for greedy requests and, without speculation,
seeded sampled ones (with speculation a seeded request's draws follow the verifies' draft counts, which a budget
or a preemption cuts, as in vLLM: there only the constraints are checked). Structured outputs are valid, lengths
and finish reasons consistent, and after each batch the engine is idle and clean (block pool counts, no KV block
held, no draft-model shadow left); ``check_integrity`` holds after every step.
"""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from pagoda import BeamSearchParams, SamplingParams
from pagoda.structured_output.params import StructuredOutputsParams

MAX_LEN = 160
WORDS = ("The quick brown fox jumps over the lazy dog . Paris is the capital of France Berlin Germany Large language "
         "models generate text one token at a time PagedAttention stores key value cache in fixed size blocks "
         "Continuous batching lets new requests join a running batch héllo wörld 日本語 🙂").split()
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "yy"]},
                                           "c": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
          "required": ["a", "b"], "additionalProperties": False}
REGEX = r"(cat|dog)-[0-9]{1,3}"
CHOICE = ["red", "green", "blue", "fox jumps"]
SPEC = "<draft: the model itself>"

CASES = {
    "suffix-budget9-preempt-seqs2-threshold": dict(
        max_num_batched_tokens=9, num_gpu_blocks_override=12, max_num_seqs=2, long_prefill_token_threshold=12,
        speculative_config={"method": "suffix", "num_speculative_tokens": 6}),
    "draft-budget16-preempt-async": dict(
        max_num_batched_tokens=16, num_gpu_blocks_override=12, max_num_seqs=4, async_scheduling=True,
        speculative_config={"model": SPEC, "num_speculative_tokens": 3}),
    "ngram-block2-budget6-deterministic": dict(
        block_size=2, max_num_batched_tokens=6, deterministic=True,
        speculative_config={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1,
                            "prompt_lookup_max": 2}),
    "budget8-preempt-seqs3-async-priority": dict(
        block_size=8, max_num_batched_tokens=8, num_gpu_blocks_override=22, max_num_seqs=3, async_scheduling=True,
        scheduling_policy="priority"),
    "unchunked-block32-host-tier-ngram": dict(
        block_size=32, enable_chunked_prefill=False, max_num_batched_tokens=160, kv_offloading_size=0.01,
        num_gpu_blocks_override=7,
        speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1,
                            "prompt_lookup_max": 3}),
    "noprefix-block4-budget3-ngram-async": dict(
        block_size=4, enable_prefix_caching=False, max_num_batched_tokens=3, max_num_seqs=4, async_scheduling=True,
        speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1,
                            "prompt_lookup_max": 1}),
    # sliding windows (8 keys; gemma3: sliding and full layers) under prefix caching, chunks and preemption
    "mistralsw-budget11-preempt-draft": dict(
        arch="mistralsw", block_size=8, max_num_batched_tokens=11, num_gpu_blocks_override=23,
        speculative_config={"model": SPEC, "num_speculative_tokens": 2}),
    "gemma3-budget13-preempt-suffix-async": dict(
        arch="gemma3", max_num_batched_tokens=13, num_gpu_blocks_override=12, max_num_seqs=3, async_scheduling=True,
        speculative_config={"method": "suffix", "num_speculative_tokens": 4}),
}


# ------------------------------------------------------------------------------------------ references
class References:
    """The plain engine of one tiny model (deterministic or not) and each request's output run alone there."""

    def __init__(self, tiny, arch: str, det: bool) -> None:
        from pagoda import LLM

        self.path = str(tiny.path(arch))
        self.llm = LLM(self.path, dtype="float32", max_model_len=MAX_LEN, enable_prefix_caching=False,
                       deterministic=det)
        self._outs: dict[tuple, object] = {}

    def alone(self, prompt, sp: SamplingParams):
        key = (json.dumps(prompt, sort_keys=True) if isinstance(prompt, dict) else prompt, repr(sp))
        if key not in self._outs:
            self._outs[key] = self.llm.generate([prompt], sp, use_tqdm=False)[0]
        return self._outs[key]


# ------------------------------------------------------------------------------------------ requests
def _prompt_pool(rng: random.Random, tok) -> list[list[int]]:
    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    prefixes = [text(rng.randint(10, 50)) for _ in range(3)]
    pool = []
    for _ in range(10):
        t = f"{rng.choice(prefixes)} {text(rng.randint(0, 20))}" if rng.random() < 0.5 else text(rng.randint(1, 60))
        pool.append(tok.encode(t, add_special_tokens=False)[:110] or [5])
    return pool


def _random_request(rng: random.Random, pool, tok, refs: References):
    """(prompt, params, kind) of one random request."""
    ids = list(rng.choice(pool))
    kind = rng.choice(["greedy", "greedy", "seeded", "stop", "stoptok", "maxlen", "struct", "trunc", "unseeded",
                       "penalty", "bias", "salt", "longprompt"])
    if kind == "longprompt":  # the context nearly full
        want = MAX_LEN - rng.choice([1, 2, 3, 5, 8, 16, 17])
        ids = (ids * (want // len(ids) + 1))[:want]
    prompt: str | dict = tok.decode(ids) if kind != "longprompt" and rng.random() < 0.3 else \
        {"prompt_token_ids": ids}
    room = MAX_LEN - (len(tok.encode(prompt, add_special_tokens=False)) if isinstance(prompt, str) else len(ids))
    lp = rng.choice([None, None, 0, 1, 3])
    plp = rng.choice([None, None, None, 0, 2])
    mt = rng.randint(1, min(40, room))
    if kind == "longprompt":
        sp = SamplingParams(temperature=0, max_tokens=rng.randint(1, room + 3), ignore_eos=rng.random() < 0.5,
                            logprobs=lp, prompt_logprobs=plp, n=rng.choice([1, 2]))
    elif kind == "greedy":
        sp = SamplingParams(temperature=0, max_tokens=mt, ignore_eos=rng.random() < 0.5, logprobs=lp,
                            prompt_logprobs=plp, n=rng.choice([1, 1, 2]))
    elif kind == "penalty":
        sp = SamplingParams(temperature=0, max_tokens=mt, logprobs=lp, **rng.choice([
            {"presence_penalty": 0.5}, {"frequency_penalty": 0.7}, {"repetition_penalty": 1.3},
            {"min_tokens": rng.randint(1, mt)}]))
    elif kind == "bias":
        extra = rng.choice([{"logit_bias": {rng.randrange(390): 5.0, rng.randrange(390): -3.0}},
                            {"allowed_token_ids": rng.sample(range(390), 30)},
                            {"bad_words": [rng.choice(WORDS)]},
                            {"logprob_token_ids": rng.sample(range(390), 3)}])
        sp = SamplingParams(temperature=0 if rng.random() < 0.7 else 0.8, seed=rng.randint(0, 99), max_tokens=mt,
                            logprobs=3 if "logprob_token_ids" in extra else lp, prompt_logprobs=plp,
                            ignore_eos=rng.random() < 0.5, **extra)
    elif kind == "salt":
        prompt = {"prompt_token_ids": ids, "cache_salt": rng.choice(["a", "b"])}
        room = MAX_LEN - len(ids)
        sp = SamplingParams(temperature=0, max_tokens=mt, logprobs=lp, prompt_logprobs=plp)
    elif kind == "seeded":
        sp = SamplingParams(temperature=rng.choice([0.7, 1.0]), top_p=rng.choice([1.0, 0.9]),
                            top_k=rng.choice([0, 20]), seed=rng.randint(0, 10_000), n=rng.choice([1, 2, 3]),
                            max_tokens=mt, logprobs=lp, ignore_eos=rng.random() < 0.5)
    elif kind == "unseeded":
        sp = SamplingParams(temperature=1.0, n=rng.choice([1, 2]), max_tokens=mt)
    elif kind in ("stop", "stoptok"):
        base = refs.alone(prompt, SamplingParams(temperature=0, max_tokens=mt, ignore_eos=True)).outputs[0]
        if kind == "stop":
            a = rng.randint(0, max(0, len(base.text) - 1))
            sp = SamplingParams(temperature=0, max_tokens=mt, stop=[base.text[a:a + rng.randint(1, 4)] or "zzz"],
                                logprobs=lp, include_stop_str_in_output=rng.random() < 0.5,
                                min_tokens=min(mt, rng.choice([0, 0, 3])))
        else:
            sp = SamplingParams(temperature=0, max_tokens=mt, stop_token_ids=[rng.choice(base.token_ids)],
                                logprobs=lp, min_tokens=min(mt, rng.choice([0, 0, 2, mt // 2])))
    elif kind == "maxlen":  # up to past the context: the offline engine ends there (finish_reason length)
        sp = SamplingParams(temperature=0, max_tokens=max(1, room + rng.randint(-4, 4)), ignore_eos=True,
                            logprobs=rng.choice([None, 1]))
    elif kind == "struct":
        so = rng.choice([StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True),
                         StructuredOutputsParams(regex=REGEX), StructuredOutputsParams(choice=CHOICE)])
        mt = rng.randint(20, min(60, room))
        sp = SamplingParams(temperature=0, max_tokens=mt, structured_outputs=so, logprobs=lp) \
            if rng.random() < 0.5 else \
            SamplingParams(temperature=1.0, seed=rng.randint(0, 999), n=rng.choice([1, 2]), max_tokens=mt,
                           structured_outputs=so)
    else:  # trunc
        sp = SamplingParams(temperature=0, max_tokens=mt, truncate_prompt_tokens=rng.randint(1, len(ids)),
                            logprobs=lp, prompt_logprobs=plp)
    return prompt, sp, kind


# ------------------------------------------------------------------------------------------ checks
def _close(a, b, what: str) -> None:
    assert (a is None) == (b is None), what
    if a is None:
        return
    assert set(a) == set(b), f"{what}: keys {sorted(a)} vs {sorted(b)}"
    for t in a:
        assert math.isclose(a[t].logprob, b[t].logprob, abs_tol=1e-4), f"{what}: {t}: {a[t].logprob} vs {b[t].logprob}"
        assert abs(a[t].rank - b[t].rank) <= 2, f"{what}: {t}: rank {a[t].rank} vs {b[t].rank}"


def _assert_same(o, r, what: str) -> None:
    assert o.prompt_token_ids == r.prompt_token_ids, what
    assert len(o.outputs) == len(r.outputs), what
    for i, (c, d) in enumerate(zip(o.outputs, r.outputs, strict=True)):
        w = f"{what}[{i}]"
        assert c.token_ids == d.token_ids, w
        assert (c.text, c.finish_reason, c.stop_reason) == (d.text, d.finish_reason, d.stop_reason), w
        assert (c.logprobs is None) == (d.logprobs is None), w
        if c.logprobs is not None:
            assert len(c.logprobs) == len(d.logprobs) == len(c.token_ids), w
            for k, (x, y) in enumerate(zip(c.logprobs, d.logprobs, strict=True)):
                _close(x, y, f"{w} logprobs {k}")
    assert (o.prompt_logprobs is None) == (r.prompt_logprobs is None), what
    if o.prompt_logprobs is not None:
        assert len(o.prompt_logprobs) == len(r.prompt_logprobs), what
        for k, (x, y) in enumerate(zip(o.prompt_logprobs, r.prompt_logprobs, strict=True)):
            _close(x, y, f"{what} prompt_logprobs {k}")


def _assert_valid(o, sp: SamplingParams, caching: bool, what: str) -> None:
    assert o.num_cached_tokens <= len(o.prompt_token_ids) and (caching or not o.num_cached_tokens), what
    for c in o.outputs:
        n, p = len(c.token_ids), len(o.prompt_token_ids)
        assert c.finish_reason in ("stop", "length") and n <= sp.max_tokens and p + n <= MAX_LEN, what
        if c.finish_reason == "length":
            assert n == sp.max_tokens or p + n == MAX_LEN, what
        elif sp.min_tokens:
            assert n >= sp.min_tokens, what
        if sp.logprobs is not None:
            assert c.logprobs is not None and len(c.logprobs) == n, what
        so = sp.structured_outputs
        if so is None or c.finish_reason != "stop":
            continue
        if so.json is not None:
            obj = json.loads(c.text)
            assert isinstance(obj, dict) and isinstance(obj.get("a"), int) and obj.get("b") in ("x", "yy") \
                and set(obj) <= {"a", "b", "c"}, f"{what}: {c.text!r}"
        elif so.regex is not None:
            assert re.fullmatch(REGEX, c.text), f"{what}: {c.text!r}"
        else:
            assert c.text in CHOICE, f"{what}: {c.text!r}"


def _assert_clean(llm) -> None:
    eng = llm.llm_engine
    core = eng.core
    core.check_integrity()
    assert not core.has_unfinished_requests() and not eng.has_unfinished_requests()
    assert core.kv.pool.num_used_blocks == 0
    assert core.kv.pool.num_free_blocks == core.kv.num_blocks - 1
    assert not core.kv.req_blocks
    proposer = core.spec.proposer if core.spec is not None else None
    assert not getattr(proposer, "shadows", None), "draft shadows of finished requests are still held"


def _drive(llm, reqs, rng: random.Random, aborts: set[int], late: set[int], priority: bool) -> dict:
    """Add ``reqs`` (some ``late``, a few steps in), abort ``aborts`` after a random number of steps, run to the end;
    {index: RequestOutput} of the requests that finished."""
    eng = llm.llm_engine
    add_at = {i: rng.randint(1, 6) if i in late else 0 for i in range(len(reqs))}
    abort_at = {i: rng.randint(0, 30) for i in aborts}
    rids: dict[str, int] = {}
    done: dict[int, object] = {}
    step = 0
    while add_at or eng.has_unfinished_requests():
        for i in [i for i, s in add_at.items() if s <= step]:
            rid = f"q{i}-{rng.randrange(10**6)}"
            eng.add_request(rid, reqs[i][0], reqs[i][1], final_only=True,
                            priority=rng.randint(-2, 2) if priority else 0)
            rids[rid] = i
            del add_at[i]
        for i in [i for i, s in abort_at.items() if s == step and i not in add_at]:
            eng.abort_request(next(r for r, j in rids.items() if j == i))
            del abort_at[i]
        for out in eng.step():
            if out.finished:
                done[rids[out.request_id]] = out
        eng.core.check_integrity()
        step += 1
        assert step < 5000, "no progress"
    return done


# ------------------------------------------------------------------------------------------ the test
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_features_do_not_change_outputs(tiny, case):
    from pagoda import LLM

    cfg = dict(CASES[case])
    det = bool(cfg.get("deterministic"))
    refs = References(tiny, cfg.pop("arch", "llama"), det)
    if "speculative_config" in cfg and cfg["speculative_config"].get("model") == SPEC:
        cfg["speculative_config"] = {**cfg["speculative_config"], "model": refs.path}
    spec = "speculative_config" in cfg
    caching = cfg.get("enable_prefix_caching", True)
    rng = random.Random(f"w40-{case}")
    llm = LLM(refs.path, dtype="float32", max_model_len=MAX_LEN, **cfg)
    tok = llm.get_tokenizer()
    pool = _prompt_pool(rng, tok)
    compared = 0
    try:
        reqs: list = []
        for batch in range(3):
            if not (batch and rng.random() < 0.3):  # else the same batch again: warm prefix cache, suffix corpus
                reqs = [_random_request(rng, pool, tok, refs) for _ in range(rng.randint(4, 12))]
            aborts = {i for i in range(len(reqs)) if rng.random() < 0.15}
            late = {i for i in range(len(reqs)) if rng.random() < 0.3}
            done = _drive(llm, [(p, s) for p, s, _ in reqs], rng, aborts, late,
                          cfg.get("scheduling_policy") == "priority")
            for i, (prompt, sp, kind) in enumerate(reqs):
                what = f"{case} batch {batch} request {i} ({kind}: {sp!r})"
                if i not in done:
                    assert i in aborts, f"{what}: never finished"
                    continue
                out = done[i]
                assert out.error is None, what
                _assert_valid(out, sp, caching, what)
                if sp.temperature == 0 or (sp.seed is not None and not spec):
                    _assert_same(out, refs.alone(prompt, sp), what)
                    compared += 1
            _assert_clean(llm)
        sched = llm.llm_engine.core.scheduler
        if spec:
            assert sched.spec_stats.num_drafts > 0, "the case was meant to speculate"
        if "num_gpu_blocks_override" in cfg:
            assert sched.num_preemptions_total > 0, "the case was meant to preempt"
        prompts = [{"prompt_token_ids": list(rng.choice(pool))} for _ in range(2)]
        bp = BeamSearchParams(beam_width=3, max_tokens=rng.randint(4, 10), ignore_eos=rng.random() < 0.5)
        ours, ref = llm.beam_search(prompts, bp), refs.llm.beam_search(prompts, bp)
        for a, b in zip(ours, ref, strict=True):
            assert [(s.tokens, s.finish_reason) for s in a.sequences] == \
                [(s.tokens, s.finish_reason) for s in b.sequences], f"{case}: beam search"
            assert all(math.isclose(s.cum_logprob, t.cum_logprob, abs_tol=1e-3)
                       for s, t in zip(a.sequences, b.sequences, strict=True)), f"{case}: beam search"
        _assert_clean(llm)
    finally:
        llm.shutdown()
        refs.llm.shutdown()
    assert compared >= 10, f"{case}: only {compared} requests compared with the reference"
