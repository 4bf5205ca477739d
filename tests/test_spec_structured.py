"""Speculative decoding of constrained requests (structured outputs + n-gram proposals), tiny Llama, fp32, CPU.

* A proposal is cut before its first token the grammar refuses, and the matcher is left as it was.
* Greedy: tokens and logprobs identical with and without speculation for regex, JSON-schema and choice
  constraints next to an unconstrained request, under a small token budget (verifies cut short), preemption and
  async scheduling; and the constrained requests did verify proposals (the counters moved while only
  constrained requests ran). The same with a draft model and an EAGLE-3 head, which propose without the grammar.
* The n-gram proposer drafts the text a strict schema forces (keys, punctuation) before its prompt lookup.
* Sampled: a seeded constrained request repeats and stays inside its grammar; over many samples the choices
  come out as often as without speculation (total variation within the sampling noise).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from concurrent.futures import Future

import jsonschema
import pytest
from engine_checks import assert_engine_clean

from pagoda import LLM, SamplingParams
from pagoda.structured_output import StructuredOutputsConfig, StructuredOutputsParams
from pagoda.structured_output.params import GrammarKey

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "n": {"type": "integer"}}, "required": ["name", "n"]}
REGEX = r"(abc|abd|bca)( (abc|abd|bca)){2,5}x"
CHOICES = ["the quick brown fox", "the quick brown dog", "the lazy dog", "a quick fox"]
# Prompts that already hold what the constrained answers are made of, so prompt lookup has something to propose.
PROMPTS = [
    'Copy: {"name": "abc", "n": 12} {"name": "abc", "n": 12} {"name": "abc", "n": 12}',
    "abc abd bca abc abd bca abc abd bca abc abd",
    " or ".join(CHOICES) + ". " + " or ".join(CHOICES),
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over",
]


def _params(temperature: float = 0.0, **kw) -> list[SamplingParams]:
    sp = [StructuredOutputsParams(json=json.dumps(SCHEMA)), StructuredOutputsParams(regex=REGEX),
          StructuredOutputsParams(choice=CHOICES), None]
    return [SamplingParams(temperature=temperature, max_tokens=40, logprobs=2, structured_outputs=s, **kw)
            for s in sp]


def _same(outs, base) -> None:
    for o, b in zip(outs, base, strict=True):
        assert [c.token_ids for c in o.outputs] == [c.token_ids for c in b.outputs]
        for c, d in zip(o.outputs, b.outputs, strict=True):
            assert (c.text, c.finish_reason) == (d.text, d.finish_reason)
            for x, y in zip(c.logprobs, d.logprobs, strict=True):
                assert x.keys() == y.keys()
                for t in x:
                    assert math.isclose(x[t].logprob, y[t].logprob, abs_tol=1e-4)


def _valid(outs) -> None:
    """Each constrained answer that finished fits its constraint."""
    for o in outs[:3]:
        for c in o.outputs:
            if c.finish_reason != "stop":
                continue
            text = c.text
            if o is outs[0]:
                jsonschema.validate(json.loads(text), SCHEMA)
            elif o is outs[1]:
                assert re.fullmatch(REGEX, text), text
            else:
                assert text in CHOICES, text


def test_valid_prefix_cuts_at_the_first_refused_token(tiny):
    from transformers import AutoTokenizer

    from pagoda.structured_output.manager import RequestGrammar
    from pagoda.structured_output.xgrammar_backend import XgrammarBackend

    tok = AutoTokenizer.from_pretrained(tiny.path("llama"))
    be = XgrammarBackend(tok, len(tok), [tok.eos_token_id])
    key = GrammarKey.of(StructuredOutputsParams(regex=REGEX), StructuredOutputsConfig())
    fut: Future = Future()
    fut.set_result(be.compile(key))
    g = RequestGrammar(key, fut, lambda: be)
    good = tok.encode("abc abd")
    bad = tok.encode("abc zzz")
    assert g.valid_prefix(good) == len(good)
    n = g.valid_prefix(bad)
    assert n < len(bad) and tok.decode(bad[:n]) in ("abc", "abc ")
    assert g.accept_tokens(good) == len(good)  # the matcher was left where it began
    assert g.valid_prefix(tok.encode(" bcax")) == len(tok.encode(" bcax"))
    assert g.valid_prefix([tok.eos_token_id]) == 0  # "abc abd" is not a whole answer yet


def test_forced_tokens_spell_what_the_grammar_forces(tiny):
    """A strict schema forces its keys and punctuation: the n-gram proposer drafts them first."""
    from transformers import AutoTokenizer

    from pagoda.structured_output.manager import RequestGrammar
    from pagoda.structured_output.xgrammar_backend import XgrammarBackend

    tok = AutoTokenizer.from_pretrained(tiny.path("llama"))
    be = XgrammarBackend(tok, len(tok), [tok.eos_token_id])
    key = GrammarKey.of(StructuredOutputsParams(json=json.dumps(SCHEMA)), StructuredOutputsConfig())
    fut: Future = Future()
    fut.set_result(be.compile(key))
    g = RequestGrammar(key, fut, lambda: be)
    first = g.forced_tokens(16)
    assert tok.decode(first) == '{"name": "'
    assert g.forced_tokens(2) == first[:2] and g.forced_tokens(0) == []
    assert g.accept_tokens(first) == len(first)  # the matcher did not move
    assert g.forced_tokens(16) == []  # the name's characters are free
    assert g.accept_tokens(tok.encode('ab"')) == len(tok.encode('ab"'))
    assert tok.decode(g.forced_tokens(16)) == ', "n": '


_base: dict[str, list] = {}


def _baseline(tiny, key: str, params):
    if key not in _base:
        _base[key] = tiny.llm("llama").generate(PROMPTS, params, use_tqdm=False)
    return _base[key]


@pytest.mark.parametrize("kwargs", [
    {},
    {"max_num_batched_tokens": 24, "max_num_seqs": 4},  # verifies cut by the budget
    {"num_gpu_blocks_override": 14},  # preemption while speculating
    {"async_scheduling": True},
], ids=["default", "small-budget", "preempt", "async"])
def test_constrained_greedy_identical_with_ngram(tiny, kwargs):
    base = _baseline(tiny, "greedy", _params())
    _valid(base)
    llm = LLM(str(tiny.path("llama")), dtype="float32", speculative_config=NGRAM, **kwargs)
    st = llm.llm_engine.core.scheduler.spec_stats
    outs = llm.generate(PROMPTS[:3], _params()[:3], use_tqdm=False)  # constrained requests alone
    _same(outs, base[:3])
    assert st.num_drafts > 0 and 0 < st.num_accepted_tokens <= st.num_draft_tokens
    _same(llm.generate(PROMPTS, _params(), use_tqdm=False), base)  # with an unconstrained neighbour
    assert_engine_clean(llm)


def test_constrained_sampling_follows_the_target(tiny):
    """Seeded requests repeat and fit their grammars; the choices' frequencies over many samples match those
    without speculation within sampling noise (fixed seeds: deterministic)."""
    spec = LLM(str(tiny.path("llama")), dtype="float32", speculative_config=NGRAM)
    p = _params(temperature=1.0, seed=11)
    a = spec.generate(PROMPTS, p, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in a] == [
        o.outputs[0].token_ids for o in spec.generate(PROMPTS, p, use_tqdm=False)]
    _valid(a)
    n = 400
    many = [SamplingParams(temperature=1.0, seed=i, max_tokens=32,
                           structured_outputs=StructuredOutputsParams(choice=CHOICES)) for i in range(n)]
    st = spec.llm_engine.core.scheduler.spec_stats
    drafts = st.num_drafts

    def texts(llm) -> Counter:
        return Counter(o.outputs[0].text for o in llm.generate(PROMPTS[2:3] * n, many, use_tqdm=False))

    with_spec = texts(spec)
    assert st.num_drafts > drafts
    without = texts(tiny.llm("llama"))
    assert set(with_spec) <= set(CHOICES) and set(without) <= set(CHOICES)
    tv = 0.5 * sum(abs(with_spec[k] - without[k]) for k in CHOICES) / n
    assert tv < 0.1, (with_spec, without)
    assert_engine_clean(spec)


@pytest.mark.parametrize("method", ["draft_model", "eagle3"])
def test_constrained_greedy_identical_with_model_drafters(tiny, method):
    """A draft model and an EAGLE-3 head propose without the grammar: their drafts are cut at the first refused
    token, and their own state (shadow requests, the head's entries) follows the tokens kept."""
    from test_spec_decode import _other_model
    from test_spec_eagle import TARGET, _spec

    if method == "eagle3":
        target, spec = TARGET, _spec(tiny, "eagle3")
    else:
        target, spec = "llama", {"model": _other_model(tiny, "draft"), "num_speculative_tokens": 3}
    base = tiny.llm(target).generate(PROMPTS, _params(), use_tqdm=False)
    llm = LLM(str(tiny.path(target)), dtype="float32", speculative_config=spec)
    _same(llm.generate(PROMPTS[:3], _params()[:3], use_tqdm=False), base[:3])  # constrained requests alone
    assert llm.llm_engine.core.scheduler.spec_stats.num_drafts > 0
    _same(llm.generate(PROMPTS, _params(), use_tqdm=False), base)  # with an unconstrained neighbour
    assert_engine_clean(llm)
    llm.shutdown()


def test_offline_request_ending_in_an_error_raises_naming_the_field(tiny):
    """A constrained request whose sampling rule leaves it no token (``min_tokens`` before the only choice's end) is
    the server's 400 naming ``min_tokens``; offline it raises that ValidationError (it used to come back as an empty
    output with finish_reason "error"), and the engine is left clean for the next call."""
    from pagoda.errors import ValidationError

    llm = tiny.llm("llama")
    bad = SamplingParams(max_tokens=8, min_tokens=6, structured_outputs=StructuredOutputsParams(choice=["a"]))
    with pytest.raises(ValidationError, match="min_tokens excluded every token") as e:
        llm.generate(["pick", "pick"], [SamplingParams(max_tokens=4), bad], use_tqdm=False)
    assert e.value.parameter == "min_tokens" and str(e.value).startswith("prompt 1: ")
    assert_engine_clean(llm)
    ok = llm.generate(["pick"], SamplingParams(max_tokens=8, structured_outputs=StructuredOutputsParams(choice=["a"])),
                      use_tqdm=False)[0]
    assert ok.outputs[0].text == "a"
