"""The offline ``LLM`` as a vLLM script calls it (review, session 43): ``use_tqdm`` as a callable makes the progress
bar (it was taken as True and the callable ignored); ``beam_search`` takes vLLM's ``lora_request`` in vLLM's place
(a TypeError before; a positional ``use_tqdm`` then became ``lora_request``) and refuses what is not a
``BeamSearchParams`` naming ``params`` (AttributeError before); ``chat``'s parameters are in vLLM's order, so a
positional call means the same; ``lora_request`` may be vLLM's list of one per prompt; the pooling methods take
``lora_request`` too."""

from __future__ import annotations

import functools

import pytest
from engine_checks import assert_engine_clean, greedy
from tqdm.auto import tqdm

from pagoda import LLM, BeamSearchParams, PoolingParams, SamplingParams
from pagoda.errors import ValidationError

CONV = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def llm(tiny):
    return tiny.llm("qwen2", max_model_len=96)


class Bar:
    """What the engine uses of a tqdm bar: ``update`` and ``close``."""

    def __init__(self) -> None:
        self.n = 0
        self.closed = False

    def update(self, k: int = 1) -> None:
        self.n += k

    def close(self) -> None:
        self.closed = True


class BarFactory:
    """vLLM's ``use_tqdm`` callable (e.g. ``functools.partial(tqdm, leave=False)``): records each bar it makes."""

    def __init__(self) -> None:
        self.bars: list[tuple[dict, Bar]] = []

    def __call__(self, **kwargs):
        bar = Bar()
        self.bars.append((kwargs, bar))
        return bar


def test_use_tqdm_callable_makes_the_progress_bar(llm):
    """vLLM: ``tqdm_func = use_tqdm if callable(use_tqdm) else tqdm``; it is called for the bar and counts every
    finished prompt. The outputs are those of a run without a bar."""
    prompts = ["Hello there", "Paris is", "The quick brown fox"]
    plain = llm.generate(prompts, greedy(max_tokens=3), use_tqdm=False)
    make = BarFactory()
    outs = llm.generate(prompts, greedy(max_tokens=3), use_tqdm=make)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in plain]
    assert len(make.bars) == 1
    kwargs, bar = make.bars[0]
    assert kwargs["total"] == 3 and kwargs["desc"] == "Processed prompts" and bar.n == 3 and bar.closed

    make = BarFactory()
    llm.chat([CONV, CONV], greedy(max_tokens=2), use_tqdm=make)
    assert [(kw["total"], bar.n) for kw, bar in make.bars] == [(2, 2)]

    make = BarFactory()
    llm.beam_search(["Hello there"], BeamSearchParams(beam_width=2, max_tokens=3), use_tqdm=make)
    assert len(make.bars) == 1 and make.bars[0][0]["total"] == 3 and 1 <= make.bars[0][1].n <= 3

    # the partial vLLM's docstring shows works as is (its bar goes to stderr)
    assert len(llm.generate("Hello", greedy(max_tokens=1), use_tqdm=functools.partial(tqdm, leave=False))) == 1
    assert_engine_clean(llm)


def test_beam_search_takes_vllms_signature(llm):
    """vLLM: ``beam_search(prompts, params, lora_request=None, use_tqdm=False, concurrency_limit=None)``."""
    params = BeamSearchParams(beam_width=2, max_tokens=4)
    prompts = [{"prompt": "Hello there"}, {"prompt": "Paris is"}]
    ref = llm.beam_search(prompts, params)
    for out in (llm.beam_search(prompts, params, lora_request=None),
                llm.beam_search(prompts, params, None, False, 1)):  # positional, in vLLM's order
        assert [[s.tokens for s in o.sequences] for o in out] == [[s.tokens for s in o.sequences] for o in ref]
        for o, r in zip(out, ref, strict=True):  # another batch shape (concurrency_limit=1): fp32 rounding
            assert [s.cum_logprob for s in o.sequences] == pytest.approx([s.cum_logprob for s in r.sequences],
                                                                         abs=1e-4)
    with pytest.raises(ValidationError, match="LoRA") as e:
        llm.beam_search(prompts, params, lora_request=object())
    assert e.value.parameter == "lora_request"
    with pytest.raises(ValidationError, match="BeamSearchParams.*not a SamplingParams option") as e:
        llm.beam_search(prompts, SamplingParams(n=2, max_tokens=4))  # type: ignore[arg-type]
    assert e.value.parameter == "params"
    assert_engine_clean(llm)


def test_chat_positional_arguments_mean_what_they_mean_in_vllm(llm):
    """vLLM's order: messages, sampling_params, use_tqdm, lora_request, chat_template,
    chat_template_content_format, add_generation_prompt, continue_final_message, tools, chat_template_kwargs."""
    template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    out = llm.chat(CONV, greedy(max_tokens=2), False, None, template, "string", False)[0]
    assert out.prompt == "[Name a colour.]"
    out = llm.chat(CONV, greedy(max_tokens=2), False, None, template)[0]
    assert out.prompt == "[Name a colour.]>"
    assert_engine_clean(llm)


def test_lora_request_list_of_none_per_prompt(llm):
    """vLLM takes ``lora_request`` as one for all prompts or a list of one per prompt; None is the base model."""
    prompts = ["Hello there", "Paris is"]
    base = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy(max_tokens=3), use_tqdm=False)]
    outs = llm.generate(prompts, greedy(max_tokens=3), use_tqdm=False, lora_request=[None, None])
    assert [o.outputs[0].token_ids for o in outs] == base
    assert len(llm.chat([CONV, CONV], greedy(max_tokens=1), use_tqdm=False, lora_request=[None, None])) == 2
    with pytest.raises(ValidationError, match="1 lora requests for 2 prompts") as e:
        llm.generate(prompts, greedy(max_tokens=3), use_tqdm=False, lora_request=[None])
    assert e.value.parameter == "lora_request"
    with pytest.raises(ValidationError, match="LoRA") as e:
        llm.generate(prompts, greedy(max_tokens=3), use_tqdm=False, lora_request=[None, object()])
    assert e.value.parameter == "lora_request"
    assert_engine_clean(llm)


def test_a_refused_prompt_of_a_batch_is_named_by_its_index(llm):
    """One prompt of a large batch refused: the error names which (its index in the caller's list), keeps the field
    and code, and nothing of the batch stays queued."""
    long = {"prompt_token_ids": list(range(10, 130))}  # over the 96-token context
    with pytest.raises(ValidationError, match=r"^prompt 2: This model's maximum context length is 96") as e:
        llm.generate(["Hello", "Paris is", long, "more"], greedy(max_tokens=2), use_tqdm=False)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(ValidationError, match="^prompt 1: .*logprobs") as e:
        llm.generate(["Hello", "Paris is"], [greedy(max_tokens=2), greedy(max_tokens=2, logprobs=50)], use_tqdm=False)
    assert e.value.parameter == "logprobs"
    with pytest.raises(ValidationError, match="^This model's maximum context length") as e:  # one prompt: as it was
        llm.generate(long, greedy(max_tokens=2), use_tqdm=False)
    assert_engine_clean(llm)


def test_disable_log_stats_error_shows_the_value_given(tiny):
    with pytest.raises(ValueError, match=r"LLM\(disable_log_stats=None\).*only True"):
        LLM(str(tiny.path("qwen2")), disable_log_stats=None)  # type: ignore[arg-type]


def test_pooling_methods_take_lora_request(tmp_path_factory):
    """vLLM's embed / classify / encode / reward / score take ``lora_request``: None is the base model, an adapter
    is refused naming it."""
    from pooling_models import build_pooling_model

    path = build_pooling_model(tmp_path_factory.mktemp("review_llm") / "bert", "bert")
    with LLM(str(path), dtype="float32", max_model_len=32) as llm:
        base = llm.embed(["the quick brown fox", "tokens"], use_tqdm=False)
        same = llm.embed(["the quick brown fox", "tokens"], use_tqdm=False, lora_request=None)
        assert [o.outputs.embedding for o in same] == [o.outputs.embedding for o in base]
        make = BarFactory()
        llm.encode("tokens", PoolingParams(task="embed"), use_tqdm=make, lora_request=[None])
        assert [(kw["total"], bar.n) for kw, bar in make.bars] == [(1, 1)]
        assert len(llm.score("a fox", ["the quick brown fox", "tokens"], use_tqdm=False, lora_request=None)) == 2
        # a refused text is named by its index in the caller's list, though the batch runs longest first
        long = {"prompt_token_ids": list(range(5, 60))}
        with pytest.raises(ValidationError, match="^prompt 2: .*maximum context length"):
            llm.embed(["tokens", "the quick brown fox", long], use_tqdm=False)
        for call in (lambda: llm.embed("x", lora_request=object(), use_tqdm=False),
                     lambda: llm.score("x", "y", lora_request=object(), use_tqdm=False)):
            with pytest.raises(ValidationError, match="LoRA") as e:
                call()
            assert e.value.parameter == "lora_request"
