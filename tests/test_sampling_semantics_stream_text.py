"""The text of a running request's cumulative outputs (``LLMEngine.step``, ``AsyncLLM.generate``) with stop strings.

vLLM holds back the last ``max(len(stop)) - 1`` characters of a running request's text when stop strings are
left out of the output (``stop_buffer_length``), so every output's text is a prefix of the final one: text that
may begin a stop string is never shown and then taken back.
"""

from __future__ import annotations

import pytest
from engine_checks import PROMPTS, assert_engine_clean, greedy


@pytest.fixture(scope="module")
def llm(llama_llm):
    yield llama_llm
    assert_engine_clean(llama_llm)


def _step_texts(llm, prompt: str, params) -> list[tuple[str, bool]]:
    eng = llm.llm_engine
    eng.add_request("stream-text", prompt, params)
    seen: list[tuple[str, bool]] = []
    while eng.has_unfinished_requests():
        for o in eng.step():
            seen.append((o.outputs[0].text, o.finished))
    return seen


def _ascii_ids(llm) -> list[int]:
    """Tokens whose text is printable ASCII: an output made of them has no partial characters."""
    tok = llm.get_tokenizer()
    V = llm.llm_engine.input_processor.limits.vocab_size
    return [t for t in range(V) if (s := tok.decode([t])) and s.isascii() and s.isprintable()]


def _spanning_stop(llm, prompt: str) -> str:
    """A stop string made of 3 tokens' text from the middle of the (ASCII) greedy output: it spans tokens, so a
    running output has shown its first characters before the token that completes it."""
    tok = llm.get_tokenizer()
    ids = llm.generate(prompt, greedy(max_tokens=24, allowed_token_ids=_ascii_ids(llm)),
                       use_tqdm=False)[0].outputs[0].token_ids
    return tok.decode(ids[8:11])


@pytest.mark.parametrize("include", [False, True])
def test_running_text_is_always_a_prefix_of_the_final_text(llm, include):
    prompt = PROMPTS[8]
    stop = _spanning_stop(llm, prompt)
    params = greedy(max_tokens=24, stop=[stop], include_stop_str_in_output=include,
                    allowed_token_ids=_ascii_ids(llm))
    final = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
    assert final.finish_reason == "stop" and final.stop_reason == stop  # control: the stop string ends it
    seen = _step_texts(llm, prompt, params)
    assert seen[-1] == (final.text, True)
    for text, _ in seen:
        assert final.text.startswith(text), (text, final.text)
    if not include:  # the held-back tail is never more than the longest stop string's length - 1
        assert len(seen[-2][0]) >= len(final.text) - (len(stop) - 1)


def test_without_stop_strings_nothing_is_held_back(llm):
    prompt = PROMPTS[2]
    params = greedy(max_tokens=12)
    seen = _step_texts(llm, prompt, params)
    ids = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    tok = llm.get_tokenizer()
    assert len(seen) == len(ids)
    for j, (text, _) in enumerate(seen):  # the text of the tokens so far (less a partial character)
        full = tok.decode(ids[: j + 1])
        assert full.startswith(text) and len(full.rstrip("\ufffd")) - len(text) <= 1
