"""The request side of tool calling and reasoning for /v1/chat/completions: checks ``tools`` and
``tool_choice`` (vLLM's rules and messages), decides what the template sees and how generation is
constrained (:class:`ToolPlan`), and builds each choice's :class:`ChatOutputParser`.

``tool_choice`` (default ``auto`` when tools are given, else ``none``):

* ``none``: the tools are only shown to the chat template (not with
  ``--exclude-tools-when-tool-choice-none``); the output is text.
* ``auto``: needs ``--enable-auto-tool-choice --tool-call-parser NAME``; the model's own format is parsed. With
  a tool sent ``strict: true`` the format is also a structural tag (:meth:`ToolParser.strict_tags`): text stays
  free, every call's arguments are held to its tool's schema; a parser without that form refuses strict tools.
* ``required`` / ``{"type": "function", "function": {"name": ...}}``: generation is constrained to a JSON
  schema (structured outputs) -- a list of calls, or the named function's arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pagoda.entrypoints.openai.chat_output import ChatOutputParser
from pagoda.entrypoints.openai.serving_engine import ServingError
from pagoda.entrypoints.openai.tool_config import ToolServingConfig
from pagoda.entrypoints.openai.tool_parsers import get_tool_parser
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import is_strict
from pagoda.entrypoints.openai.tool_parsers.constrained import (
    NamedToolParser,
    RequiredToolParser,
    named_schema,
    required_schema,
)
from pagoda.reasoning import get_reasoning_parser
from pagoda.reasoning.token_ids import ReasoningTokenIds, prompt_ends_reasoning

AUTO_NEEDS_FLAGS = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
_NAMED_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'


@dataclass
class ToolPlan:
    mode: str = "none"  # none, auto, required, named
    tools: list[dict[str, Any]] | None = None  # what the chat template is given
    function_name: str | None = None  # named
    schema: dict[str, Any] | None = None  # the constraint (required, named)
    structural_tag: str | None = None  # the constraint of strict tools under auto (xgrammar's structural tag JSON)
    max_calls: int | None = None  # 1 without parallel_tool_calls
    sampling_overrides: dict[str, Any] = field(default_factory=dict)
    prompt_ends_reasoning: bool = False  # the prompt's tokens already closed the reasoning (see note_prompt)


def _bad(message: str, param: str = "tools") -> ServingError:
    return ServingError(400, message, param=param)


_TOOL_KEYS = frozenset({"type", "function"})
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
"""OpenAI's function tool object (``{"type": "function", "function": {...}}``) and its ``function`` keys. Any other
key is a 400 (as OpenAI's): a misspelt ``parameters`` would leave the tool without a schema, a ``strict`` one level
up would not be enforced."""


def check_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """Function tools in OpenAI's shape (``type`` defaults to function; ``parameters`` optional, an
    object schema when given; ``description`` a string, ``strict`` a boolean, each optional or null; no other
    key). A bad definition is a 400 naming ``tools``."""
    if tools is None:
        return None
    if not tools:
        raise _bad("`tools` must not be an empty array. Either provide at least one tool or omit the field "
                   "entirely.")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _bad(f"tools[{i}]: only tools of type 'function' are supported.")
        unknown = sorted(str(k) for k in tool if k not in _TOOL_KEYS)
        if unknown:
            raise _bad(f"tools[{i}]: unknown key(s) {unknown} of a function tool (it takes "
                       f"{sorted(_TOOL_KEYS)}; name, description, parameters and strict go in 'function').")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"tools[{i}].function must be an object with a 'name'.")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"tools[{i}].function.name must be a non-empty string.")
        unknown = sorted(str(k) for k in fn if k not in _FUNCTION_KEYS)
        if unknown:
            raise _bad(f"tools[{i}].function ({name}): unknown key(s) {unknown} (a function takes "
                       f"{sorted(_FUNCTION_KEYS)}).")
        if fn.get("strict") is not None and not isinstance(fn["strict"], bool):
            raise _bad(f"tools[{i}].function.strict ({name}) must be a boolean, got {fn['strict']!r}.")
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise _bad(f"tools[{i}].function.description ({name}) must be a string.")
        params = fn.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise _bad(f"tools[{i}].function.parameters ({name}) must be a JSON schema of type 'object'.")
        out.append({**tool, "type": "function"})
    return out


def _named(choice: dict[str, Any], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The tool a ``{"type": "function", "function": {"name": N}}`` choice names (``type`` may be left out, as
    vLLM's default; another type, e.g. OpenAI's ``allowed_tools`` or ``custom``, is a 400, never read as N)."""
    kind = choice.get("type", "function")
    if kind != "function":
        raise _bad(f"Invalid value for `type` in `tool_choice`: {kind!r}; only named function choices are "
                   f"supported. {_NAMED_USAGE}", "tool_choice")
    fn = choice.get("function")
    if not isinstance(fn, dict):
        raise _bad(f"Invalid value for `function`: `{fn}` in `tool_choice`! {_NAMED_USAGE}", "tool_choice")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"Invalid `name` in `function`: `{name}` in `tool_choice`! {_NAMED_USAGE}", "tool_choice")
    for tool in tools:
        if tool["function"]["name"] == name:
            return tool
    raise _bad("The tool specified in `tool_choice` does not match any of the specified `tools`", "tool_choice")


def plan_tools(req: Any, cfg: ToolServingConfig) -> ToolPlan:
    """What ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` ask for; 400s before anything is queued."""
    tools = check_tools(req.tools)
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    max_calls = 1 if req.parallel_tool_calls is False else None
    if choice == "none":
        shown = None if cfg.exclude_tools_when_tool_choice_none else tools
        return ToolPlan("none", shown, max_calls=max_calls)
    if tools is None:
        raise _bad("When using `tool_choice`, `tools` must be set.", "tool_choice")
    plan = ToolPlan(tools=tools, max_calls=max_calls)
    if isinstance(choice, dict):
        tool = _named(choice, tools)
        plan.mode, plan.function_name, plan.schema = "named", tool["function"]["name"], named_schema(tool)
    elif choice == "required":
        try:
            plan.mode, plan.schema = "required", required_schema(tools, max_calls is None)
        except ValueError as e:
            raise _bad(str(e)) from None
    elif choice == "auto":
        if not (cfg.enable_auto_tool_choice and cfg.tool_call_parser):
            raise _bad(AUTO_NEEDS_FLAGS, "tool_choice")
        plan.mode = "auto"
        parser = get_tool_parser(cfg.tool_call_parser, tools)
        if parser.special_tokens_in_output:
            plan.sampling_overrides["skip_special_tokens"] = False
        if any(is_strict(t) for t in tools):
            tag = parser.strict_tags(tools, max_calls == 1)
            if tag is None:
                raise _bad(f"Tools with `strict: true` under tool_choice \"auto\" are enforced with "
                           f"--tool-call-parser hermes; the {cfg.tool_call_parser} parser cannot hold its calls to the "
                           f"schemas. Send `strict: false`, or tool_choice \"required\" / a named tool (always held "
                           f"to the schema).")
            plan.structural_tag = json.dumps(tag)
    else:
        raise _bad(f"Invalid value for `tool_choice`: {choice}! Only named tools, \"none\", \"auto\" or "
                   f"\"required\" are supported.", "tool_choice")
    return plan


def check_reasoning_request(req: Any, cfg: ToolServingConfig, plan: ToolPlan, structured: bool) -> None:
    """``include_reasoning: false`` needs a reasoning parser. (A grammar with a reasoning parser applies to the
    answer after the reasoning: :mod:`pagoda.structured_output.manager`.)"""
    if getattr(req, "include_reasoning", None) is False and cfg.reasoning_parser is None:
        raise _bad("include_reasoning: false needs a server started with --reasoning-parser (without one, the "
                   "reasoning stays in the content).", "include_reasoning")
    if (plan.schema is not None or plan.structural_tag is not None) and structured:
        raise _bad("You can only either use constraints for structured outputs or tools, not both.", "tool_choice")


def note_prompt(plan: ToolPlan, prompt_token_ids: list[int], tags: ReasoningTokenIds | str | None) -> None:
    """Record whether the prompt already closed the reasoning (the engine core's rule, so the text parser
    and the grammar agree on where the answer starts)."""
    plan.prompt_ends_reasoning = isinstance(tags, ReasoningTokenIds) and prompt_ends_reasoning(prompt_token_ids, tags)


def output_parser(req: Any, cfg: ToolServingConfig, plan: ToolPlan) -> ChatOutputParser | None:
    """One choice's parser, or None when the text is returned as is."""
    reasoning = None
    if cfg.reasoning_parser is not None:
        reasoning = get_reasoning_parser(cfg.reasoning_parser, req.chat_template_kwargs)
        reasoning.prompt_ends_reasoning = plan.prompt_ends_reasoning
    tools: Any = None
    if plan.mode == "auto":
        assert cfg.tool_call_parser is not None
        tools = get_tool_parser(cfg.tool_call_parser, plan.tools)
    elif plan.mode == "required":
        tools = RequiredToolParser()
    elif plan.mode == "named":
        assert plan.function_name is not None
        tools = NamedToolParser(plan.function_name)
    if reasoning is None and tools is None:
        return None
    return ChatOutputParser(reasoning, tools, getattr(req, "include_reasoning", None) is not False, plan.max_calls)


def constraint(plan: ToolPlan) -> Any:
    """The structured-outputs constraint of a required / named tool choice (vLLM's
    ``StructuredOutputsParams(json=schema)``, without free whitespace), or None."""
    if plan.schema is None and plan.structural_tag is None:
        return None
    try:
        from pagoda.structured_output.params import StructuredOutputsParams
    except ImportError:  # structured outputs not in this build
        raise _bad(f"tool_choice {'required' if plan.mode == 'required' else 'naming a function'} is not "
                   f"supported yet: it needs structured outputs (grammar-constrained decoding).",
                   "tool_choice") from None
    if plan.structural_tag is not None:
        return StructuredOutputsParams(structural_tag=plan.structural_tag)
    # compact JSON: a small model left free to add whitespace can fill max_tokens with it (GUIDE §8)
    return StructuredOutputsParams(json=plan.schema, disable_any_whitespace=True)


def finish_reason(plan: ToolPlan, called: bool, reason: str | None) -> str | None:
    """vLLM's: ``tool_calls`` when the model called tools (auto) or had to (required) and stopped on its
    own; a named function keeps ``stop`` (as OpenAI)."""
    if called and reason == "stop" and plan.mode in ("auto", "required"):
        return "tool_calls"
    return reason
