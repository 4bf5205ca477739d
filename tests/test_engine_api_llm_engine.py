"""vLLM's ``LLMEngine`` API (``add_request`` / ``step`` / ``abort_request`` / ``get_num_unfinished_requests``) and
``SamplingParams.output_kind`` DELTA through it: each output carries only what is new, and a request's deltas
concatenate to the cumulative output of the same request (tokens, text, logprobs)."""

from __future__ import annotations

import pytest
from engine_checks import PROMPTS, assert_engine_clean, greedy

from pagoda import RequestOutputKind, SamplingParams

DELTA = RequestOutputKind.DELTA


@pytest.fixture(scope="module")
def llm(llama_llm):
    yield llama_llm
    assert_engine_clean(llama_llm)


def _run(llm, prompt, params, rid: str = "api") -> list:
    eng = llm.llm_engine
    eng.add_request(rid, prompt, params)
    outs = []
    while eng.has_unfinished_requests():
        outs.extend(eng.step())
    return outs


def _joined(outs) -> dict[int, tuple[list[int], str, list, list]]:
    """Per completion index: the concatenated token ids, text and logprobs of DELTA outputs, and the finish
    reasons reported."""
    acc: dict[int, tuple[list[int], str, list, list]] = {}
    for o in outs:
        for c in o.outputs:
            ids, text, lps, fins = acc.get(c.index, ([], "", [], []))
            acc[c.index] = (ids + c.token_ids, text + c.text, lps + (c.logprobs or []),
                            fins + ([c.finish_reason] if c.finish_reason else []))
    return acc


@pytest.mark.parametrize("n", [1, 3])
def test_delta_outputs_concatenate_to_the_cumulative_output(llm, n):
    kw = dict(n=n, seed=7, temperature=1.0, max_tokens=9, ignore_eos=True, logprobs=2, prompt_logprobs=1)
    cum = _run(llm, PROMPTS[2], SamplingParams(**kw))
    delta = _run(llm, PROMPTS[2], SamplingParams(output_kind=DELTA, **kw))
    final = cum[-1]
    assert delta[-1].finished and not any(o.finished for o in delta[:-1])
    acc = _joined(delta)
    for c in final.outputs:
        ids, text, lps, fins = acc[c.index]
        assert (ids, text) == (c.token_ids, c.text)
        assert lps == c.logprobs
        assert fins == [c.finish_reason]  # each completion's finish is reported once
    # one new token per output per completion (cumulative outputs hold all so far), prompt logprobs only once
    assert all(len(c.token_ids) == 1 for o in delta for c in o.outputs)
    assert delta[0].prompt_logprobs == final.prompt_logprobs
    assert all(o.prompt_logprobs is None for o in delta[1:])
    assert delta[-1].outputs[0].cumulative_logprob == pytest.approx(
        next(c for c in final.outputs if c.index == delta[-1].outputs[0].index).cumulative_logprob)


def test_delta_text_holds_back_a_possible_stop_string(llm):
    """With stop strings the text that may begin one is held back (as in cumulative outputs); the deltas still add
    up to the final text, which ends before the stop string."""
    prompt = PROMPTS[8]
    base = _run(llm, prompt, greedy(max_tokens=20))[-1].outputs[0]
    stop = base.text[6:10]
    assert len(stop) == 4
    params = dict(max_tokens=20, stop=[stop])
    final = _run(llm, prompt, greedy(**params))[-1].outputs[0]
    assert final.finish_reason == "stop" and final.stop_reason == stop
    delta = _run(llm, prompt, greedy(output_kind=DELTA, **params))
    ids, text, _, fins = _joined(delta)[0]
    assert (ids, text, fins) == (final.token_ids, final.text, ["stop"])


def test_llm_generate_gives_the_whole_output_for_delta_params(llm):
    """LLM.generate asks for final outputs only (vLLM sets FINAL_ONLY): DELTA params give the whole output."""
    want = llm.generate(PROMPTS[3], greedy(max_tokens=7), use_tqdm=False)[0].outputs[0]
    got = llm.generate(PROMPTS[3], greedy(max_tokens=7, output_kind=DELTA), use_tqdm=False)[0].outputs[0]
    assert (got.token_ids, got.text) == (want.token_ids, want.text) and len(got.token_ids) == 7


def test_num_unfinished_requests_and_abort(llm):
    eng = llm.llm_engine
    assert eng.get_num_unfinished_requests() == 0
    eng.add_request("a", PROMPTS[0], greedy(max_tokens=40))
    eng.add_request("b", PROMPTS[1], SamplingParams(n=2, max_tokens=40, ignore_eos=True))
    assert eng.get_num_unfinished_requests() == 2  # a request with n = 2 counts once
    eng.step()
    eng.abort_request("a")
    assert eng.get_num_unfinished_requests() == 1
    eng.abort_request(["b", "unknown"])  # unknown (and finished) ids are ignored, as vLLM's
    assert eng.get_num_unfinished_requests() == 0 and not eng.has_unfinished_requests()
    assert eng.step() == []


def test_add_request_options_are_keyword_only(llm):
    """vLLM's fourth positional argument is ``arrival_time``: here it is refused, not taken as ``final_only``."""
    with pytest.raises(TypeError):
        llm.llm_engine.add_request("pos", PROMPTS[0], greedy(max_tokens=2), 1700000000.0)
    assert not llm.llm_engine.has_unfinished_requests()


def test_delta_with_stream_interval_carries_every_token_once(tiny):
    """--stream-interval 3: fewer outputs, each DELTA one carrying all the tokens since the previous output."""
    llm = tiny.llm("llama", stream_interval=3)
    kw = dict(n=2, seed=3, temperature=1.0, max_tokens=10, ignore_eos=True)
    final = _run(llm, PROMPTS[2], SamplingParams(**kw))[-1]
    delta = _run(llm, PROMPTS[2], SamplingParams(output_kind=DELTA, **kw))
    acc = _joined(delta)
    assert {i: v[:2] for i, v in acc.items()} == {c.index: (c.token_ids, c.text) for c in final.outputs}
    assert all(v[3] == ["length"] for v in acc.values())  # each completion's finish reported once
    sizes = [len(c.token_ids) for o in delta for c in o.outputs]
    assert max(sizes) == 3 and len(delta) < 10  # coalesced: up to 3 tokens a completion, fewer outputs than tokens
    assert_engine_clean(llm)


def test_pooling_request_priority_is_checked_as_a_generation_ones(tmp_path):
    """``add_request(..., PoolingParams, priority=1)`` under fcfs is refused naming ``priority`` (it used to be
    dropped), and a pooling request runs under ``--scheduling-policy priority`` with its priority."""
    from pooling_models import build_pooling_model

    from pagoda import LLM
    from pagoda.errors import ValidationError
    from pagoda.pooling.params import PoolingParams

    model = str(build_pooling_model(tmp_path / "bert", "bert"))
    for policy in ("fcfs", "priority"):
        llm = LLM(model, runner="pooling", dtype="float32", max_model_len=64, scheduling_policy=policy)
        try:
            eng = llm.llm_engine
            if policy == "fcfs":
                with pytest.raises(ValidationError) as e:
                    eng.add_request("p", "hello world", PoolingParams(task="embed"), priority=1)
                assert e.value.parameter == "priority"
                assert not eng.has_unfinished_requests()
            else:
                eng.add_request("p", "hello world", PoolingParams(task="embed"), priority=1)
                outs = []
                while eng.has_unfinished_requests():
                    outs.extend(eng.step())
                assert outs[-1].finished and outs[-1].outputs.data.numel() > 0
        finally:
            llm.shutdown()
