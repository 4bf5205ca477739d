"""Admission (pagoda/engine/admission.py): every check raises ``ValidationError`` naming the request
field (``.parameter``), from the offline ``LLM`` and from the pure functions; the engine protocol's
messages round-trip through msgpack as typed Structs.
"""

from __future__ import annotations

import msgspec
import pytest
from engine_checks import PROMPTS, assert_engine_clean, greedy

from pagoda import BeamSearchParams, SamplingParams
from pagoda.engine import admission, messages
from pagoda.engine.messages import AdmissionLimits
from pagoda.errors import EngineInvariantError, ValidationError

LIMITS = AdmissionLimits(max_model_len=64, vocab_size=400, max_logprobs=5, kv_cache_tokens=48,
                         max_num_batched_tokens=32, enable_chunked_prefill=True)


def refused(fn, *args, **kwargs) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        fn(*args, **kwargs)
    return e.value


# ------------------------------------------------------------------------ pure checks
@pytest.mark.parametrize("ids,match", [([], "empty"), ([1, "a"], "integers"), ([1, True], "integers"),
                                       ([1, 400], "Token id 400"), ([-1], "Token id -1")])
def test_prompt_ids(ids, match):
    e = refused(admission.check_prompt_ids, ids, LIMITS)
    assert e.parameter == "prompt" and match in str(e)


def test_context_length_names_prompt_or_max_tokens():
    e = refused(admission.check_length, 64, None, LIMITS)  # no room for one token
    assert e.parameter == "prompt" and e.code == "context_length_exceeded"
    assert str(e).startswith("This model's maximum context length is 64 tokens. However, you requested 65 tokens")
    e = refused(admission.check_length, 10, 60, LIMITS)
    assert e.parameter == "max_tokens" and e.code == "context_length_exceeded" and "(10 in the prompt, 60 in" in str(e)
    big_cache = msgspec.structs.replace(LIMITS, kv_cache_tokens=1000)
    assert admission.check_length(10, None, big_cache) == 54  # up to the context length
    assert admission.check_length(10, 5, LIMITS) == 5
    # The offline LLM's cap (vLLM's): cut to the context, the prompt itself still checked.
    assert admission.check_length(10, 60, big_cache, cap_to_context=True) == 54
    assert admission.check_length(10, 5, big_cache, cap_to_context=True) == 5
    e = refused(admission.check_length, 64, 5, big_cache, cap_to_context=True)
    assert e.parameter == "prompt" and e.code == "context_length_exceeded"


def test_kv_capacity_and_token_budget():
    e = refused(admission.check_length, 40, 10, LIMITS)  # fits 64, not the 48-token cache
    assert e.parameter == "max_tokens" and "whole cache holds 48 tokens" in str(e) and e.code is None
    e = refused(admission.check_length, 50, 1, msgspec.structs.replace(LIMITS, max_model_len=100))
    assert e.parameter == "prompt"
    no_chunk = msgspec.structs.replace(LIMITS, enable_chunked_prefill=False)
    admission.check_length(32, 1, no_chunk)
    e = refused(admission.check_length, 33, 1, no_chunk)
    assert e.parameter == "prompt" and "max_num_batched_tokens=32" in str(e)


@pytest.mark.parametrize("params,param", [
    (SamplingParams(logprobs=6), "logprobs"),
    (SamplingParams(prompt_logprobs=6), "prompt_logprobs"),
    (SamplingParams(logit_bias={400: 1.0}), "logit_bias"),
])
def test_sampling_against_the_engine(params, param):
    e = refused(admission.check_sampling, params, LIMITS)
    assert e.parameter == param
    if param == "logit_bias":
        assert param in str(e)
    else:  # vLLM's words
        kind = "prompt" if param == "prompt_logprobs" else "sample"
        assert str(e) == f"Requested {kind} logprobs of 6, which is greater than max allowed: 5"


def test_all_logprobs_is_the_vocabulary():
    """-1 asks for the whole vocabulary: refused above the cap, resolved to the vocabulary size below it."""
    e = refused(admission.check_sampling, SamplingParams(logprobs=-1), LIMITS)
    assert str(e) == f"Requested sample logprobs of {LIMITS.vocab_size}, which is greater than max allowed: 5"
    uncapped = msgspec.structs.replace(LIMITS, max_logprobs=LIMITS.vocab_size)
    p = SamplingParams(logprobs=-1, prompt_logprobs=-1)
    admission.check_sampling(p, uncapped)
    r = admission.resolve_all_logprobs(p, uncapped)
    assert (r.logprobs, r.prompt_logprobs) == (LIMITS.vocab_size, LIMITS.vocab_size)
    assert admission.resolve_all_logprobs(SamplingParams(logprobs=2), uncapped).logprobs == 2


@pytest.mark.parametrize("kwargs,param", [
    (dict(n=0), "n"), (dict(n=129), "n"), (dict(top_p=0.0), "top_p"), (dict(temperature=-1), "temperature"),
    (dict(max_tokens=0), "max_tokens"), (dict(min_tokens=3, max_tokens=2), "min_tokens"), (dict(stop=[""]), "stop"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"), (dict(logprobs=-2), "logprobs"), (dict(seed=2**64), "seed"),
    (dict(logit_bias={1: 101.0}), "logit_bias"), (dict(logit_bias={"x": 1.0}), "logit_bias"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(top_k=-3), "top_k"), (dict(min_p=2), "min_p"),
])
def test_sampling_params_ranges_name_the_field(kwargs, param):
    e = refused(SamplingParams, **kwargs)
    assert e.parameter == param and str(e).startswith(param + " ")


def test_params_assigned_after_construction_are_checked_again():
    sp = SamplingParams()
    sp.n = 0
    assert refused(admission.check_sampling, sp, LIMITS).parameter == "n"


def test_beam_search_limits():
    e = refused(admission.check_beam_search, [1, 2], BeamSearchParams(beam_width=2, max_tokens=4), [0, 1], LIMITS)
    assert e.parameter == "beam_width" and "max_logprobs=5" in str(e)  # (1 + 2 EOS) x 2 = 6 candidates > 5
    wide = msgspec.structs.replace(LIMITS, max_logprobs=20)
    e = refused(admission.check_beam_search, [1, 2], BeamSearchParams(beam_width=2, max_tokens=4), [0], wide,
                logprobs=21)
    assert e.parameter == "logprobs"
    e = refused(admission.check_beam_search, [1] * 10, BeamSearchParams(beam_width=2, max_tokens=60), [0], wide)
    assert e.parameter == "max_tokens" and e.code == "context_length_exceeded"
    e = refused(admission.check_beam_search, [1, 999], BeamSearchParams(beam_width=2, max_tokens=4), [0], wide)
    assert e.parameter == "prompt"
    assert refused(BeamSearchParams, beam_width=0, max_tokens=4).parameter == "beam_width"


def test_truncate_cache_salt_request_id():
    assert refused(admission.check_truncate_prompt_tokens, 0, LIMITS).parameter == "truncate_prompt_tokens"
    assert refused(admission.check_truncate_prompt_tokens, 65, LIMITS).parameter == "truncate_prompt_tokens"
    admission.check_truncate_prompt_tokens(64, LIMITS)
    assert refused(admission.check_cache_salt, "").parameter == "cache_salt"
    assert refused(admission.check_request_id_free, "r", True).parameter == "request_id"


def test_renamed_error_follows_the_endpoints_name():
    e = refused(SamplingParams, logprobs=-2)
    r = e.renamed({"logprobs": "top_logprobs"})
    assert r.parameter == "top_logprobs" and str(r) == "top_logprobs must be non-negative or -1, got -2."
    assert isinstance(r, ValueError) and e.renamed({"n": "x"}) is e


# ------------------------------------------------------------------------ offline LLM
@pytest.fixture(scope="module")
def llm(tiny):
    """Context of 64 tokens, 12-block cache (176 tokens), at most 3 logprobs."""
    return tiny.llm("llama", max_model_len=64, num_gpu_blocks_override=12, max_logprobs=3)


@pytest.mark.parametrize("prompt,params,param", [
    ("", greedy(), "prompt"),
    ({"prompt_token_ids": [5, 400]}, greedy(), "prompt"),
    ({"prompt_token_ids": ["a"]}, greedy(), "prompt"),
    ({"text": "x"}, greedy(), "prompt"),
    (PROMPTS[-1], greedy(), "prompt"),  # 275 tokens > 64
    (PROMPTS[1], greedy(logprobs=4), "logprobs"),
    (PROMPTS[1], greedy(prompt_logprobs=4), "prompt_logprobs"),
    (PROMPTS[1], greedy(logit_bias={400: 1.0}), "logit_bias"),
    ({"prompt": PROMPTS[1], "cache_salt": ""}, greedy(), "cache_salt"),
])
def test_llm_refuses_with_the_parameter(llm, prompt, params, param):
    with pytest.raises(ValidationError) as e:
        llm.generate(prompt, params, use_tqdm=False)
    assert e.value.parameter == param, e.value
    assert_engine_clean(llm)


def test_llm_beam_search_and_request_id(llm):
    with pytest.raises(ValidationError) as e:
        llm.beam_search("Hi", BeamSearchParams(beam_width=2, max_tokens=4))  # needs 2 x >= 2 logprobs > 3
    assert e.value.parameter == "beam_width"
    eng = llm.llm_engine
    eng.add_request("dup", PROMPTS[1], greedy(max_tokens=2))
    with pytest.raises(ValidationError) as e:
        eng.add_request("dup", PROMPTS[1], greedy(max_tokens=2))
    assert e.value.parameter == "request_id"
    while eng.has_unfinished_requests():
        eng.step()
    assert_engine_clean(llm)


@pytest.mark.parametrize("first,second", [(("x", 2), ("1_x", 1)), (("1_x", 1), ("x", 2))])
def test_a_request_id_that_is_another_requests_sample_id_is_refused(llm, first, second):
    """An n = 2 request "x" runs as samples "0_x" and "1_x": a request "1_x" beside it (either one first) is a
    ValidationError naming request_id, not the core's invariant error, and the first request runs on."""
    eng = llm.llm_engine
    eng.add_request(first[0], PROMPTS[1], greedy(max_tokens=2, n=first[1]))
    with pytest.raises(ValidationError, match="already in use") as e:
        eng.add_request(second[0], PROMPTS[2], greedy(max_tokens=2, n=second[1]))
    assert e.value.parameter == "request_id"
    done = {}
    while eng.has_unfinished_requests():
        done.update((o.request_id, o) for o in eng.step() if o.finished)
    assert list(done) == [first[0]] and len(done[first[0]].outputs) == first[1]
    assert_engine_clean(llm)


def test_core_limits_are_the_front_ends(llm):
    core = llm.llm_engine.core
    lim = llm.llm_engine.input_processor.limits
    assert lim == core.admission_limits()
    assert lim.max_model_len == 64 and lim.max_logprobs == 3 and lim.kv_cache_tokens == 11 * 16
    assert lim.vocab_size == 400


def test_scheduler_invariant_behind_admission(llm):
    """A request that bypasses admission is refused by the scheduler as a bug, and nothing leaks."""
    from pagoda.engine.messages import EngineCoreRequest

    r = EngineCoreRequest("bypass", [1] * 60, SamplingParams(max_tokens=10), [], 10, 0.0)
    with pytest.raises(EngineInvariantError, match="admission should have refused it"):
        llm.llm_engine.core.add_request(r)
    assert_engine_clean(llm)


# ------------------------------------------------------------------ typed protocol
def _every_message() -> list:
    sp = SamplingParams(temperature=0.5, top_k=3, stop=["x"], logit_bias={7: 1.5}, seed=2**63, logprobs=2,
                        max_tokens=9)
    req = messages.EngineCoreRequest("r", [1, 2, 3], sp, [0], 9, 1.5, cache_salt="s", fork_of="q")
    out = messages.EngineCoreOutput(
        "r", [5], new_logprobs=[messages.TokenLogprobs(-0.5, 1, [5, 6], [-0.5, -1.5])],
        prompt_logprobs=messages.PromptLogprobs(1, [-1.0], [2], [[3, 4]], [[-0.1, -1.0]]),
        finish_reason="length", stop_reason=None, num_cached_tokens=16)
    stats = messages.SchedulerStats(num_running=1, kv_cache_usage=0.25, prefix_cache_hits=3)
    outs = messages.EngineCoreOutputs([out, messages.EngineCoreOutput("e", [], error="boom")], stats)
    return [
        messages.AddRequest(req), messages.AbortRequests(["a", "b"]), messages.FinishRequests(["c"]),
        messages.ResetPrefixCache(7), messages.Shutdown(),
        messages.Ready(12, 100, 16, LIMITS, 1.25), messages.Heartbeat(stats),
        messages.StepOutputs(outs, [messages.QueueTime("r", 0.5)]),
        messages.Rejected("r", "no", "max_tokens", "context_length_exceeded"),
        messages.Rejected("r", "bug", internal=True),
        messages.PrefixCacheReset(7, True), messages.CoreFailed("dead"),
    ]


def test_every_message_round_trips_typed():
    enc = messages.encoder()
    ins, outs = messages.input_decoder(), messages.output_decoder()
    for msg in _every_message():
        dec = ins if isinstance(msg, messages.CoreInput.__args__) else outs  # type: ignore[attr-defined]
        back = dec.decode(enc.encode(msg))
        assert type(back) is type(msg) and back == msg, msg
    add = ins.decode(enc.encode(_every_message()[0]))
    assert isinstance(add.request.sampling_params, SamplingParams)
    assert add.request.sampling_params.logit_bias == {7: 1.5} and add.request.sampling_params.stop == ["x"]
    step = outs.decode(enc.encode(_every_message()[7]))
    assert isinstance(step.outputs.outputs[0].new_logprobs[0], messages.TokenLogprobs)
    assert isinstance(step.outputs.outputs[0].prompt_logprobs, messages.PromptLogprobs)


def test_messages_are_structs_not_dicts():
    for cls in (messages.EngineCoreRequest, messages.EngineCoreOutput, messages.EngineCoreOutputs,
                messages.SchedulerStats, messages.AdmissionLimits, SamplingParams):
        assert issubclass(cls, msgspec.Struct), cls
    hints = msgspec.structs.fields(messages.EngineCoreRequest)
    assert next(f for f in hints if f.name == "sampling_params").type is SamplingParams


def test_decoding_runs_the_sampling_checks():
    enc = messages.encoder()
    good = messages.AddRequest(messages.EngineCoreRequest("r", [1], SamplingParams(), [0], 4, 0.0))
    raw = msgspec.msgpack.decode(enc.encode(good))
    raw["request"]["sampling_params"]["top_p"] = 0.0
    with pytest.raises(msgspec.ValidationError, match="top_p"):
        messages.input_decoder().decode(msgspec.msgpack.encode(raw))


def test_rejected_becomes_a_validation_error_with_its_parameter():
    """A refusal only the core could detect reaches the caller as the same typed error."""
    from pagoda.engine.async_llm import AsyncLLM
    from pagoda.engine.output_processor import OutputProcessor

    class Tok:
        def decode(self, *a, **k):
            return ""

    eng = AsyncLLM.__new__(AsyncLLM)
    eng.output_processor = OutputProcessor(Tok())
    eng._streams = {}
    eng._times = {}  # per-request timing (request_stats), as __init__ sets it
    eng._owner = {}  # request id -> data-parallel replica, as __init__ sets it
    eng.state = "ready"
    failures: list[BaseException] = []

    class Stream:
        def _fail(self, e):
            failures.append(e)

    for rid, msg in (("a", messages.Rejected("a", "too long", "max_tokens", "context_length_exceeded")),
                     ("b", messages.Rejected("b", "bug", internal=True))):
        eng.output_processor.add_request(rid, None, [1, 2], SamplingParams(detokenize=False))
        eng._streams[rid] = Stream()
        eng._on_rejected(msg)
    a, b = failures
    assert isinstance(a, ValidationError) and a.parameter == "max_tokens" and a.code == "context_length_exceeded"
    assert isinstance(b, RuntimeError) and not isinstance(b, ValueError)
    assert not eng._streams and not eng.output_processor.parents
