"""``deepseek_r1``: DeepSeek-R1 and its distills. The chat template opens ``<think>`` in the prompt, so the
output is the reasoning up to ``</think>`` and the answer after it; without ``</think>`` all of it is
reasoning."""

from __future__ import annotations

from pagoda.reasoning.abs_reasoning_parsers import BaseThinkingReasoningParser


class DeepSeekR1ReasoningParser(BaseThinkingReasoningParser):
    name = "deepseek_r1"
