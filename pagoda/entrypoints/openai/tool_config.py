"""The server's tool-calling and reasoning flags (vLLM's names), checked at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from pagoda.entrypoints.openai.tool_parsers import get_tool_parser
from pagoda.reasoning import get_reasoning_parser


@dataclass(frozen=True)
class ToolServingConfig:
    """The server's flags for tools and reasoning (vLLM's names)."""

    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    exclude_tools_when_tool_choice_none: bool = False

    def validate(self) -> None:
        """Start-up checks (vLLM's): a parser named must exist; auto tool choice needs a parser."""
        if self.tool_call_parser is not None:
            get_tool_parser(self.tool_call_parser)
        if self.reasoning_parser is not None:
            get_reasoning_parser(self.reasoning_parser)
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice requires --tool-call-parser.")
