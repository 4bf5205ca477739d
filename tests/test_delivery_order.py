"""A step's outputs reach the streams first tokens first (AsyncLLM._on_step, first_tokens_first)."""

from __future__ import annotations

from types import SimpleNamespace

from pagoda import SamplingParams
from pagoda.engine.async_llm import AsyncLLM, RequestStream, first_tokens_first
from pagoda.engine.messages import EngineCoreOutput, EngineCoreOutputs, StepOutputs
from pagoda.engine.output_processor import OutputProcessor


def _out(rid: str, *tokens: int) -> EngineCoreOutput:
    return EngineCoreOutput(rid, list(tokens))


def test_first_tokens_lead_each_group_in_core_order():
    outs = [_out("a", 1), _out("new1", 2), _out("b", 3), _out("chunk"), _out("new2", 4), _out("c", 5)]
    order = [o.request_id for o in first_tokens_first(outs, {"a", "b", "c"})]
    assert order == ["new1", "new2", "a", "b", "chunk", "c"]  # a prefill chunk with no token is not a first token


def test_nothing_to_reorder_keeps_the_list():
    outs = [_out("a", 1), _out("b", 2)]
    assert first_tokens_first(outs, {"a", "b"}) is outs
    assert first_tokens_first(outs, set()) is outs


def test_on_step_delivers_new_requests_first():
    llm = AsyncLLM(SimpleNamespace(data_parallel_size=1))  # type: ignore[arg-type]  # no core: _on_step only
    op = llm.output_processor = OutputProcessor(tokenizer=None)
    params = SamplingParams(max_tokens=8, detokenize=False)
    for rid in ("old1", "new", "old2"):
        op.add_request(rid, None, [1, 2, 3], params)
        llm._streams[rid] = RequestStream(llm, rid, op.parents[rid], [1, 2, 3])
    llm._last_token_time.update(old1=0.0, old2=0.0)  # old1 and old2 streamed a token in an earlier step
    delivered: list[str] = []
    real = llm._deliver
    llm._deliver = lambda res: (delivered.append(res.request_id), real(res))  # type: ignore[method-assign]
    llm._on_step(StepOutputs(EngineCoreOutputs([_out("old1", 7), _out("new", 8), _out("old2", 9)])), 0)
    assert delivered == ["new", "old1", "old2"]
    assert [llm._streams[r]._latest.outputs[0].token_ids for r in ("old1", "new", "old2")] == [[7], [8], [9]]
    assert set(llm._last_token_time) == {"old1", "new", "old2"}
