"""Bad input gets a clear error (``ValueError`` naming the field and the limit, or a file error
naming the path), nothing stays queued, and the same engine then serves a normal request with
HF's greedy tokens.
"""

from __future__ import annotations

import json
import shutil

import pytest
from engine_checks import PROMPTS, assert_engine_clean, greedy

from pagoda import SamplingParams


@pytest.fixture(scope="module")
def llm(tiny):
    """Context of 64 tokens and a 12-block cache (11 usable blocks of 16 = 176 tokens)."""
    return tiny.llm("llama", max_model_len=64, num_gpu_blocks_override=12)


def serves_normally(tiny, llm) -> None:
    """After an error: idle, no leak, and a normal batch gives HF's greedy tokens."""
    assert_engine_clean(llm)
    outs = llm.generate(PROMPTS[:4], greedy(max_tokens=8), use_tqdm=False)
    for o in outs:
        ref = tiny.hf_ref("llama", o.prompt_token_ids)
        assert o.outputs[0].token_ids == ref.tokens[:8]
    assert_engine_clean(llm)


@pytest.mark.parametrize("prompt,match", [
    ("", "prompt is empty"),
    ({"prompt_token_ids": []}, "prompt is empty"),
    ({"prompt": ""}, "prompt is empty"),
    ([], "prompts is empty"),
    (123, "Unsupported prompts type"),
    ([None], "Unsupported prompt type"),
    ({"text": "hi"}, "needs 'prompt' or 'prompt_token_ids'"),
])
def test_empty_or_malformed_prompt(tiny, llm, prompt, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(prompt, greedy(), use_tqdm=False)
    serves_normally(tiny, llm)


def test_prompt_longer_than_max_model_len(tiny, llm):
    long_prompt = PROMPTS[-1]  # 275 tokens
    with pytest.raises(ValueError, match="maximum context length is 64 tokens") as e:
        llm.generate(long_prompt, greedy(), use_tqdm=False)
    assert "275 in the prompt" in str(e.value)
    serves_normally(tiny, llm)


def test_max_tokens_past_the_context_ends_at_the_context_offline(tiny, llm):
    """vLLM's offline ``LLM`` runs a request whose prompt fits but whose ``max_tokens`` does not up to
    the context length and ends it with ``finish_reason="length"`` (its scheduler's ``check_stop``);
    the server refuses the same request (tests/server/test_errors.py)."""
    ids = llm.get_tokenizer().encode(PROMPTS[7])
    fits = 64 - len(ids)
    assert 0 < fits < 40
    out = llm.generate(PROMPTS[7], greedy(max_tokens=40), use_tqdm=False)[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.outputs[0].token_ids) == fits
    assert out.outputs[0].token_ids == tiny.hf_ref("llama", out.prompt_token_ids, max_new_tokens=fits).tokens
    serves_normally(tiny, llm)


def test_request_larger_than_the_whole_cache(tiny):
    from pagoda import LLM

    small = LLM(str(tiny.path("llama")), dtype="float32", num_gpu_blocks_override=4)  # 3 x 16 = 48 tokens
    with pytest.raises(ValueError, match="whole cache holds 48 tokens"):
        small.generate(PROMPTS[7], greedy(max_tokens=8), use_tqdm=False)  # 22 + 8 fits; 56 + 8 does not
    assert_engine_clean(small)
    out = small.generate(PROMPTS[3], greedy(max_tokens=8), use_tqdm=False)[0]
    assert out.outputs[0].token_ids == tiny.hf_ref("llama", out.prompt_token_ids).tokens[:8]
    assert_engine_clean(small)


def test_one_bad_prompt_in_a_batch_queues_nothing(tiny, llm):
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate([PROMPTS[1], PROMPTS[2], "", PROMPTS[3]], greedy(), use_tqdm=False)
    assert not llm.llm_engine.output_processor.parents
    with pytest.raises(ValueError, match="maximum context length"):
        llm.generate([PROMPTS[1], PROMPTS[-1]], greedy(), use_tqdm=False)
    with pytest.raises(ValueError, match="sampling params for 2 prompts"):
        llm.generate([PROMPTS[1], PROMPTS[2]], [greedy()] * 3, use_tqdm=False)
    serves_normally(tiny, llm)


@pytest.mark.parametrize("kwargs,field", [
    (dict(max_tokens=-1), "max_tokens"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens="5"), "max_tokens"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.1), "top_p"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(n=0), "n"),
    (dict(n=-3), "n"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=1.5), "min_p"),
    (dict(presence_penalty=3.0), "presence_penalty"),
    (dict(frequency_penalty=-2.5), "frequency_penalty"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(logprobs=-2), "logprobs"),  # -1 is the whole vocabulary (vLLM's); the cap is the engine's
    (dict(prompt_logprobs=-2), "prompt_logprobs"),
    (dict(min_tokens=5, max_tokens=2), "min_tokens"),
    (dict(stop=[""]), "stop"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"),
    (dict(seed=1.5), "seed"),
    (dict(logit_bias={5: 1000.0}), "logit_bias"),
])
def test_invalid_sampling_params(kwargs, field):
    with pytest.raises(ValueError) as e:
        SamplingParams(**kwargs)
    assert str(e.value).startswith(field + " "), str(e.value)  # names the field ...
    assert any(w in str(e.value) for w in ("must", "at most", "at least", "cannot")), str(e.value)  # ... and the rule


@pytest.mark.parametrize("field,value", [("top_p", 1.5), ("max_tokens", -1), ("temperature", -1.0), ("n", 0)])
def test_invalid_params_set_after_construction_are_caught_by_the_engine(tiny, llm, field, value):
    sp = greedy()
    setattr(sp, field, value)
    with pytest.raises(ValueError, match=field):
        llm.generate([PROMPTS[1], PROMPTS[2]], sp, use_tqdm=False)
    serves_normally(tiny, llm)


def test_unknown_sampling_field_is_a_type_error():
    with pytest.raises(TypeError, match="keyword argument .temprature."):  # msgspec names the field
        SamplingParams(temprature=0.5)


@pytest.mark.parametrize("prompt", [
    {"prompt_token_ids": [5, 400]},  # vocab is 400
    {"prompt_token_ids": [-1, 5]},
    [5, 6, 10**9],
])
def test_token_ids_out_of_vocabulary(tiny, llm, prompt):
    with pytest.raises(ValueError, match="out of vocabulary"):
        llm.generate(prompt, greedy(), use_tqdm=False)
    serves_normally(tiny, llm)


@pytest.mark.parametrize("prompt", [{"prompt_token_ids": ["a", 5]}, {"prompt_token_ids": [5.0, 6]},
                                    {"prompt_token_ids": [True, 6]}])
def test_token_ids_not_integers(tiny, llm, prompt):
    with pytest.raises(ValueError, match="prompt_token_ids must be a list of integers"):
        llm.generate(prompt, greedy(), use_tqdm=False)
    serves_normally(tiny, llm)


def test_logit_bias_out_of_vocabulary(tiny, llm):
    with pytest.raises(ValueError, match=r"logit_bias contain out-of-vocab token ids. Vocabulary size: 400"):
        llm.generate(PROMPTS[1], greedy(logit_bias={400: 5.0}), use_tqdm=False)
    serves_normally(tiny, llm)


def test_logprobs_above_engine_limit(tiny):
    llm = tiny.llm("llama", max_logprobs=3)
    with pytest.raises(ValueError, match="Requested sample logprobs of 4, which is greater than max allowed: 3"):
        llm.generate(PROMPTS[1], greedy(logprobs=4), use_tqdm=False)
    with pytest.raises(ValueError, match="Requested prompt logprobs of 5, which is greater than max allowed: 3"):
        llm.generate(PROMPTS[1], greedy(prompt_logprobs=5), use_tqdm=False)
    serves_normally(tiny, llm)


@pytest.mark.parametrize("path", ["/nonexistent/pagoda/model", "./no/such/model/dir", "missing.gguf"])
def test_unknown_model_path(tmp_path, path):
    from pagoda import LLM

    with pytest.raises((FileNotFoundError, ValueError)) as e:
        LLM(path)
    assert path.lstrip("./") in str(e.value)


def test_unsupported_architecture(tiny, tmp_path, llm):
    from pagoda import LLM

    # GPT2LMHeadModel runs through the transformers fallback now; an architecture nothing knows is refused.
    folder = tmp_path / "unknown"
    shutil.copytree(tiny.path("llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(architectures=["NoSuchModelForCausalLM"], model_type="no_such_model")
    (folder / "config.json").write_text(json.dumps(cfg))
    for fmt in ("auto", "dummy"):
        with pytest.raises(ValueError) as e:
            LLM(str(folder), load_format=fmt)
        msg = str(e.value)
        assert "NoSuchModelForCausalLM" in msg and "not supported" in msg
        assert "--model-impl transformers" in msg and "plugin" in msg
        for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
            assert arch in msg
    # An engine built before keeps serving.
    serves_normally(tiny, llm)
