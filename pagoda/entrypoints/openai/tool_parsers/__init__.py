"""Tool-call parsers (``--tool-call-parser NAME``): the model's own tool-call format → OpenAI ``tool_calls``.

vLLM's parser names; each parser is one pure ``parse(text, final)`` (see :mod:`.abstract_tool_parser`),
used for the whole output and, through :class:`ToolCallStream`, for streamed deltas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    ExtractedToolCallInformation,
    ToolCallStream,
    ToolParser,
)
from pagoda.entrypoints.openai.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
from pagoda.entrypoints.openai.tool_parsers.llama_tool_parser import Llama3JsonToolParser
from pagoda.entrypoints.openai.tool_parsers.mistral_tool_parser import MistralToolParser
from pagoda.entrypoints.openai.tool_parsers.pythonic_tool_parser import PythonicToolParser
from pagoda.entrypoints.openai.tool_parsers.qwen3coder_tool_parser import Qwen3CoderToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    p.name: p for p in (Hermes2ProToolParser, Llama3JsonToolParser, MistralToolParser, PythonicToolParser,
                        Qwen3CoderToolParser)
}
"""``--tool-call-parser`` choices."""


def get_tool_parser(name: str, tools: Sequence[dict[str, Any]] | None = None) -> ToolParser:
    """A new parser of the format ``name`` for a request whose tools (chat's shape) are ``tools``."""
    try:
        parser = TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(f"--tool-call-parser {name!r} is not one of {', '.join(TOOL_PARSERS)}.") from None
    parser.tools = list(tools or ())
    return parser


__all__ = ["TOOL_PARSERS", "ExtractedToolCallInformation", "ToolCallStream", "ToolParser", "get_tool_parser"]
