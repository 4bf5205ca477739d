"""Reasoning parsers (qwen3, deepseek_r1) and their combination with a tool parser: the split of recorded
outputs, and streams cut at every character boundary reassembling to the non-streamed message."""

from __future__ import annotations

import json

import pytest

from pagoda.entrypoints.openai.chat_output import ChatOutputParser
from pagoda.entrypoints.openai.tool_parsers import get_tool_parser
from pagoda.reasoning import REASONING_PARSERS, get_reasoning_parser

CASES = [
    # (parser, chat_template_kwargs, output, reasoning, content)
    ("qwen3", None, "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?",
     "\nThe user greets me.\n", "\n\nHello! How can I help?"),
    ("qwen3", None, "Thinking opened by the template.</think>Answer.", "Thinking opened by the template.", "Answer."),
    ("qwen3", None, "<think>\ncut short by max_tokens", "\ncut short by max_tokens", None),
    ("qwen3", {"enable_thinking": False}, "Plain answer, no thinking.", None, "Plain answer, no thinking."),
    ("qwen3", {"enable_thinking": False}, "<think>\n\n</think>\n\nAnswer", "\n\n", "\n\nAnswer"),
    ("deepseek_r1", None, "Okay, 2+2 is 4.\n</think>\n\nThe answer is 4.", "Okay, 2+2 is 4.\n", "\n\nThe answer is 4."),
    ("deepseek_r1", None, "<think>a < b and c </ d</think>x", "a < b and c </ d", "x"),
    ("deepseek_r1", None, "no end tag at all", "no end tag at all", None),
    ("deepseek_r1", None, "<think></think>", None, None),
]


def stream_message(parser: ChatOutputParser, text: str, step: int = 1) -> dict:
    out: dict = {"reasoning": "", "content": "", "tool_calls": {}}
    cuts = list(range(0, len(text), step)) + [len(text)]
    for k, end in enumerate(cuts):
        d = parser.delta(text[:end], k == len(cuts) - 1)
        assert set(d) <= {"reasoning", "reasoning_content", "content", "tool_calls"}
        assert d.get("reasoning_content") == d.get("reasoning")  # older vLLM's name carries the same text
        out["reasoning"] += d.get("reasoning", "")
        out["content"] += d.get("content", "")
        for e in d.get("tool_calls", []):
            call = out["tool_calls"].setdefault(e["index"], {"name": e["function"].get("name"), "arguments": ""})
            call["arguments"] += e["function"]["arguments"]
    return out


@pytest.mark.parametrize("name,kwargs,text,reasoning,content", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_split(name, kwargs, text, reasoning, content):
    assert get_reasoning_parser(name, kwargs).extract_reasoning(text) == (reasoning, content)
    m = ChatOutputParser(get_reasoning_parser(name, kwargs), None).message(text)
    assert (m.reasoning, m.content, m.tool_calls) == (reasoning, content, [])
    for step in (1, 2, 5):
        s = stream_message(ChatOutputParser(get_reasoning_parser(name, kwargs), None), text, step)
        assert (s["reasoning"], s["content"]) == (reasoning or "", content or ""), step


def test_include_reasoning_false_drops_it():
    p = ChatOutputParser(get_reasoning_parser("deepseek_r1"), None, include_reasoning=False)
    assert p.message("thoughts</think>answer").reasoning is None
    assert stream_message(ChatOutputParser(get_reasoning_parser("deepseek_r1"), None, include_reasoning=False),
                          "thoughts</think>answer") == {"reasoning": "", "content": "answer", "tool_calls": {}}


QWEN3_TOOL_OUTPUT = ('<think>\nI need the weather tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", '
                     '"arguments": {"city": "Paris"}}\n</tool_call>\n'
                     '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


def test_reasoning_then_tool_calls_stream_like_the_whole():
    m = ChatOutputParser(get_reasoning_parser("qwen3"), get_tool_parser("hermes")).message(QWEN3_TOOL_OUTPUT)
    assert m.reasoning == "\nI need the weather tool.\n" and m.content is None
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m.tool_calls]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    for step in (1, 3, 11):
        s = stream_message(ChatOutputParser(get_reasoning_parser("qwen3"), get_tool_parser("hermes")),
                           QWEN3_TOOL_OUTPUT, step)
        assert s["reasoning"] == m.reasoning and s["content"] == ""
        assert [(c["name"], c["arguments"]) for c in s["tool_calls"].values()] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in m.tool_calls]


def test_parallel_tool_calls_false_keeps_the_first():
    p = ChatOutputParser(get_reasoning_parser("qwen3"), get_tool_parser("hermes"), max_calls=1)
    assert [c["function"]["name"] for c in p.message(QWEN3_TOOL_OUTPUT).tool_calls] == ["get_weather"]
    s = stream_message(ChatOutputParser(get_reasoning_parser("qwen3"), get_tool_parser("hermes"), max_calls=1),
                       QWEN3_TOOL_OUTPUT)
    assert [c["name"] for c in s["tool_calls"].values()] == ["get_weather"]


def test_registry():
    assert set(REASONING_PARSERS) == {"qwen3", "deepseek_r1"}
    with pytest.raises(ValueError, match="--reasoning-parser"):
        get_reasoning_parser("nope")
