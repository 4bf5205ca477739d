"""The offline API as a vLLM user calls it: vLLM's normalisations (seed -1, logprobs=True), fields that exist there
(``truncate_prompt_tokens``, ``LLM.chat``'s ``continue_final_message`` / ``chat_template_kwargs``), and every input
pagoda does not honour refused with an error naming it, never ignored (found by a black-box pass, session 39)."""

from __future__ import annotations

import pytest
from engine_checks import assert_engine_clean, greedy

from pagoda import SamplingParams
from pagoda.config import EngineArgs
from pagoda.errors import ValidationError
from pagoda.pooling.params import PoolingParams


def test_vllm_normalisations():
    """seed -1 is no seed; logprobs / prompt_logprobs True is 1 (vLLM's __post_init__)."""
    assert SamplingParams(seed=-1).seed is None
    assert SamplingParams(seed=5).seed == 5
    p = SamplingParams(logprobs=True, prompt_logprobs=True)
    assert p.logprobs == 1 and p.prompt_logprobs == 1
    with pytest.raises(ValidationError, match="logprobs"):
        SamplingParams(logprobs=False)  # neither an integer nor vLLM's True


@pytest.mark.parametrize("kwargs,field", [
    ({"stop": 5}, "stop"),
    ({"stop": {"a": 1}}, "stop"),  # was silently its keys
    ({"stop_token_ids": 5}, "stop_token_ids"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"skip_special_tokens": "no"}, "skip_special_tokens"),  # a truthy string
    ({"include_stop_str_in_output": 1}, "include_stop_str_in_output"),
    ({"detokenize": False, "stop": ["x"]}, "detokenize"),  # stop strings are matched in the text (vLLM's rule)
    ({"skip_special_tokens": False, "spaces_between_special_tokens": False}, "spaces_between_special_tokens"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
    ({"truncate_prompt_tokens": 2.5}, "truncate_prompt_tokens"),
])
def test_sampling_params_refuse_what_they_would_ignore(kwargs, field):
    with pytest.raises(ValidationError) as e:
        SamplingParams(**kwargs)
    assert e.value.parameter == field


def test_sampling_params_keep_what_they_honour():
    SamplingParams(detokenize=False, stop_token_ids=[3])  # stops without text
    SamplingParams(skip_special_tokens=True, spaces_between_special_tokens=False)  # nothing to space
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop={"a"}).stop == ["a"] and sorted(SamplingParams(stop_token_ids={2, 3}).stop_token_ids) \
        == [2, 3]  # any iterable, as vLLM's list(...)
    assert SamplingParams(truncate_prompt_tokens=-1).truncate_prompt_tokens == -1


@pytest.mark.parametrize("kwargs,field", [
    ({"seed": None}, "seed"),  # EngineArgs' own; LLM(seed=None) is vLLM V1's default seed, 0 (below)
    ({"seed": "1"}, "seed"),
    ({"max_model_len": "big"}, "max_model_len"),
    ({"enable_prefix_caching": "no"}, "enable_prefix_caching"),  # a truthy string would keep it on
    ({"gpu_memory_utilization": "0.5"}, "gpu_memory_utilization"),
    ({"enforce_eager": 1}, "enforce_eager"),
])
def test_engine_args_refuse_values_of_the_wrong_type(kwargs, field):
    """LLM(...) passes its arguments unparsed: a wrong type is a start-up error naming the argument."""
    with pytest.raises(ValueError, match=f"^{field} must be"):
        EngineArgs(**kwargs).validate()
    EngineArgs(gpu_memory_utilization=1, max_model_len=None).validate()  # an int is a number; None the default


@pytest.fixture(scope="module")
def llm(tiny):
    return tiny.llm("qwen2", max_model_len=96)


def test_generate_refuses_what_is_not_sampling_params(llm):
    with pytest.raises(ValidationError, match="got dict") as e:
        llm.generate("hi", {"temperature": 0}, use_tqdm=False)  # type: ignore[arg-type]
    assert e.value.parameter == "sampling_params"
    with pytest.raises(ValidationError, match="LLM.encode") as e:
        llm.generate("hi", PoolingParams(), use_tqdm=False)  # type: ignore[arg-type]
    assert e.value.parameter == "sampling_params"
    assert_engine_clean(llm)


def test_lora_request_none_is_the_base_model_and_an_adapter_is_refused(llm):
    """vLLM scripts pass ``lora_request=None`` (the base model): accepted, the same tokens as without it; an
    adapter on an engine started without ``enable_lora`` is a ValidationError naming the keyword and the flag, not a
    TypeError or a silent base run (tests/test_lora.py runs adapters)."""
    base = llm.generate("hi", greedy(max_tokens=3), use_tqdm=False)[0].outputs[0].token_ids
    assert llm.generate("hi", greedy(max_tokens=3), use_tqdm=False, lora_request=None)[0].outputs[0].token_ids == base
    from pagoda.lora.request import LoRARequest

    adapter = LoRARequest("sql", 1, "/no/such/adapter")
    for call in (lambda: llm.generate("hi", greedy(max_tokens=3), use_tqdm=False, lora_request=adapter),
                 lambda: llm.chat([{"role": "user", "content": "hi"}], greedy(max_tokens=3), use_tqdm=False,
                                  lora_request=adapter)):
        with pytest.raises(ValidationError, match="enable.lora") as e:
            call()
        assert e.value.parameter == "lora_request"
    assert_engine_clean(llm)


@pytest.mark.parametrize("extra", [{"multi_modal_data": {"image": "x"}}, {"mm_processor_kwargs": {}},
                                   {"token_type_ids": [0]}])
def test_prompt_dict_keys_are_never_dropped(llm, extra):
    """A prompt dict key pagoda does not use (multimodal data above all) is an error naming it."""
    with pytest.raises(ValidationError, match=next(iter(extra))) as e:
        llm.generate({"prompt": "hi", **extra}, greedy(max_tokens=2), use_tqdm=False)
    assert e.value.parameter == "prompt"
    assert_engine_clean(llm)


def test_truncate_prompt_tokens_keeps_the_last_tokens(llm):
    """vLLM's left truncation: the request runs on the prompt's last k tokens, exactly as if given alone."""
    ids = list(range(10, 70))
    full = llm.generate({"prompt_token_ids": ids[-16:]}, greedy(max_tokens=6), use_tqdm=False)[0]
    cut = llm.generate({"prompt_token_ids": ids}, greedy(max_tokens=6, truncate_prompt_tokens=16),
                       use_tqdm=False)[0]
    assert cut.prompt_token_ids == ids[-16:]
    assert cut.outputs[0].token_ids == full.outputs[0].token_ids
    with pytest.raises(ValidationError, match=r"\[1, 96\]") as e:  # above the context length
        llm.generate("hi", greedy(max_tokens=2, truncate_prompt_tokens=97), use_tqdm=False)
    assert e.value.parameter == "truncate_prompt_tokens"
    # -1 keeps the context length's worth (96 tokens, vLLM's meaning): no room is left for the output
    with pytest.raises(ValidationError, match="context"):
        llm.generate({"prompt_token_ids": list(range(10, 200))}, greedy(max_tokens=4, truncate_prompt_tokens=-1),
                     use_tqdm=False)
    assert_engine_clean(llm)


def test_request_metrics_are_filled_in(llm):
    out = llm.generate("Hello there", greedy(max_tokens=3), use_tqdm=False)[0]
    m = out.metrics
    assert m is not None and m.first_scheduled_time is not None and m.first_token_time is not None
    assert m.arrival_time <= m.first_scheduled_time + 1e-3 and m.first_scheduled_time <= m.first_token_time + 1e-3


def test_chat_continue_final_message_and_template_kwargs(llm):
    """``LLM.chat`` takes the server's template fields: the last assistant message left open, extra template
    variables; the server's rules for them (one rule: ``engine/chat_template_args.py``)."""
    conv = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "The colour is"}]
    p = llm.chat_prompt(conv, add_generation_prompt=False, continue_final_message=True)
    assert p["prompt"].rstrip().endswith("The colour is")
    closed = llm.chat_prompt(conv, add_generation_prompt=False)
    assert closed["prompt"] != p["prompt"] and closed["prompt"].startswith(p["prompt"].rstrip())
    out = llm.chat(conv, greedy(max_tokens=3), add_generation_prompt=False, continue_final_message=True,
                   use_tqdm=False)[0]
    assert out.prompt_token_ids == p["prompt_token_ids"]
    with pytest.raises(ValidationError, match="cannot both be true") as e:
        llm.chat(conv, greedy(max_tokens=1), continue_final_message=True, use_tqdm=False)
    assert e.value.parameter == "continue_final_message"
    with pytest.raises(ValidationError, match="may not set") as e:
        llm.chat(conv[:1], greedy(max_tokens=1), chat_template_kwargs={"tools": []}, use_tqdm=False)
    assert e.value.parameter == "chat_template_kwargs"
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if shout %}!{% endif %}"
    assert llm.chat_prompt(conv[:1], chat_template=template, chat_template_kwargs={"shout": True})["prompt"] == \
        "Name a colour.!"
    with pytest.raises(ValidationError, match="mm_processor_kwargs"):
        llm.chat(conv[:1], greedy(max_tokens=1), mm_processor_kwargs={"x": 1}, use_tqdm=False)
    with pytest.raises(ValidationError, match="chat_template_content_format"):  # openai is taken now (its own test)
        llm.chat(conv[:1], greedy(max_tokens=1), chat_template_content_format="list", use_tqdm=False)
    assert_engine_clean(llm)


def test_detokenize_false_leaves_every_text_out(llm):
    """``detokenize=False``: no output text and no ``decoded_token`` in the logprobs (vLLM), the same token ids
    and logprob values as with it."""
    on = llm.generate("Hello there", greedy(max_tokens=4, logprobs=2, prompt_logprobs=1), use_tqdm=False)[0]
    off = llm.generate("Hello there", greedy(max_tokens=4, logprobs=2, prompt_logprobs=1, detokenize=False),
                       use_tqdm=False)[0]
    assert off.outputs[0].token_ids == on.outputs[0].token_ids and off.outputs[0].text == ""
    for d_on, d_off in zip(on.outputs[0].logprobs, off.outputs[0].logprobs, strict=True):
        assert list(d_on) == list(d_off) and all(v.decoded_token is None for v in d_off.values())
        assert [v.logprob for v in d_on.values()] == [v.logprob for v in d_off.values()]
        assert any(v.decoded_token for v in d_on.values())
    assert off.prompt_logprobs is not None
    assert all(v.decoded_token is None for d in off.prompt_logprobs[1:] for v in d.values())


def test_an_explicit_step_budget_below_the_context_is_refused_not_raised():
    """vLLM's rule: without chunked prefill (or for a pooling model) a --max-num-batched-tokens under
    --max-model-len is a start-up error; only the default budget is raised to the context length."""
    import torch

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"--max-num-batched-tokens \(100\) is smaller than --max-model-len \(1024\)"):
        EngineArgs(max_num_batched_tokens=100, enable_chunked_prefill=False)._batch_limits(cpu, 1024)
    with pytest.raises(ValueError, match="pooling model"):
        EngineArgs(max_num_batched_tokens=100)._batch_limits(cpu, 1024, pooling=True)
    assert EngineArgs(enable_chunked_prefill=False)._batch_limits(cpu, 4096) == (256, 4096)
    assert EngineArgs(max_num_batched_tokens=100)._batch_limits(cpu, 1024) == (256, 100)  # chunked: fine


def test_a_missing_tokenizer_path_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^--tokenizer .*nope: path does not exist"):
        EngineArgs(tokenizer=str(tmp_path / "nope"), load_format="dummy").create_config()


def test_llm_seed_none_is_vllms_default_seed(tiny):
    """vLLM V1's LLM takes seed=None and runs with seed 0: the same engine seed as LLM() here."""
    from pagoda import LLM

    with LLM(str(tiny.path("qwen2")), dtype="float32", max_model_len=64, seed=None) as llm:
        assert llm.llm_engine.cfg.seed == 0



def test_engine_args_take_vllms_lax_values():
    """What vLLM's lax parsing takes is converted, not refused: a path for a string, a numpy integer or a
    whole-valued float for an integer, a numpy float for a float."""
    from pathlib import Path

    import numpy as np

    a = EngineArgs(model=Path("/tmp/m"), seed=np.int64(3), kv_cache_memory_bytes=4e9,
                   gpu_memory_utilization=np.float32(0.5))
    a._check_types()
    assert (a.model, a.seed, a.kv_cache_memory_bytes) == ("/tmp/m", 3, 4_000_000_000)
    assert type(a.seed) is int and type(a.gpu_memory_utilization) is float
    with pytest.raises(ValueError, match="kv_cache_memory_bytes must be an integer"):
        EngineArgs(kv_cache_memory_bytes=4.5)._check_types()
