"""``SamplingParams.output_kind`` (vLLM's ``RequestOutputKind``): CUMULATIVE (the default) and FINAL_ONLY are
honoured by the engine's outputs (DELTA: tests/test_engine_api_llm_engine.py); other values are refused by name."""

from __future__ import annotations

import msgspec
import pytest
from engine_checks import PROMPTS, assert_engine_clean, greedy

from pagoda.errors import ValidationError
from pagoda.sampling_params import RequestOutputKind, SamplingParams


@pytest.fixture(scope="module")
def llm(llama_llm):
    yield llama_llm
    assert_engine_clean(llama_llm)


def _outputs(llm, params) -> list:
    eng = llm.llm_engine
    eng.add_request("kind", PROMPTS[2], params)
    outs = []
    while eng.has_unfinished_requests():
        outs.extend(eng.step())
    return outs


@pytest.mark.parametrize("n", [1, 3])
def test_final_only_gives_one_output_when_the_request_finishes(llm, n):
    kw = dict(n=n, seed=5, temperature=1.0, max_tokens=6, ignore_eos=True)
    want = llm.generate(PROMPTS[2], SamplingParams(**kw), use_tqdm=False)[0]
    outs = _outputs(llm, SamplingParams(output_kind=RequestOutputKind.FINAL_ONLY, **kw))
    assert len(outs) == 1 and outs[0].finished
    assert [(c.token_ids, c.text) for c in outs[0].outputs] == [(c.token_ids, c.text) for c in want.outputs]


def test_cumulative_is_the_default_and_reports_every_step(llm):
    outs = _outputs(llm, greedy(max_tokens=6))
    assert [len(o.outputs[0].token_ids) for o in outs] == [1, 2, 3, 4, 5, 6]
    assert SamplingParams().output_kind is RequestOutputKind.CUMULATIVE


def test_unknown_kinds_are_refused_by_name():
    for kind in ("partial", 7, True, None):
        with pytest.raises(ValidationError) as e:
            SamplingParams(output_kind=kind)
        assert e.value.parameter == "output_kind"
    for kind in (RequestOutputKind.DELTA, 1, "DELTA"):  # vLLM's DELTA, by member, value or name
        assert SamplingParams(output_kind=kind).output_kind is RequestOutputKind.DELTA
    assert SamplingParams(output_kind=2).output_kind is RequestOutputKind.FINAL_ONLY  # vLLM's value
    assert SamplingParams(output_kind="FINAL_ONLY").output_kind is RequestOutputKind.FINAL_ONLY


def test_output_kind_survives_the_trip_to_the_engine_core():
    sp = SamplingParams(output_kind=RequestOutputKind.FINAL_ONLY, n=2)
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(sp), type=SamplingParams)
    assert back.output_kind is RequestOutputKind.FINAL_ONLY
    with pytest.raises(ValueError, match="output_kind"):  # decoding runs the same checks
        msgspec.msgpack.decode(msgspec.msgpack.encode({"output_kind": 7}), type=SamplingParams)
