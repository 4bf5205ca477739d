"""A request that the front end finished (a stop string) or aborted between steps frees its draft model's shadow
(and its draft KV blocks) at once, not at some later step with work (found by the combination fuzzer behind
tests/test_feature_combinations.py: an idle engine kept them).

``EngineCore.finish_requests`` and ``EngineCore.abort_requests`` end requests outside a step, so they call
``SpecDecoder.release`` themselves; ``test_draft_model_greedy_identical`` covers requests that end by max_tokens.
"""

from __future__ import annotations

from engine_checks import assert_engine_clean, greedy

from pagoda import SamplingParams

PROMPT = "Paris is the capital of"


def _draft_llm(tiny):
    from pagoda import LLM

    path = str(tiny.path("llama"))
    # Synchronous steps (the GPU's default keeps one step in flight, which would end the request in a step):
    # the point is what happens between steps.
    return LLM(path, dtype="float32", async_scheduling=False,
               speculative_config={"model": path, "num_speculative_tokens": 2})


def test_stop_string_frees_the_draft_shadow(tiny):
    llm = _draft_llm(tiny)
    ref = llm.generate([PROMPT], greedy(20), use_tqdm=False)[0].outputs[0]
    assert not llm.llm_engine.core.spec.proposer.shadows  # ended by max_tokens: freed at the update
    stop = ref.text[5:8]
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=20, stop=[stop]), use_tqdm=False)[0]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert_engine_clean(llm)
    assert not llm.llm_engine.core.spec.proposer.shadows, "the stopped request's draft shadow is still held"
    llm.shutdown()


def test_abort_frees_the_draft_shadow(tiny):
    llm = _draft_llm(tiny)
    eng = llm.llm_engine
    eng.add_request("victim", PROMPT, greedy(20))
    for _ in range(3):
        eng.step()
    assert "victim" in eng.core.spec.proposer.shadows  # it has speculated
    eng.abort_request("victim")
    assert_engine_clean(llm)
    assert not eng.core.spec.proposer.shadows, "the aborted request's draft shadow is still held"
    llm.shutdown()
