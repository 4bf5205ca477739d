"""Tools sent with ``strict: true`` under ``tool_choice: "auto"``: the hermes format becomes an xgrammar structural
tag (text free; after ``<tool_call>`` the call is written as the Hermes / Qwen templates write it, its arguments
held to the tool's schema, a non-strict tool's to any object); a parser with no such form refuses strict tools (a
400 naming ``tools``), never accepting them unenforced; non-strict tools leave generation free."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("xgrammar")
import xgrammar as xgr  # noqa: E402
from xgrammar.testing import _is_grammar_accept_string  # noqa: E402

from pagoda.config import StructuredOutputsConfig  # noqa: E402
from pagoda.entrypoints.openai.serving_engine import ServingError  # noqa: E402
from pagoda.entrypoints.openai.tool_calling import constraint, plan_tools  # noqa: E402
from pagoda.entrypoints.openai.tool_config import ToolServingConfig  # noqa: E402
from pagoda.structured_output.validate import validate  # noqa: E402

WEATHER = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
LOOSE = {"type": "function", "function": {"name": "search", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}


class Req:
    def __init__(self, tools, tool_choice="auto", parallel_tool_calls=None):
        self.tools, self.tool_choice, self.parallel_tool_calls = tools, tool_choice, parallel_tool_calls


def cfg(parser="hermes"):
    return ToolServingConfig(enable_auto_tool_choice=True, tool_call_parser=parser)


def grammar(plan):
    return xgr.Grammar.from_structural_tag(plan.structural_tag)


def call(name, args):
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


def test_strict_calls_are_held_to_their_schema_and_text_stays_free():
    plan = plan_tools(Req([WEATHER, LOOSE]), cfg())
    g = grammar(plan)
    good = call("get_weather", {"city": "Paris", "unit": "c"})
    assert _is_grammar_accept_string(g, "Let me check. " + good)
    assert _is_grammar_accept_string(g, good + "\n" + call("search", {"anything": [1, 2]}))  # parallel; loose args
    assert _is_grammar_accept_string(g, "No tool needed: Paris is in France.")
    assert not _is_grammar_accept_string(g, call("get_weather", {"city": "Paris", "unit": "kelvin"}))
    assert not _is_grammar_accept_string(g, call("get_weather", {"city": "Paris"}))  # a required key missing
    assert not _is_grammar_accept_string(g, call("get_weather", {"city": "Paris", "unit": "c", "x": 1}))
    assert not _is_grammar_accept_string(g, call("unknown_tool", {}))
    # the engine's own check builds it (the request's constraint)
    so = constraint(plan)
    assert so.structural_tag == plan.structural_tag
    validate(so, StructuredOutputsConfig())


def test_one_call_without_parallel_tool_calls():
    g = grammar(plan_tools(Req([WEATHER], parallel_tool_calls=False), cfg()))
    one = call("get_weather", {"city": "Oslo", "unit": "f"})
    assert _is_grammar_accept_string(g, one)
    assert not _is_grammar_accept_string(g, one + "\n" + one)


def test_no_strict_tool_no_constraint():
    plan = plan_tools(Req([LOOSE]), cfg())
    assert plan.structural_tag is None and constraint(plan) is None
    plan = plan_tools(Req([{**WEATHER, "function": {**WEATHER["function"], "strict": False}}]), cfg())
    assert plan.structural_tag is None


@pytest.mark.parametrize("parser", ["llama3_json", "mistral", "pythonic"])
def test_a_parser_without_the_form_refuses_strict_tools(parser):
    with pytest.raises(ServingError) as e:
        plan_tools(Req([WEATHER]), cfg(parser))
    assert e.value.status == 400 and e.value.param == "tools" and "strict" in str(e.value)
    assert plan_tools(Req([LOOSE]), cfg(parser)).structural_tag is None  # non-strict tools are served as before
