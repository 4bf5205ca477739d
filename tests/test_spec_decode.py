"""Speculative decoding (n-gram prompt lookup) must change no output (GUIDE section 4).

* Config: unknown keys, k <= 0, unknown methods, a head without its checkpoint, a bad lookup range, a draft longer
  than the context: start-up errors naming the key.
* Scheduler with no model: a verify is one chunk (proposals included), rejected positions are
  rolled back and never registered in the prefix cache; preemption drops the proposals.
* Rejection sampler: greedy accepts exactly the argmax prefix; sampled, the emitted tokens follow
  the target distribution (total variation on a 4-token vocabulary, fixed seed, 40k draws).
* Engine (tiny Llama, fp32, CPU): greedy tokens and logprobs identical with and without
  speculation under chunked prefill with a small budget, prefix caching, a KV cache small enough
  to preempt, and async scheduling; stop strings, stop tokens and max_tokens end where they do
  without it; a seeded request repeats; n > 1 works; the spec_decode counters advance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from engine_checks import PROMPTS, assert_engine_clean, greedy, token_ids

from pagoda.attention.torch_ref import TorchAttentionBackend
from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.request import Request
from pagoda.core.scheduler import Scheduler
from pagoda.layers.rejection_sampler import greedy_verify, rejection_sample
from pagoda.sampling_params import SamplingParams
from pagoda.spec_decode.config import SpeculativeConfig
from pagoda.spec_decode.ngram import NgramProposer
from pagoda.spec_decode.suffix import SuffixProposer

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
SUFFIX = {"method": "suffix", "num_speculative_tokens": 6, "suffix_decoding_max_spec_factor": 2.0,
          "suffix_decoding_max_cached_requests": 0}
REPEAT = [" ".join(["one two three four five six seven"] * 5), *PROMPTS[:6]]


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("cfg, key", [
    ({"method": "ngram", "num_speculative_tokens": 3, "bogus": 1}, "bogus"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
    ({"method": "ngram"}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2},
     "prompt_lookup_min"),
    ({"method": "eagle3", "num_speculative_tokens": 2}, "model"),  # a head needs its checkpoint
    ({"method": "medusa", "num_speculative_tokens": 2}, "method"),
    ({"method": "draft_model", "num_speculative_tokens": 2}, "model"),
    ({"model": "d", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 2}, "draft_tensor_parallel_size"),
    ({"method": "suffix", "suffix_decoding_max_cached_requests": -1}, "suffix_decoding_max_cached_requests"),
    ({"method": "suffix", "suffix_decoding_max_tree_depth": 0}, "suffix_decoding_max_tree_depth"),
    ({"method": "suffix", "suffix_decoding_max_spec_factor": 0}, "suffix_decoding_max_spec_factor"),
    ({"method": "suffix", "suffix_decoding_min_token_prob": 1.5}, "suffix_decoding_min_token_prob"),
    ({"method": "suffix", "num_speculative_tokens": -1}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 2, "suffix_decoding_max_tree_depth": 8},
     "suffix_decoding_max_tree_depth"),  # a suffix key on another method
    ({"method": "suffix", "prompt_lookup_max": 4}, "prompt_lookup_max"),  # an n-gram key on another method
    # bools and other types where a number or a string belongs; keys that would be ignored
    ({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": True}, "disable_by_batch_size"),
    ({"model": "d", "num_speculative_tokens": 2, "draft_tensor_parallel_size": True}, "draft_tensor_parallel_size"),
    ({"model": "d", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 1.0}, "draft_tensor_parallel_size"),
    ({"model": "d", "num_speculative_tokens": 2, "max_model_len": True}, "max_model_len"),
    ({"model": "d", "num_speculative_tokens": 2, "quantization": 5}, "quantization"),
    ({"model": "d", "num_speculative_tokens": 2, "revision": ["x"]}, "revision"),
    ({"method": "ngram", "num_speculative_tokens": 2, "revision": "main"}, "revision"),
    ({"model": "d", "num_speculative_tokens": 2, "enforce_eager": False}, "enforce_eager"),
    ({"model": "d", "num_speculative_tokens": 2, "enforce_eager": "yes please"}, "enforce_eager"),
])
def test_bad_config_names_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        SpeculativeConfig.from_dict(cfg)


def test_config_defaults_and_vllm_spellings():
    c = SpeculativeConfig.from_dict({"model": "[ngram]", "num_speculative_tokens": 3})
    assert (c.method, c.prompt_lookup_min, c.prompt_lookup_max) == ("ngram", 2, 5)
    assert SpeculativeConfig.from_dict({"model": "/d", "num_speculative_tokens": 1}).method == "draft_model"
    c = SpeculativeConfig.from_dict({"method": "suffix"})
    assert (c.num_speculative_tokens, c.suffix_max_depth, c.suffix_max_spec_factor, c.suffix_min_token_prob,
            c.suffix_max_cached_requests) == (24, 24, 1.0, 0.1, 10000)  # vLLM's; the draft cap defaults to the depth


def test_draft_longer_than_context_is_refused(tiny):
    from pagoda.config import EngineArgs

    args = EngineArgs(str(tiny.path("llama")), max_model_len=8, dtype="float32",
                      speculative_config={"method": "ngram", "num_speculative_tokens": 8})
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        args.create_config()


# ------------------------------------------------------------------ n-gram
def test_ngram_longest_match_most_recent():
    p = NgramProposer(1, 3)
    assert p.propose_one([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 2) == [7, 5]  # the latest earlier "1 2 3"
    assert p.propose_one([4, 5, 6, 4, 5], 3) == [6, 4, 5]
    assert p.propose_one([1, 2, 3, 4], 3) == []  # nothing recurs
    assert NgramProposer(2, 3).propose_one([7, 8, 1, 8], 2) == []  # only a 1-gram recurs: below min
    assert p.propose_one([3, 1, 2, 3], 5) == [1, 2, 3]  # the continuation runs up to the end


def _window_scan(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """The definition, written as a scan of every window for each n (the proposer's first implementation)."""
    L = len(tokens)
    if k <= 0 or L < min_n + 1:
        return []
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        hits = [s for s in range(L - n) if tokens[s:s + n] == tokens[L - n:]]
        if hits:
            return tokens[hits[-1] + n: hits[-1] + n + k]
    return []


@pytest.mark.parametrize("min_n,max_n", [(1, 1), (1, 3), (2, 5), (3, 8), (2, 2)])
def test_ngram_search_equals_the_window_scan(min_n, max_n):
    """The candidate-end search gives what scanning every window gives, on random token lists with small
    vocabularies (many partial matches, overlapping repeats, matches at the very start)."""
    import random

    rng = random.Random(min_n * 100 + max_n)
    p = NgramProposer(min_n, max_n)
    for _ in range(400):
        vocab = rng.choice([2, 3, 5, 50])
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        if tokens and rng.random() < 0.3:  # a copied span at the end
            a = rng.randrange(len(tokens))
            tokens += tokens[a:a + rng.randrange(1, 8)]
        k = rng.randrange(0, 6)
        assert p.propose_one(tokens, k) == _window_scan(tokens, k, min_n, max_n), (tokens, k)


# ------------------------------------------------------------- suffix decoding
def test_suffix_follows_the_most_frequent_continuation_as_far_as_the_match_earns():
    p = SuffixProposer(max_depth=24, max_spec_factor=1.0, min_token_prob=0.1)
    # "5 6" recurs (n = 2): at most 2 tokens; 7 follows twice, 8 once -> 7 (p 2/3), then 9 after both 7s (p 2/3);
    # at factor 2 (4 tokens) a tie, 5 or 4 (the most recent: 4, p 1/3), then the one occurrence left
    assert p.propose_one([5, 6, 7, 9, 5, 6, 8, 1, 5, 6, 7, 9, 4, 5, 6], 8) == [7, 9]
    assert SuffixProposer(24, 2.0, 0.1).propose_one([5, 6, 7, 9, 5, 6, 8, 1, 5, 6, 7, 9, 4, 5, 6], 8) == [7, 9, 4, 5]
    assert p.propose_one([1, 2, 3], 4) == []  # the last token never occurred before
    assert p.propose_one([3, 1, 2, 3], 5) == [1]  # a 1-token match earns one token at factor 1
    # a tie (1 once, 2 once after "3"): the most recent occurrence's token
    assert p.propose_one([3, 1, 3, 2, 3], 1) == [2]
    # the running product of shares stops the draft: 2 (a tie with 1, 2/4), then 6 (a tie with 5, 1/2): 0.25 < 0.3
    toks = [3, 1, 7, 3, 1, 8, 3, 2, 5, 3, 2, 6, 3]
    assert SuffixProposer(24, 4.0, 0.3).propose_one(toks, 4) == [2]
    assert SuffixProposer(24, 4.0, 0.2).propose_one(toks, 4) == [2, 6, 3]  # then one occurrence: copied to the end
    assert SuffixProposer(24, 0.5, 0.1).propose_one([3, 1, 2, 3], 5) == []  # 0.5 x 1 rounds down to no draft


def _suffix_reference(tokens: list[int], k: int, depth: int, factor: float, min_prob: float) -> list[int]:
    """The definition, by counting every occurrence directly (pagoda.spec_decode.suffix's docstring)."""
    L = len(tokens)
    if k <= 0 or L < 2:
        return []
    best, occ = 0, []
    for e in range(L - 1):  # e: where an earlier copy of the suffix ends
        n = 0
        while n < min(depth, e + 1) and tokens[e - n] == tokens[L - 1 - n]:
            n += 1
        if n and n > best:
            best, occ = n, [e]
        elif n and n == best:
            occ.append(e)
    if not best:
        return []
    cap = min(k, int(factor * best + 1e-9))
    out: list[int] = []
    prob = 1.0
    while len(out) < cap:
        conts = [(e, tokens[e + 1 + len(out)]) for e in occ if e + 1 + len(out) < L]
        if not conts:
            break
        counts: dict[int, int] = {}
        for _, t in conts:
            counts[t] = counts.get(t, 0) + 1
        top = max(counts.values())
        prob *= top / len(conts)
        if prob < min_prob:
            break
        tok = [t for _, t in conts if counts[t] == top][-1]  # the most recent occurrence among the tied
        out.append(tok)
        occ = [e for e, t in conts if t == tok]
    return out


def test_suffix_corpus_drafts_from_earlier_outputs_and_drops_the_oldest():
    """SuffixCorpus: a finished request's output continues a later request whose own tokens do not hold the match;
    the better-scored source proposes; past max_requests the oldest output stops being a source (and the buffer is
    compacted without changing what is kept)."""
    from pagoda.spec_decode.suffix import SuffixCorpus

    corpus = SuffixCorpus(max_requests=2)
    corpus.add([7, 8, 9, 10, 11, 12])
    p = SuffixProposer(24, 2.0, 0.1, corpus)
    assert p.propose_one([1, 2, 7, 8], 4) == [9, 10, 11, 12]  # "7 8" (n = 2) from the corpus: up to 4 tokens
    assert SuffixProposer(24, 2.0, 0.1).propose_one([1, 2, 7, 8], 4) == []  # without it: nothing recurs
    assert p.propose_one([5, 6, 5, 6, 8], 3) == [9, 10]  # one token of match: 2 tokens at factor 2
    # the request's own repetition scores higher than the corpus's one-token match
    assert p.propose_one([8, 3, 4, 8, 3, 4, 8], 4) == [3, 4, 8]  # (up to its end: score 3, the corpus 2)
    corpus.add([20, 21, 22])
    corpus.add([30, 31, 32])  # the first output is dropped
    assert corpus.num_requests == 2 and p.propose_one([1, 2, 7, 8], 4) == []
    assert p.propose_one([30, 31], 2) == [32]  # a continuation stops at the separator
    for i in range(3000):  # enough outputs that the dropped ones are re-based out of the buffer many times
        corpus.add([40 + i % 7, 50, 60])
    assert corpus.held < 8192 and corpus.indexed == 6 and p.propose_one([46, 50], 2) == [60]
    small = SuffixCorpus(max_requests=100)
    small.MAX_TOKENS = 10  # the token bound drops outputs too
    small.add([1, 2, 3, 4, 5, 6])
    small.add([7, 8, 9, 10, 11])
    assert small.num_requests == 1 and SuffixProposer(24, 2.0, 0.1, small).propose_one([1, 2], 2) == []


@pytest.mark.parametrize("short_output", [2048, 4], ids=["token-by-token", "by-distinct-token"])
def test_suffix_corpus_after_drops_drafts_as_a_corpus_of_the_kept_outputs_alone(monkeypatch, short_output):
    """Dropping outputs (by count and by tokens) and re-basing the buffer change nothing a draft sees: after every
    add the corpus drafts what a fresh corpus of just the kept outputs drafts, and its index holds only their
    tokens (outputs indexed either way)."""
    import random

    from pagoda.spec_decode import suffix
    from pagoda.spec_decode.suffix import SuffixCorpus

    monkeypatch.setattr(suffix, "_SHORT_OUTPUT", short_output)

    rng = random.Random(5)
    corpus = SuffixCorpus(max_requests=6)
    corpus.MAX_TOKENS = 120
    kept: list[list[int]] = []
    for step in range(700):
        out = [rng.randrange(6) for _ in range(rng.randrange(1, 40))]
        corpus.add(out)
        kept.append(out[-corpus.MAX_TOKENS:])
        while len(kept) > 6 or sum(map(len, kept)) > 120:
            kept.pop(0)
        assert corpus.num_requests == len(kept) and corpus.indexed == sum(map(len, kept))
        fresh = SuffixCorpus(max_requests=100)
        for o in kept:
            fresh.add(o)
        for _ in range(3):
            tail = np.asarray([rng.randrange(6) for _ in range(rng.randrange(1, 10))], dtype=np.int64)
            assert corpus.draft(tail, 6, 2.0, 0.2) == fresh.draft(tail, 6, 2.0, 0.2), step
    assert corpus.held < 4096 + 130  # re-based: the buffer does not grow with the outputs ever added


@pytest.mark.parametrize("depth,factor,min_prob", [(24, 1.0, 0.1), (3, 2.0, 0.1), (24, 1.5, 0.4), (8, 0.5, 0.0)])
def test_suffix_equals_the_direct_count(depth, factor, min_prob):
    import random

    rng = random.Random(depth * 7 + int(factor * 10))
    p = SuffixProposer(depth, factor, min_prob)
    for _ in range(400):
        vocab = rng.choice([2, 3, 5, 50])
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        if tokens and rng.random() < 0.3:
            a = rng.randrange(len(tokens))
            tokens += tokens[a:a + rng.randrange(1, 8)]
        k = rng.randrange(0, 12)
        assert p.propose_one(tokens, k) == _suffix_reference(tokens, k, depth, factor, min_prob), (tokens, k)


# ------------------------------------------------------------- scheduler
def _req(rid: str, prompt: list[int], max_tokens: int = 20) -> Request:
    return Request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens), {2}, max_tokens)


def test_verify_chunk_rollback_and_prefix_registration():
    kv = KVCacheManager(64, 4, enable_prefix_caching=True)
    s = Scheduler(kv, 8, 64, 256)
    r = _req("a", [11, 12, 13, 14, 15, 16])
    s.add_request(r)
    out = s.schedule()
    s.update_from_output(out, {"a": [20]})
    assert r.num_computed_tokens == 6 and r.num_tokens == 7
    r.spec_token_ids = [21, 22, 23]
    out = s.schedule()
    (x,) = out.scheduled
    assert (x.start, x.num_new_tokens, x.num_sample_rows, x.spec_token_ids) == (6, 4, 4, [21, 22, 23])
    assert kv.req_num_hashed["a"] == 1  # 7 known tokens: one full block of 4; no proposal is hashed
    assert len(kv.get_block_ids("a")) == 3  # room for 10 tokens
    sampled = {"a": [21, 30]}  # the first proposal accepted, the second rejected (30 instead)
    s.update_from_output(out, sampled)
    assert r.all_token_ids[6:] == [20, 21, 30] and r.num_computed_tokens == 8 and r.spec_token_ids == []
    assert s.spec_stats.num_drafts == 1 and s.spec_stats.num_accepted_tokens == 1
    assert s.spec_stats.accepted_per_pos == [1, 0, 0]
    s.check_integrity()
    # A budget too small for every proposal verifies the first ones only.
    s.max_num_batched_tokens = 2
    r.spec_token_ids = [31, 32, 33]
    (x,) = s.schedule().scheduled
    assert (x.num_new_tokens, x.spec_token_ids, x.num_sample_rows) == (2, [31], 2)


def test_preemption_drops_proposals():
    kv = KVCacheManager(5, 4)
    s = Scheduler(kv, 8, 64, 256)
    a, b = _req("a", list(range(10, 17)), 8), _req("b", list(range(30, 37)), 8)
    s.add_request(a)
    s.add_request(b)
    out = s.schedule()
    s.update_from_output(out, {"a": [20], "b": [40]})
    a.spec_token_ids, b.spec_token_ids = [21, 22, 23], [41, 42, 43]
    out = s.schedule()  # 4 blocks: a takes 3 (11 tokens); b cannot grow and is preempted
    assert out.preempted_ids == ["b"] and b.spec_token_ids == [] and b.num_computed_tokens == 0
    s.update_from_output(out, {"a": [99]})
    assert a.num_computed_tokens == 8
    s.check_integrity()


# ------------------------------------------------------- rejection sampler
def _row_reqs(n: int, **sp) -> list[Request]:
    return [Request(f"r{i}", [1], SamplingParams(max_tokens=8, **sp), set(), 8) for i in range(n)]


def test_greedy_verify_is_the_argmax_prefix():
    torch.manual_seed(0)
    logits = torch.randn(7, 11)
    am = logits.argmax(-1).tolist()
    reqs = _row_reqs(3, temperature=0.0)
    drafts = [[am[0], am[1], (am[2] + 1) % 11], [(am[4] + 1) % 11], []]
    ds = rejection_sample(logits.clone(), reqs, [4, 2, 1], drafts)
    toks = ds.finish().token_ids
    assert toks == [am[0], am[1], am[2], -1, am[4], -1, am[6]]


def test_greedy_fast_path_and_mixed_batches_emit_the_same_prefixes():
    """greedy_verify (from the argmax alone) gives the rejection sampler's greedy tokens; in a batch mixing
    greedy and sampled requests, each request's rows stop at its own first rejection."""
    torch.manual_seed(0)
    logits = torch.randn(7, 11)
    am = logits.argmax(-1).tolist()
    drafts = [[am[0], am[1], (am[2] + 1) % 11], [(am[4] + 1) % 11], []]
    ref = rejection_sample(logits.clone(), _row_reqs(3, temperature=0.0), [4, 2, 1], drafts).finish().token_ids
    assert greedy_verify(logits.argmax(-1), [4, 2, 1], drafts).finish().token_ids == ref
    peaked = torch.full((3, 11), -1e4)
    peaked[:, 3] = 0.0  # the sampled request's target puts all its mass on token 3
    mixed = torch.cat([logits[:4], peaked])
    reqs = _row_reqs(1, temperature=0.0) + _row_reqs(1, temperature=1.0, seed=3)
    toks = rejection_sample(mixed, reqs, [4, 3], [drafts[0], [3, 5]]).finish().token_ids
    assert toks == [am[0], am[1], am[2], -1, 3, 3, -1]  # sampled: 3 accepted, 5 rejected, 3 drawn instead


def test_rejection_sampling_preserves_the_target_distribution():
    """Point-mass drafts (n-gram): emitted tokens follow the target's p at each position."""
    torch.manual_seed(1234)
    N = 20000
    p0 = torch.tensor([0.5, 0.3, 0.15, 0.05])
    p1 = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = torch.stack([p0.log(), p1.log()]).repeat(N, 1)
    reqs = _row_reqs(N, temperature=1.0)
    toks = torch.tensor(rejection_sample(logits, reqs, [2] * N, [[1]] * N).finish().token_ids).view(N, 2)
    first = torch.bincount(toks[:, 0], minlength=4).float() / N
    assert 0.5 * (first - p0).abs().sum() < 0.015, first
    acc = toks[:, 0] == 1  # the draft was accepted: the second token is the bonus, drawn from p1
    second = torch.bincount(toks[acc, 1], minlength=4).float() / acc.sum()
    assert 0.5 * (second - p1).abs().sum() < 0.03, second
    assert (toks[~acc, 1] == -1).all()
    assert abs(acc.float().mean().item() - 0.3) < 0.015  # accepted with probability p0(draft)


def test_seeded_rows_repeat():
    logits = torch.randn(3, 9)
    outs = []
    for _ in range(2):
        (r,) = _row_reqs(1, temperature=1.0, seed=7)
        outs.append(rejection_sample(logits.clone(), [r], [3], [[1, 2]]).finish().token_ids)
    assert outs[0] == outs[1]


# ------------------------------------------------------------------ engine
_base: dict[str, list] = {}
_spec: list = []


def _spec_llm(tiny):
    from pagoda import LLM

    if not _spec:
        _spec.append(LLM(str(tiny.path("llama")), dtype="float32", speculative_config=NGRAM))
    return _spec[0]


def _baseline(tiny, params_key: str, params):
    if params_key not in _base:
        _base[params_key] = tiny.llm("llama").generate(REPEAT, params, use_tqdm=False)
    return _base[params_key]


def _assert_same_greedy(outs, base):
    assert token_ids(outs) == token_ids(base)
    for o, b in zip(outs, base, strict=True):
        assert o.outputs[0].text == b.outputs[0].text
        for d, e in zip(o.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
            assert d.keys() == e.keys()
            for t in d:
                assert math.isclose(d[t].logprob, e[t].logprob, abs_tol=1e-4)


@pytest.mark.parametrize("kwargs", [
    {},
    {"max_num_batched_tokens": 24, "max_num_seqs": 4},  # chunked prompts, verifies cut by the budget
    {"num_gpu_blocks_override": 14},  # preemption (and recompute) while speculating
    {"async_scheduling": True},
], ids=["default", "small-budget", "preempt", "async"])
def test_greedy_identical_with_ngram(tiny, kwargs):
    from pagoda import LLM

    base = _baseline(tiny, "greedy", greedy(48, logprobs=2))
    llm = LLM(str(tiny.path("llama")), dtype="float32", speculative_config=NGRAM, **kwargs)
    outs = llm.generate(REPEAT, greedy(48, logprobs=2), use_tqdm=False)
    _assert_same_greedy(outs, base)
    # twice: the second run hits the prefix cache the first one filled (blocks of accepted tokens only)
    _assert_same_greedy(llm.generate(REPEAT, greedy(48, logprobs=2), use_tqdm=False), base)
    st = llm.llm_engine.core.scheduler.spec_stats
    assert st.num_drafts > 0 and 0 < st.num_accepted_tokens <= st.num_draft_tokens
    assert_engine_clean(llm)


def test_suffix_corpus_takes_finished_outputs(tiny):
    """With earlier requests' outputs kept (vLLM's default, 10,000), a repeated request drafts its whole answer from
    the first one's output: far more tokens accepted than the first time, the same greedy tokens."""
    from pagoda import LLM

    base = _baseline(tiny, "greedy", greedy(48, logprobs=2))
    llm = LLM(str(tiny.path("llama")), dtype="float32",
              speculative_config={"method": "suffix", "num_speculative_tokens": 8})
    first = llm.generate(REPEAT[1:4], greedy(48, logprobs=2), use_tqdm=False)
    st = llm.llm_engine.core.scheduler.spec_stats
    accepted_first = st.num_accepted_tokens
    corpus = llm.llm_engine.core.spec.proposer.corpus
    assert corpus.num_requests == 3
    again = llm.generate(REPEAT[1:4], greedy(48, logprobs=2), use_tqdm=False)
    _assert_same_greedy(first, base[1:4])
    _assert_same_greedy(again, base[1:4])
    assert st.num_accepted_tokens - accepted_first > max(2 * accepted_first, 60)
    assert_engine_clean(llm)


def test_suffix_corpus_keeps_every_finished_output_but_salted_or_seeded_sampled_ones(tiny):
    """Every request that ran feeds the corpus once finished, one that never speculated too (a penalty), except a
    salted one (its tenant's text stays its own, as its prefix-cache blocks do) and a seeded sampled one; and a seeded
    sampled request drafts from its own text alone, so its tokens do not depend on what other requests left in the
    corpus (the rejection sampler's draws depend on the drafts)."""
    from pagoda import LLM, SamplingParams

    llm = LLM(str(tiny.path("llama")), dtype="float32",
              speculative_config={"method": "suffix", "num_speculative_tokens": 8})
    seeded = SamplingParams(temperature=0.8, seed=1234, max_tokens=32)
    first = llm.generate([REPEAT[0]], seeded, use_tqdm=False)[0].outputs[0].token_ids
    corpus = llm.llm_engine.core.spec.proposer.corpus
    assert corpus.num_requests == 0  # a seeded sampled output stays out
    llm.generate([REPEAT[1]], greedy(16, presence_penalty=0.5), use_tqdm=False)  # never speculates
    assert corpus.num_requests == 1
    llm.generate([{"prompt": REPEAT[2], "cache_salt": "tenant-a"}], greedy(16), use_tqdm=False)
    assert corpus.num_requests == 1  # a salted output stays out
    llm.generate(REPEAT[:4], greedy(48), use_tqdm=False)  # the seeded prompt's own continuation among them
    assert corpus.num_requests == 5
    assert llm.generate([REPEAT[0]], seeded, use_tqdm=False)[0].outputs[0].token_ids == first
    assert_engine_clean(llm)


@pytest.mark.parametrize("kwargs", [{}, {"num_gpu_blocks_override": 14, "async_scheduling": True}],
                         ids=["default", "preempt-async"])
def test_greedy_identical_with_suffix(tiny, kwargs):
    """Suffix decoding's drafts vary in length step to step (long after a long match): the same tokens and
    logprobs as without speculation."""
    from pagoda import LLM

    base = _baseline(tiny, "greedy", greedy(48, logprobs=2))
    llm = LLM(str(tiny.path("llama")), dtype="float32", speculative_config=SUFFIX, **kwargs)
    _assert_same_greedy(llm.generate(REPEAT, greedy(48, logprobs=2), use_tqdm=False), base)
    st = llm.llm_engine.core.scheduler.spec_stats
    assert st.num_drafts > 0 and 0 < st.num_accepted_tokens <= st.num_draft_tokens
    assert_engine_clean(llm)


def test_drafts_longer_than_16_are_attended_as_decode_rows(tiny):
    """A verify of k + 1 > 16 rows is still attended row by row as decoding attends (found with suffix decoding at
    k = 24 on the default model: the 25-row verifies went through the prefill SDPA and a greedy token changed)."""
    from pagoda import LLM

    base = _baseline(tiny, "greedy", greedy(48, logprobs=2))
    cfg = {"method": "ngram", "num_speculative_tokens": 20, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
    llm = LLM(str(tiny.path("llama")), dtype="float32", speculative_config=cfg)
    backend = llm.llm_engine.core.runner.backend
    if isinstance(backend, TorchAttentionBackend):  # the CPU's (a GPU's Triton kernel has no such limit)
        assert backend.decode_like_rows == 21
    _assert_same_greedy(llm.generate(REPEAT, greedy(48, logprobs=2), use_tqdm=False), base)
    assert_engine_clean(llm)


@pytest.mark.parametrize("async_sched", [False, True], ids=["sync", "async"])
def test_stops_and_lengths_as_without_speculation(tiny, async_sched):
    """Async: each step's outputs are built after the next step is launched, so a stop string found by the
    front end finishes a request whose next verify is already in flight (plain greedy: the argmax path)."""
    from pagoda import LLM

    base_llm = tiny.llm("llama")
    spec = (LLM(str(tiny.path("llama")), dtype="float32", speculative_config=NGRAM, async_scheduling=True)
            if async_sched else _spec_llm(tiny))
    ref = base_llm.generate(REPEAT[:1], greedy(40), use_tqdm=False)[0].outputs[0]
    stop_tok = ref.token_ids[12]
    stop_str = ref.text[len(ref.text) // 2 : len(ref.text) // 2 + 3]
    cases = [greedy(7), greedy(40, stop_token_ids=[stop_tok]), greedy(40, stop=[stop_str]),
             SamplingParams(temperature=0.0, max_tokens=40, stop=[stop_str], include_stop_str_in_output=True),
             greedy(40, min_tokens=20, stop_token_ids=[stop_tok])]
    for p in cases:
        a = base_llm.generate(REPEAT[:1], p, use_tqdm=False)[0].outputs[0]
        b = spec.generate(REPEAT[:1], p, use_tqdm=False)[0].outputs[0]
        assert (b.token_ids, b.text, b.finish_reason, b.stop_reason) == \
            (a.token_ids, a.text, a.finish_reason, a.stop_reason), p
    assert_engine_clean(spec)


def test_sampled_seeded_repeats_and_n(tiny):
    spec = _spec_llm(tiny)
    p = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=40, seed=3, ignore_eos=True, logprobs=1)
    a = spec.generate(REPEAT, p, use_tqdm=False)
    b = spec.generate(REPEAT, p, use_tqdm=False)
    assert token_ids(a) == token_ids(b)
    assert all(len(o.outputs[0].token_ids) == 40 and len(o.outputs[0].logprobs) == 40 for o in a)
    outs = spec.generate(REPEAT[:2], SamplingParams(n=3, temperature=1.0, max_tokens=30, ignore_eos=True),
                         use_tqdm=False)
    assert all(len(o.outputs) == 3 and all(len(c.token_ids) == 30 for c in o.outputs) for o in outs)
    assert_engine_clean(spec)


def test_metrics_and_stats_line():
    from pagoda.engine.messages import SchedulerStats
    from pagoda.entrypoints.openai.metrics import LoggingStatLogger, PrometheusStatLogger

    prom = PrometheusStatLogger("m", num_spec_tokens=3, prefix="vllm")
    lines: list[str] = []
    log = LoggingStatLogger(interval_s=0.0, log=lambda fmt, s: lines.append(s))
    st = SchedulerStats(num_running=1, num_generation_tokens=9, spec_num_drafts=4, spec_num_draft_tokens=12,
                        spec_num_accepted_tokens=6, spec_accepted_per_pos=[4, 2, 0])
    prom.on_step(st)
    log.on_step(st)
    text = prom.render()[0].decode()
    for line in ('vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 4.0',
                 'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 12.0',
                 'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 6.0',
                 'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 2.0'):
        assert line in text, line
    assert "Mean acceptance length: 2.50" in lines[-1]
    assert "spec_decode" not in PrometheusStatLogger("m").render()[0].decode()  # off: not exported, as vLLM


# ------------------------------------------------------------ draft model
def _other_model(tiny, name: str, vocab_extra: int = 0):
    """A second tiny Llama with the target's tokenizer (seed 1); ``vocab_extra`` rows more in its vocabulary."""
    import shutil

    import transformers

    folder = tiny.root / name
    if not (folder / "config.json").exists():
        src = tiny.path("llama")
        folder.mkdir()
        for f in src.iterdir():
            if "token" in f.name or f.name == "generation_config.json":
                shutil.copy(f, folder / f.name)
        cfg = transformers.LlamaConfig.from_pretrained(src)
        cfg.vocab_size += vocab_extra
        torch.manual_seed(1)
        transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return str(folder)


def test_draft_model_greedy_identical(tiny):
    from pagoda import LLM

    base = _baseline(tiny, "greedy", greedy(48, logprobs=2))
    for draft, full_accept in ((_other_model(tiny, "draft"), False), (str(tiny.path("llama")), True)):
        llm = LLM(str(tiny.path("llama")), dtype="float32", max_num_batched_tokens=48,
                  speculative_config={"model": draft, "num_speculative_tokens": 3})
        _assert_same_greedy(llm.generate(REPEAT, greedy(48, logprobs=2), use_tqdm=False), base)
        st = llm.llm_engine.core.scheduler.spec_stats
        assert st.num_drafts > 0
        if full_accept:  # the target as its own draft: every greedy proposal is right
            assert st.num_accepted_tokens == st.num_draft_tokens
        assert_engine_clean(llm)
        assert not llm.llm_engine.core.spec.proposer.shadows  # every shadow freed
        llm.shutdown()


def test_draft_model_with_another_vocabulary_is_refused(tiny):
    from pagoda import LLM

    with pytest.raises(ValueError, match="speculative_config.model"):
        LLM(str(tiny.path("llama")), dtype="float32",
            speculative_config={"model": _other_model(tiny, "draft-vocab", 8), "num_speculative_tokens": 2})


def test_lookup_keeps_each_requests_tokens_as_an_array_between_steps():
    """The batch proposer extends a request's token array by the new tokens only: every step proposes what a fresh
    proposer over the whole list proposes, for a request that keeps running and for a new request under a reused id."""
    import random

    from pagoda.spec_decode.proposer import LookupBatchProposer

    rng = random.Random(11)
    kept = LookupBatchProposer(NgramProposer(1, 4))
    req = Request("r", [rng.randrange(5) for _ in range(10)], SamplingParams(temperature=0, max_tokens=999), set(),
                  999)
    for step in range(300):
        req.all_token_ids.extend(rng.randrange(5) for _ in range(rng.randrange(1, 4)))
        if step % 97 == 96:  # the id reused by another request
            req = Request("r", [rng.randrange(5) for _ in range(rng.randrange(1, 30))],
                          SamplingParams(temperature=0, max_tokens=999), set(), 999)
        fresh = LookupBatchProposer(NgramProposer(1, 4))
        assert kept.propose([req], [4]) == fresh.propose([req], [4]), step
    kept.retain(set())
    assert not kept._arrays
