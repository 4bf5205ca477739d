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


def test_rules_that_leave_no_token_are_an_error_naming_the_field(llm):
    """A request whose own rules ban every token at a position (``allowed_token_ids`` within the EOS and stop ids
    while ``min_tokens`` holds; an allowed token that is a banned bad word) used to get token 0, which none of them
    allows, as a normal output; it now fails naming the field to relax (the server's 400), the engine stays clean
    and the batch's other request is unaffected."""
    tok = llm.get_tokenizer()
    eos = tok.eos_token_id
    word = next(w for w in ("the", "of", "a", "is", "e") if len(tok.encode(w, add_special_tokens=False)) == 1)
    (wid,) = tok.encode(word, add_special_tokens=False)
    ok = token_ids(llm.generate(PROMPTS[:1], greedy(), use_tqdm=False))[0]
    for params, field in ((greedy(allowed_token_ids=[eos], min_tokens=3), "min_tokens"),
                          (SamplingParams(temperature=1.0, seed=0, max_tokens=4, allowed_token_ids=[eos, 50],
                                          stop_token_ids=[50], min_tokens=2), "min_tokens"),
                          (greedy(allowed_token_ids=[wid], bad_words=[word]), "allowed_token_ids")):
        with pytest.raises(ValidationError, match="excluded every token at output token 0") as e:
            llm.generate(PROMPTS[:2], [greedy(), params], use_tqdm=False)
        assert e.value.parameter == field and str(e.value).startswith("prompt 1: ")
        assert_engine_clean(llm)
    assert token_ids(llm.generate(PROMPTS[:1], greedy(), use_tqdm=False))[0] == ok
    # Rules that leave a token are honoured as before: EOS allowed once min_tokens is reached.
    out = llm.generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=6, min_tokens=2,
                                                   allowed_token_ids=[eos, wid]), use_tqdm=False)[0].outputs[0]
    assert out.token_ids[:2] == [wid, wid] and set(out.token_ids) <= {eos, wid}


def test_min_tokens_bans_eos_also_under_ignore_eos(llm):
    """vLLM's min_tokens bans every EOS id (and the stop ids) until it is reached, ignore_eos or not: with EOS made
    the likeliest token, the first min_tokens tokens are others, and EOS follows (not ending the request)."""
    eos = llm.get_tokenizer().eos_token_id
    out = token_ids(llm.generate(PROMPTS[:1], greedy(max_tokens=6, min_tokens=3, logit_bias={eos: 100.0}),
                                 use_tqdm=False))[0]
    assert eos not in out[:3] and out[3:] == [eos] * 3
