"""allowed_token_ids, bad_words and logprob_token_ids (vLLM's meanings), on the tiny Llama."""

from __future__ import annotations

import pytest
from engine_checks import PROMPTS, assert_engine_clean, greedy, token_ids

from pagoda import SamplingParams
from pagoda.engine.admission import bad_words_token_ids
from pagoda.errors import ValidationError


@pytest.fixture(scope="module")
def llm(llama_llm):
    yield llama_llm
    assert_engine_clean(llama_llm)


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_allowed_token_ids_restricts_every_output_token(llm):
    base = token_ids(llm.generate(PROMPTS[:3], greedy(), use_tqdm=False))
    allowed = sorted({t for ids in base for t in ids[1:4]} | {11, 12})
    for params in (greedy(allowed_token_ids=allowed),
                   SamplingParams(temperature=1.0, max_tokens=32, ignore_eos=True, seed=1, allowed_token_ids=allowed)):
        for ids in token_ids(llm.generate(PROMPTS[:3], params, use_tqdm=False)):
            assert set(ids) <= set(allowed), sorted(set(ids) - set(allowed))


def test_allowed_token_ids_leaves_reported_logprobs_raw(llm):
    """vLLM reports logprobs before any processing: the mask changes the token, not the numbers."""
    base = llm.generate(PROMPTS[:1], greedy(max_tokens=1, logprobs=5), use_tqdm=False)[0].outputs[0]
    first = base.token_ids[0]
    other = next(t for t in base.logprobs[0] if t != first)
    out = llm.generate(PROMPTS[:1], greedy(max_tokens=1, logprobs=5, allowed_token_ids=[other]),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [other]
    assert out.logprobs[0][other].logprob == pytest.approx(base.logprobs[0][other].logprob, abs=1e-5)


def test_greedy_unchanged_when_nothing_is_constrained(llm):
    base = token_ids(llm.generate(PROMPTS, greedy(), use_tqdm=False))
    V = llm.llm_engine.input_processor.limits.vocab_size
    assert token_ids(llm.generate(PROMPTS, greedy(allowed_token_ids=list(range(V))), use_tqdm=False)) == base


def _bad_word_in(tok, ids: list[int]) -> tuple[str, list[list[int]]]:
    """A word whose token sequence (as bad_words tokenizes it) appears in ``ids``."""
    for n in (2, 1):
        for i in range(len(ids) - n + 1):
            word = tok.decode(ids[i:i + n])
            if not word.strip():
                continue
            try:
                seqs = bad_words_token_ids([word], tok)
            except ValidationError:
                continue
            if any(_contains(ids, s) for s in seqs):
                return word, seqs
    raise AssertionError("no round-tripping word in the output")


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_bad_words_never_generated(tiny, llm, async_scheduling):
    engine = tiny.llm("llama", async_scheduling=True) if async_scheduling else llm
    tok = engine.get_tokenizer()
    base = token_ids(engine.generate(PROMPTS[2:3], greedy(), use_tqdm=False))[0]
    word, seqs = _bad_word_in(tok, base)  # control: the word appears without the ban
    out = token_ids(engine.generate(PROMPTS[2:3], greedy(bad_words=[word]), use_tqdm=False))[0]
    assert not any(_contains(out, s) for s in seqs), (word, seqs, out)
    assert out != base
    # A word the output never holds changes nothing.
    absent = next(w for w in ("zzqx", "qqqq", "xjxj")
                  if not any(_contains(base, s) for s in bad_words_token_ids([w], tok)))
    assert token_ids(engine.generate(PROMPTS[2:3], greedy(bad_words=[absent]), use_tqdm=False))[0] == base


def test_logprob_token_ids_reports_those_ids(llm):
    base = llm.generate(PROMPTS[:1], greedy(max_tokens=2, logprobs=5), use_tqdm=False)[0].outputs[0]
    ids = [t for t in base.logprobs[0] if t != base.token_ids[0]][:2][::-1]
    out = llm.generate(PROMPTS[:1], greedy(max_tokens=2, logprob_token_ids=ids), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base.token_ids
    d = out.logprobs[0]
    assert set(d) == {base.token_ids[0], *ids}
    for t in ids:
        assert d[t].logprob == pytest.approx(base.logprobs[0][t].logprob, abs=1e-5)
        assert d[t].rank == base.logprobs[0][t].rank  # the true rank in the distribution, not the list position
    assert sorted(d[t].rank for t in ids) != [1, 2]  # ids were taken from ranks 2..5, reversed
    assert set(out.logprobs[1]) >= set(ids)


@pytest.mark.parametrize("kw,param", [
    (dict(allowed_token_ids=[]), "allowed_token_ids"),
    (dict(allowed_token_ids=[10**9]), "allowed_token_ids"),
    (dict(bad_words=[""]), "bad_words"),
    (dict(bad_words=["ok", "\ud800"]), "bad_words"),  # a lone surrogate: no text (not the tokenizer's TypeError)
    (dict(logprob_token_ids=[1, 2], logprobs=1), "logprob_token_ids"),
    (dict(logprob_token_ids=[10**9]), "logprob_token_ids"),
    (dict(logprob_token_ids=list(range(129))), "logprob_token_ids"),
])
def test_invalid_values_are_refused(llm, kw, param):
    with pytest.raises(ValidationError) as e:
        llm.generate(PROMPTS[:1], greedy(max_tokens=1, **kw), use_tqdm=False)
    assert e.value.parameter == param


def test_non_zero_priority_needs_the_priority_policy(llm):
    with pytest.raises(ValidationError) as e:
        llm.generate(PROMPTS[:1], greedy(max_tokens=1), use_tqdm=False, priority=[1])
    assert e.value.parameter == "priority"
