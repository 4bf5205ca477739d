"""Where reasoning ends, on token ids: the one rule the engine core (structured outputs) and the chat front end
(the reasoning parser's default) share.

A thinking parser's tags (``<think>`` / ``</think>``) are single tokens in the vocabularies of the models it is
for (Qwen3, DeepSeek-R1); :func:`reasoning_token_ids` resolves them from a tokenizer, or says why it cannot.
:func:`prompt_ends_reasoning` is vLLM's ``is_reasoning_end(prompt_token_ids)``: scanning back from the end of
the prompt, an end tag before any start tag means the prompt already closed the reasoning (Qwen3's template with
``enable_thinking: false`` puts ``<think>\\n\\n</think>\\n\\n`` there), so the output is the answer from its first
token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReasoningTokenIds:
    """A reasoning parser's tags as token ids (``start_id`` may be None: some templates never emit it)."""

    parser: str
    start_id: int | None
    end_id: int
    end_token: str


def _single_id(tokenizer: Any, text: str) -> int | None:
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except Exception:
        return None
    return int(ids[0]) if len(ids) == 1 else None


def reasoning_token_ids(parser_name: str, tokenizer: Any) -> ReasoningTokenIds | str:
    """The tags of ``--reasoning-parser parser_name`` in ``tokenizer``'s vocabulary, or a message saying why
    they cannot be tracked on token ids (the end tag is not one token)."""
    from pagoda.reasoning import REASONING_PARSERS

    cls = REASONING_PARSERS[parser_name]
    start, end = getattr(cls, "start_token", None), getattr(cls, "end_token", None)
    if not isinstance(end, str):
        return f"--reasoning-parser {parser_name} has no end tag to track on token ids"
    end_id = _single_id(tokenizer, end)
    if end_id is None:
        return (f"the reasoning end tag {end!r} of --reasoning-parser {parser_name} is not a single token of this "
                f"model's tokenizer, so the engine cannot tell where the answer starts")
    return ReasoningTokenIds(parser_name, _single_id(tokenizer, start) if isinstance(start, str) else None, end_id, end)


def prompt_ends_reasoning(prompt_token_ids: Sequence[int], tags: ReasoningTokenIds) -> bool:
    """True when the prompt's last reasoning tag is the end tag (the output starts with the answer)."""
    for t in reversed(prompt_token_ids):
        if t == tags.end_id:
            return True
        if t == tags.start_id:
            return False
    return False


def reasoning_end_index(token_ids: Sequence[int], tags: ReasoningTokenIds) -> int:
    """Index of the first end tag in ``token_ids`` (-1 if none): the answer starts right after it."""
    for i, t in enumerate(token_ids):
        if t == tags.end_id:
            return i
    return -1
