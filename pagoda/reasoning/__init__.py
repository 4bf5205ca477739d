"""Reasoning parsers by vLLM's names (``--reasoning-parser``)."""

from __future__ import annotations

from typing import Any

from pagoda.reasoning.abs_reasoning_parsers import ReasoningParser
from pagoda.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser
from pagoda.reasoning.qwen3_reasoning_parser import Qwen3ReasoningParser

REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    p.name: p for p in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser)
}
"""``--reasoning-parser`` choices."""


def get_reasoning_parser(name: str, chat_template_kwargs: dict[str, Any] | None = None) -> ReasoningParser:
    try:
        return REASONING_PARSERS[name](chat_template_kwargs)
    except KeyError:
        raise ValueError(f"--reasoning-parser {name!r} is not one of {', '.join(REASONING_PARSERS)}.") from None


__all__ = ["REASONING_PARSERS", "ReasoningParser", "get_reasoning_parser"]
