"""The extra arguments a chat template call takes from a request: one rule for the server and ``LLM.chat``.

``chat_template_kwargs`` become template variables (e.g. ``enable_thinking``); names that are arguments of
transformers' ``apply_chat_template`` itself, or that the request's own fields set (``tools``,
``add_generation_prompt``, ``continue_final_message``, ...), are refused: they would be dropped or would change
what the call returns rather than what the template sees.

An assistant message's ``reasoning`` (current vLLM's name for the thinking a client sends back) also reaches
the template as ``reasoning_content``, the name chat templates read (Qwen3's renders it inside ``<think>`` for
the turns after the last user message), as vLLM passes it: without it the thinking would be dropped from the
prompt (recent transformers releases alias it themselves; transformers 5.0 does not). A ``reasoning_content``
the message sets itself is kept. :func:`template_messages` does it, called by
:func:`pagoda.engine.tokenizer.apply_chat_template` (every route, and ``LLM.chat``).
"""

from __future__ import annotations

from typing import Any

from pagoda.errors import ValidationError

RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "tools", "documents", "chat_template", "add_generation_prompt", "continue_final_message",
    "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "tokenizer_kwargs",
})


def template_kwargs(chat_template_kwargs: dict[str, Any] | None, tools: list[dict[str, Any]] | None,
                    continue_final_message: bool, add_generation_prompt: bool) -> dict[str, Any]:
    """The keyword arguments for :func:`pagoda.engine.tokenizer.apply_chat_template` beyond the conversation,
    ``add_generation_prompt`` and the template; raises :class:`ValidationError` naming the field at fault."""
    if continue_final_message and add_generation_prompt:
        raise ValidationError("continue_final_message and add_generation_prompt cannot both be true.",
                              "continue_final_message")
    if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
        raise ValidationError(f"chat_template_kwargs must be an object, got {type(chat_template_kwargs).__name__}.",
                              "chat_template_kwargs")
    reserved = sorted(set(chat_template_kwargs or ()) & RESERVED_TEMPLATE_KWARGS)
    if reserved:
        raise ValidationError(f"chat_template_kwargs may not set {reserved}: use the request's own field of that "
                              f"name where there is one.", "chat_template_kwargs")
    kwargs = dict(chat_template_kwargs or {})
    if continue_final_message:
        kwargs["continue_final_message"] = True
    if tools:
        kwargs["tools"] = tools
    return kwargs


def template_messages(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as the chat template gets it: an assistant message's ``reasoning`` copied to
    ``reasoning_content`` where that is unset (see the module docstring); the input is not modified."""
    out = []
    for m in conversation:
        if (isinstance(m, dict) and m.get("role") == "assistant" and m.get("reasoning") is not None
                and m.get("reasoning_content") is None):
            m = {**m, "reasoning_content": m["reasoning"]}
        out.append(m)
    return out
