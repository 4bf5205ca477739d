"""Reasoning parsers (``--reasoning-parser NAME``): the model's thinking → ``reasoning``, the rest → ``content``.

As with tool parsers (:mod:`pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser`), a parser is one
pure function ``split(text, final) -> (reasoning, content)`` whose results for a growing text only grow
(each part of a prefix's split is a prefix of the later part), so streaming is a diff. Text that might be
the start of a tag is held back until it is decided. Parsers work on text, not token ids, so they also
work when the tags are not single tokens.
"""

from __future__ import annotations

from typing import Any

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import partial_tag_overlap


class ReasoningParser:
    name = ""

    def __init__(self, chat_template_kwargs: dict[str, Any] | None = None) -> None:
        self.chat_template_kwargs = chat_template_kwargs or {}
        # Set by the front end when the prompt's tokens already closed the reasoning
        # (pagoda.reasoning.token_ids.prompt_ends_reasoning, the rule the engine core applies too).
        self.prompt_ends_reasoning = False

    def split(self, text: str, final: bool) -> tuple[str, str]:
        raise NotImplementedError

    def extract_reasoning(self, model_output: str) -> tuple[str | None, str | None]:
        """vLLM's name: the finished output → (reasoning or None, content or None)."""
        reasoning, content = self.split(model_output, True)
        return reasoning or None, content or None


class BaseThinkingReasoningParser(ReasoningParser):
    """``<think>`` (optional: chat templates often put it in the prompt) … ``</think>`` then the answer.

    Whether the output starts inside the reasoning: yes when it opens with ``<think>`` itself (whatever the
    prompt said: a conversation's earlier turn may have left ``</think>`` as the prompt's last tag, and the
    model thinks anew), else unless the reasoning is *closed* (``thinks_by_default`` false, or the prompt
    already ended the reasoning). Inside the reasoning, the text up to ``</think>`` is reasoning and the
    rest content; without ``</think>`` all of it is reasoning (it was cut short). Closed, all of it is
    content, a stray ``</think>`` included (it could not be split off a stream already sent as content)."""

    start_token = "<think>"
    end_token = "</think>"

    @property
    def thinks_by_default(self) -> bool:
        return True

    def split(self, text: str, final: bool) -> tuple[str, str]:
        k = len(text) - len(text.lstrip())
        head = text[k:]
        if head.startswith(self.start_token):
            body = head[len(self.start_token):]
        elif not final and self.start_token.startswith(head):
            return "", ""  # nothing yet, or maybe the start tag: wait
        elif not self.thinks_by_default or self.prompt_ends_reasoning:
            return "", text
        else:
            body = text
        i = body.find(self.end_token)
        if i >= 0:
            return body[:i], body[i + len(self.end_token):]
        return (body if final else body[:len(body) - partial_tag_overlap(body, self.end_token)]), ""
