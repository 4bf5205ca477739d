"""Reasoning split semantics beyond the recorded outputs of test_reasoning_parsers: where the thinking is
*closed* (the prompt's last reasoning tag is ``</think>``, or qwen3 with ``enable_thinking: false``), an output
that opens ``<think>`` itself thinks anew (a tool loop whose earlier assistant turn left ``</think>`` in the
prompt), and an output that does not is all content; every split is prefix-monotone, so a stream cut anywhere
reassembles to the non-streamed message. Also the messages the chat template gets: an assistant's ``reasoning``
(vLLM's current name) reaches it as ``reasoning_content`` too, as vLLM passes it."""

from __future__ import annotations

import itertools

import pytest
from test_reasoning_parsers import stream_message

from pagoda.engine.chat_template_args import template_messages
from pagoda.entrypoints.openai.chat_output import ChatOutputParser
from pagoda.reasoning import get_reasoning_parser

OFF = {"enable_thinking": False}


def parser(name: str, kwargs: dict | None = None, prompt_ends: bool = False):
    p = get_reasoning_parser(name, kwargs)
    p.prompt_ends_reasoning = prompt_ends
    return p


def message(name: str, kwargs: dict | None, prompt_ends: bool, text: str) -> tuple[str | None, str | None]:
    m = ChatOutputParser(parser(name, kwargs, prompt_ends), None).message(text)
    return m.reasoning, m.content


def streamed(name: str, kwargs: dict | None, prompt_ends: bool, text: str, step: int) -> tuple[str, str]:
    s = stream_message(ChatOutputParser(parser(name, kwargs, prompt_ends), None), text, step)
    return s["reasoning"], s["content"]


CLOSED = [("qwen3", None, True), ("deepseek_r1", None, True), ("qwen3", OFF, False), ("qwen3", OFF, True)]
"""Parser settings where the thinking is closed before the output starts."""


@pytest.mark.parametrize("name,kwargs,prompt_ends", CLOSED)
def test_output_that_opens_think_after_a_closed_prompt_is_reasoning(name, kwargs, prompt_ends):
    text = "<think>\nThe tool said 18 C.\n</think>\n\nIt is 18 C in Paris."
    want = ("\nThe tool said 18 C.\n", "\n\nIt is 18 C in Paris.")
    assert message(name, kwargs, prompt_ends, text) == want
    for step in (1, 2, 5):  # before: the thinking streamed as content, then again as reasoning
        assert streamed(name, kwargs, prompt_ends, text, step) == want, step
    cut = "<think>\nThe tool said"  # max_tokens hit inside the new thinking: all reasoning, no content
    assert message(name, kwargs, prompt_ends, cut) == ("\nThe tool said", None)
    assert streamed(name, kwargs, prompt_ends, cut, 1) == ("\nThe tool said", "")


@pytest.mark.parametrize("name,kwargs,prompt_ends", CLOSED)
def test_closed_output_without_think_is_all_content(name, kwargs, prompt_ends):
    text = "Paris. A stray </think> tag stays in the answer."
    assert message(name, kwargs, prompt_ends, text) == (None, text)
    for step in (1, 3):  # before: streamed as content, then re-split into reasoning and a shorter content
        assert streamed(name, kwargs, prompt_ends, text, step) == ("", text), step


TEXTS = ["", "  ", "<", "<th", "<think>", "<think></think>", "\n<think>a</think>b", "a</think>b", "a</th",
         "<think>a</thi", "x<think>y</think>z", "</think>", "<think>a</think>b</think>c", " <thinking> a"]


@pytest.mark.parametrize("name,kwargs,prompt_ends", [
    (n, k, p) for n, k, p in itertools.product(("qwen3", "deepseek_r1"), (None, OFF), (False, True))
    if not (n == "deepseek_r1" and k)])
def test_every_split_is_prefix_monotone(name, kwargs, prompt_ends):
    """The parser contract (abs_reasoning_parsers): for a growing text, each part of a prefix's split is a
    prefix of the later split's part, so a stream is a diff and sends nothing it must take back."""
    p = parser(name, kwargs, prompt_ends)
    for text in TEXTS:
        final = p.split(text, True)
        for end in range(len(text) + 1):
            part = p.split(text[:end], False)
            assert final[0].startswith(part[0]) and final[1].startswith(part[1]), (text, end, part, final)
        reasoning, content = message(name, kwargs, prompt_ends, text)
        assert streamed(name, kwargs, prompt_ends, text, 1) == (reasoning or "", content or ""), text


def test_assistant_reasoning_reaches_the_template_as_reasoning_content():
    conv = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "reasoning": "Call the tool.", "tool_calls": []},
            {"role": "assistant", "content": "x", "reasoning": "new", "reasoning_content": "own"},
            {"role": "user", "content": "u", "reasoning": "not an assistant's"}]
    out = template_messages(conv)
    assert out[1]["reasoning_content"] == "Call the tool." and out[1]["reasoning"] == "Call the tool."
    assert out[2]["reasoning_content"] == "own"  # the message's own value is kept
    assert "reasoning_content" not in out[3] and out[0] == conv[0]
    assert "reasoning_content" not in conv[1]  # the request's messages are not modified
