"""Structured outputs with a reasoning parser: the grammar applies to the answer after ``</think>`` only.

* the advance/skip rule on fake tokens (a recording matcher): no bitmask and no matcher moves while
  reasoning, the end tag's token starts the grammar from its initial state on the next token, a prompt that
  already closed the reasoning starts constrained;
* the engine end to end on the scripted thinking model (tests/reasoning_model.py): what it thinks (``}{]``,
  which no JSON can start with) passes unconstrained, the answer validates against the schema; with
  n > 1 sampled, async scheduling, forced preemption, prefix caching and ngram speculation.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from types import SimpleNamespace

import jsonschema
import pytest
import torch
from reasoning_model import END, REASONING, THINK, build_thinking_model

from pagoda import LLM, SamplingParams
from pagoda.core.request import RequestStatus
from pagoda.errors import ValidationError
from pagoda.reasoning.token_ids import ReasoningTokenIds, prompt_ends_reasoning, reasoning_token_ids
from pagoda.structured_output import StructuredOutputsConfig, StructuredOutputsParams
from pagoda.structured_output.backend import allocate_bitmask
from pagoda.structured_output.manager import RequestGrammar, StructuredOutputManager
from pagoda.structured_output.params import GrammarKey

TAGS = ReasoningTokenIds("qwen3", start_id=90, end_id=91, end_token="</think>")
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "city": {"enum": ["Paris", "Rome"]}},
          "required": ["ok", "city"], "additionalProperties": False}


class RecordingMatcher:
    """Allows only token 7 and records what it was given."""

    def __init__(self) -> None:
        self.accepted: list[int] = []
        self.fills = 0

    def accept_token(self, token_id: int) -> bool:
        self.accepted.append(token_id)
        return True

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.fills += 1
        bitmask[row] = 0
        bitmask[row, 0] = 1 << 7

    def rollback(self, num_tokens: int) -> None:
        del self.accepted[len(self.accepted) - num_tokens:]

    def is_terminated(self) -> bool:
        return False


def _grammar(prompt: list[int], tags: ReasoningTokenIds | None = TAGS) -> tuple[RequestGrammar, RecordingMatcher]:
    fut: Future = Future()
    fut.set_result("compiled")
    m = RecordingMatcher()
    backend = SimpleNamespace(matcher=lambda compiled: m)
    return RequestGrammar(GrammarKey("json", "{}", False), fut, lambda: backend, tags, prompt), m


def test_prompt_rule():
    assert not prompt_ends_reasoning([1, 2, 3], TAGS)
    assert not prompt_ends_reasoning([1, 90, 4], TAGS)  # the template opened thinking (DeepSeek-R1)
    assert prompt_ends_reasoning([1, 90, 5, 91, 6], TAGS)  # ... and closed it (Qwen3, enable_thinking false)
    assert not prompt_ends_reasoning([91, 2, 90, 3], TAGS)  # an earlier turn's end, then a new start
    assert not prompt_ends_reasoning([91, 2], ReasoningTokenIds("x", None, 92, "</x>"))


def test_skip_then_advance_on_fake_tokens():
    g, m = _grammar([1, 2, 3])
    bm = allocate_bitmask(1, 64)
    for step in ([5], [6, 8]):  # reasoning: nothing filled, nothing accepted
        g.fill_bitmask(bm, 0)
        assert (bm == -1).all() and m.fills == 0
        assert g.accept_tokens(step) == len(step) and m.accepted == []
        assert not g.reasoning_ended and not g.is_terminated()
    with pytest.raises(ValueError, match="reasoning"):
        g.fill_bitmask(bm, 0, draft=[4])  # no speculation while reasoning
    with pytest.raises(ValueError, match="reasoning"):
        g.rollback(1)
    # one step kept the end tag and two answer tokens: only those after the end reach the matcher
    assert g.accept_tokens([9, 91, 7, 7]) == 4 and g.reasoning_ended and m.accepted == [7, 7]
    g.fill_bitmask(bm, 0)
    assert m.fills == 1 and bm[0, 0] == 1 << 7 and (bm[0, 1:] == 0).all()
    assert g.accept_tokens([91]) == 1 and m.accepted == [7, 7, 91]  # a later end tag is answer text


def test_prompt_that_ended_reasoning_starts_constrained():
    g, m = _grammar([1, 90, 2, 91, 3])
    bm = allocate_bitmask(1, 64)
    g.fill_bitmask(bm, 0)
    assert g.reasoning_ended and m.fills == 1 and bm[0, 0] == 1 << 7
    g, m = _grammar([1, 90, 2, 91, 3], tags=None)  # no reasoning parser: always constrained
    assert g.reasoning_ended


def test_enable_in_reasoning_constrains_from_the_first_token():
    """``_enable_in_reasoning`` (what /v1/completions sends): constrained from the first token although the prompt
    leaves the model reasoning, the compile shared with the plain constraint, and served where the end tag has no
    token id of its own (that grammar never looks for it)."""
    mgr = _manager(64)
    mgr.reasoning = TAGS
    plain = StructuredOutputsParams(json=SCHEMA)
    whole = StructuredOutputsParams(json=SCHEMA, _enable_in_reasoning=True)
    assert GrammarKey.of(whole, mgr.config) == GrammarKey.of(plain, mgr.config)
    fut: Future = Future()
    fut.set_result("compiled")
    mgr._cache[GrammarKey.of(plain, mgr.config)] = fut
    assert not mgr.grammar_for(plain, [1, 90, 2]).reasoning_ended
    g = mgr.grammar_for(whole, [1, 90, 2])
    assert g.reasoning_ended and g.compiled is fut
    mgr.reasoning = "the end tag is not a single token"
    assert "not a single token" in (mgr.grammar_for(plain, [1]).error() or "")
    assert mgr.grammar_for(whole, [1]).error() is None


def _manager(vocab_size: int, max_num_seqs: int = 4) -> StructuredOutputManager:
    cfg = SimpleNamespace(structured_outputs=StructuredOutputsConfig(), device=torch.device("cpu"),
                          pipeline_parallel_size=1, max_num_seqs=max_num_seqs)
    mgr = StructuredOutputManager(cfg, vocab_size)  # type: ignore[arg-type]
    mgr._backend = SimpleNamespace(vocab_size=vocab_size)  # type: ignore[assignment]  # the grammars bring matchers
    return mgr


def test_step_bitmask_is_none_while_every_constrained_row_reasons():
    mgr = _manager(64)
    g, _ = _grammar([1])
    req = SimpleNamespace(grammar=g, request_id="r", status=RequestStatus.RUNNING)
    sched = SimpleNamespace(scheduled=[SimpleNamespace(sample=True, request=req, num_sample_rows=1, spec_token_ids=[])])
    assert mgr.grammar_bitmask(sched) is None
    g.accept_tokens([91])
    bm = mgr.grammar_bitmask(sched)
    assert bm is not None and bm.data[0, 0] == 1 << 7 and bm.rows == [0]


class AllowOne(RecordingMatcher):
    """Allows only token ``k`` (writes its whole row, as every matcher must)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        bitmask[row] = 0
        bitmask[row, self.k // 32] = 1 << (self.k % 32)


def _fresh_bitmask(sched, vocab_size: int) -> torch.Tensor | None:
    """The reference: a new all-allowed bitmask, each live constrained row filled by its grammar."""
    sampled = [s for s in sched.scheduled if s.sample]
    bm = allocate_bitmask(sum(s.num_sample_rows for s in sampled), vocab_size)
    row = 0
    for s in sampled:
        g = s.request.grammar
        if g is not None and g.reasoning_ended and not s.request.status.finished:
            g.matcher.fill_bitmask(bm, row)
        row += s.num_sample_rows
    return bm if (bm != -1).any() else None


def test_reused_step_bitmask_equals_a_fresh_one():
    """The manager's reused buffer (two slots, grown past max_num_seqs rows, stale rows from earlier steps) gives
    each step exactly a freshly allocated bitmask, with batch sizes changing, unconstrained and verify rows,
    rows still reasoning, a request ending its reasoning, finished requests; ``rows`` lists the filled rows."""
    V = 100
    mgr = _manager(V, max_num_seqs=2)

    def req(rid: str, k: int | None, prompt=(1, 91)):
        if k is None:
            return SimpleNamespace(grammar=None, request_id=rid, status=RequestStatus.RUNNING)
        fut: Future = Future()
        fut.set_result("compiled")
        backend = SimpleNamespace(matcher=lambda compiled: AllowOne(k))
        g = RequestGrammar(GrammarKey("json", "{}", False), fut, lambda: backend, TAGS, list(prompt))
        return SimpleNamespace(grammar=g, request_id=rid, status=RequestStatus.RUNNING)

    a, b, c = req("a", 5), req("b", 40, prompt=(1,)), req("c", 70)
    u, u2, u3 = req("u", None), req("u2", None), req("u3", None)

    def step(*rows):  # (request, num_sample_rows), or (request, 0): scheduled without sampling
        return SimpleNamespace(scheduled=[SimpleNamespace(request=r, sample=n > 0, num_sample_rows=max(n, 1),
                                                          spec_token_ids=[0] * (max(n, 1) - 1)) for r, n in rows])

    steps = [  # the slots in turn: 0, 1, 0, 1, ...
        step((a, 1), (u, 1), (b, 1)),  # b reasons; slot 0 grows past max_num_seqs
        step((b, 1), (a, 1)),
        step((u, 3), (b, 1), (a, 1), (c, 1)),  # before: b ends its reasoning; slot 0 grows to 6 rows
        step((c, 1), (u, 0)),
        step((u, 1), (u2, 1), (a, 1), (b, 1), (u3, 1)),  # before: a finished; row 4 held a's row of step 2
        step((u, 2), (c, 1), (u2, 1)),  # slot 1 grows: rows of a new, uninitialised buffer
    ]
    before = {2: lambda: b.grammar.accept_tokens([91]), 4: lambda: setattr(a, "status", RequestStatus.FINISHED_STOPPED)}
    filled_any = 0
    for i, sched in enumerate(steps):
        if i in before:
            before[i]()
        ref = _fresh_bitmask(sched, V)
        got = mgr.grammar_bitmask(sched)
        if ref is None:
            assert got is None, i
            continue
        assert got is not None and torch.equal(got.data, ref), i
        assert got.rows == [r for r in range(ref.shape[0]) if (ref[r] != -1).any()], i
        filled_any += 1
    assert filled_any == len(steps)
    assert mgr.grammar_bitmask(step((b, 0), (u, 1))) is None  # nothing sampled is constrained


# ------------------------------------------------------------------ the engine, end to end
@pytest.fixture(scope="module")
def think_dir(tmp_path_factory):
    return build_thinking_model(tmp_path_factory.mktemp("thinking") / "model")


_LLMS: dict[str, LLM] = {}


def _llm(path, **kw) -> LLM:
    key = json.dumps(kw, sort_keys=True)
    if key not in _LLMS:
        _LLMS[key] = LLM(str(path), dtype="float32", **{"structured_outputs_config": {"reasoning_parser": "qwen3"},
                                                         **kw})
    return _LLMS[key]


def _prompt(llm: LLM, **template_kwargs) -> str:
    return llm.get_tokenizer().apply_chat_template([{"role": "user", "content": "Where?"}], tokenize=False,
                                                   add_generation_prompt=True, **template_kwargs)


def _answer(text: str) -> str:
    assert text.count(END) >= 1, text
    return text.split(END, 1)[1]


def test_tags_resolve_on_the_thinking_model(think_dir):
    tok = _llm(think_dir).get_tokenizer()
    tags = reasoning_token_ids("qwen3", tok)
    assert isinstance(tags, ReasoningTokenIds) and tags.end_id == tok.convert_tokens_to_ids(END)
    assert tags.start_id == tok.convert_tokens_to_ids(THINK)


def test_reasoning_is_free_and_the_answer_follows_the_schema(think_dir):
    llm = _llm(think_dir)
    so = StructuredOutputsParams(json=SCHEMA)
    free = llm.generate([_prompt(llm)], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0].outputs[0]
    assert free.text.startswith(THINK + REASONING + END + "]" + END)  # the script, unconstrained
    out = llm.generate([_prompt(llm)], SamplingParams(temperature=0, max_tokens=80, structured_outputs=so),
                       use_tqdm=False)[0].outputs[0]
    assert out.text.startswith(THINK + REASONING + END), out.text  # the thinking was not constrained
    assert out.finish_reason == "stop"
    jsonschema.validate(json.loads(_answer(out.text)), SCHEMA)
    # the template closed the thinking in the prompt: constrained from the first token
    closed = llm.generate([_prompt(llm, enable_thinking=False)], SamplingParams(
        temperature=0, max_tokens=80, structured_outputs=so), use_tqdm=False)[0].outputs[0]
    assert closed.finish_reason == "stop" and closed.text == _answer(out.text)
    # max_tokens while still thinking: cut short, no answer (finish_reason length)
    short = llm.generate([_prompt(llm)], SamplingParams(temperature=0, max_tokens=3, structured_outputs=so),
                         use_tqdm=False)[0].outputs[0]
    assert short.finish_reason == "length" and short.text == THINK + REASONING[:2]


def test_enable_in_reasoning_holds_the_whole_text(think_dir):
    """/v1/completions' constraint (``_enable_in_reasoning``): the whole text follows the schema, no thinking first,
    on a prompt that leaves the model thinking; the same prompt and schema without it think first."""
    llm = _llm(think_dir)
    whole = StructuredOutputsParams(json=SCHEMA, _enable_in_reasoning=True)
    out = llm.generate([_prompt(llm)], SamplingParams(temperature=0, max_tokens=80, structured_outputs=whole),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and THINK not in out.text, out.text
    jsonschema.validate(json.loads(out.text), SCHEMA)
    plain = StructuredOutputsParams(json=SCHEMA)
    after = llm.generate([_prompt(llm)], SamplingParams(temperature=0, max_tokens=80, structured_outputs=plain),
                         use_tqdm=False)[0].outputs[0]
    assert after.text.startswith(THINK + REASONING + END)


def _check_sampled(outs) -> None:
    """A finished answer validates; a sample may also stop (EOS) or be cut (length) while still thinking: the
    grammar never applied, so there is no answer (as vLLM)."""
    for c in outs:
        assert c.finish_reason in ("stop", "length")
        if c.finish_reason == "stop" and END in c.text:
            jsonschema.validate(json.loads(_answer(c.text)), SCHEMA)


@pytest.mark.parametrize("kwargs", [
    {}, {"async_scheduling": True}, {"num_gpu_blocks_override": 24, "block_size": 4},
    {"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1,
                            "prompt_lookup_max": 2}}])
def test_n_async_preemption_prefix_cache_and_speculation(think_dir, kwargs):
    """Each sample has its own reasoning state; the same answers under every engine path (the scripted model's
    sampled tokens depend only on the seed and the constraint's state). Speculation verifies a seeded sampled
    request's answer by rejection sampling, which draws other random numbers than plain sampling (the same
    distribution: tests/test_spec_structured.py): there its samples repeat and fit, and greedy requests match."""
    llm = _llm(think_dir, **kwargs)
    so = StructuredOutputsParams(json=SCHEMA)
    prompts = [_prompt(llm), _prompt(llm, enable_thinking=False), _prompt(llm)]
    ps = [SamplingParams(temperature=3.0, seed=7, n=4, max_tokens=60, structured_outputs=so),
          SamplingParams(temperature=0, max_tokens=60, structured_outputs=so),
          SamplingParams(temperature=0, max_tokens=20)]  # an unconstrained neighbour
    outs = llm.generate(prompts, ps, use_tqdm=False)
    _check_sampled(outs[0].outputs)
    assert sum(c.finish_reason == "stop" and END in c.text for c in outs[0].outputs) >= 2
    assert len({c.text.split(END, 1)[0] for c in outs[0].outputs}) > 1  # the samples thought differently
    assert outs[1].outputs[0].finish_reason == "stop" and END not in outs[1].outputs[0].text
    jsonschema.validate(json.loads(outs[1].outputs[0].text), SCHEMA)
    again = llm.generate(prompts, ps, use_tqdm=False)  # prefix-cache hits this time
    base = _llm(think_dir)
    ref = base.generate(prompts, ps, use_tqdm=False) if kwargs else outs
    sampled_differently = {0} if "speculative_config" in kwargs else set()
    for i, (o, a, r) in enumerate(zip(outs, again, ref, strict=True)):
        assert [c.token_ids for c in o.outputs] == [c.token_ids for c in a.outputs]
        if i not in sampled_differently:
            assert [c.token_ids for c in o.outputs] == [c.token_ids for c in r.outputs]
    if "num_gpu_blocks_override" in kwargs:
        assert llm.llm_engine.core.scheduler.num_preemptions_total > 0


def test_without_a_single_token_end_tag_constrained_requests_are_refused(tiny):
    llm = LLM(str(tiny.path("llama")), dtype="float32", structured_outputs_config={"reasoning_parser": "deepseek_r1"})
    with pytest.raises(ValidationError, match="not a single token") as ei:
        llm.generate([{"prompt_token_ids": [1, 2]}], SamplingParams(
            max_tokens=2, structured_outputs=StructuredOutputsParams(json_object=True)), use_tqdm=False)
    assert ei.value.parameter == "structured_outputs"
    assert llm.generate([{"prompt_token_ids": [1, 2]}], SamplingParams(max_tokens=2), use_tqdm=False)  # others run
    # constrained from the first token (/v1/completions' constraint): the end tag is never needed, so it runs
    whole = StructuredOutputsParams(choice=["yes", "no"], _enable_in_reasoning=True)
    out = llm.generate([{"prompt_token_ids": [1, 2]}], SamplingParams(max_tokens=8, structured_outputs=whole),
                       use_tqdm=False)[0].outputs[0]
    assert out.text in ("yes", "no") and out.finish_reason == "stop"


def test_config_field():
    assert StructuredOutputsConfig.from_dict({"reasoning_parser": "qwen3"}).reasoning_parser == "qwen3"
    with pytest.raises(ValueError, match="reasoning_parser must be one of"):
        StructuredOutputsConfig.from_dict({"reasoning_parser": "nope"})
