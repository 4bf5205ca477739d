"""Tokenizer loading and chat templating (HF tokenizers, no remote code)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pagoda.config import EngineConfig, read_json
from pagoda.engine import tokenizer_classes
from pagoda.engine.chat_content_format import as_text_parts, resolve_content_format
from pagoda.engine.chat_template_args import template_messages
from pagoda.errors import ValidationError

logger = logging.getLogger("pagoda")


def load_tokenizer(cfg: EngineConfig) -> Any:
    """The model's tokenizer, as ``AutoTokenizer`` loads it (no remote code); the class it picks for a folder
    is remembered under ``PAGODA_CACHE`` and imported directly next time (:mod:`pagoda.engine.tokenizer_classes`)."""
    path, use_fast = cfg.tokenizer_path, cfg.tokenizer_mode != "slow"
    key = tokenizer_classes.class_key(path, use_fast)
    tok = None
    cls = tokenizer_classes.remembered_class(key) if key is not None else None
    if key is not None and cls is not None:
        try:
            tok = cls.from_pretrained(str(path), _from_auto=True)  # what AutoTokenizer passes for a local folder
        except Exception as e:  # a stale entry: forget it, ask AutoTokenizer below
            logger.info("the remembered tokenizer class %s failed on %s (%s); asking AutoTokenizer", cls.__name__,
                        path, e)
            tokenizer_classes.update(key, None)
            tok = None
    if tok is None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, use_fast=use_fast)
        except Exception as e:
            raise ValueError(f"Could not load a tokenizer from {path}: {e}") from e
        if key is not None:
            tokenizer_classes.remember(key, tok)
    if cfg.tokenizer_mode == "slow" and getattr(tok, "is_fast", False):
        logger.info("--tokenizer-mode slow: transformers has no Python tokenizer for %s; using the fast one "
                    "(same tokens)", path)
    if cfg.chat_template:
        tok.chat_template = read_chat_template(cfg.chat_template)
    tok.encode("warm-up")  # a fast tokenizer starts its thread pool on its first encode: now, not on a first request
    return tok


def read_chat_template(value: str) -> str:
    """``--chat-template``: a file's text, or the template itself. A value with no ``{``, ``}`` or newline is a path
    (vLLM's rule): one that cannot be read is a start-up error, never a template that prints its own path."""
    if any(c in value for c in "{}\n"):  # template text (a long one is no valid path name either)
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--chat-template {value!r} looks like a file path, but it could not be read ({e}); pass a "
                         f"readable template file or the template text itself.") from e


def eos_token_ids(cfg: EngineConfig, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    gen = cfg.model_path / "generation_config.json"
    for source in (read_json(gen) if gen.exists() else {}, cfg.hf_config):
        e = source.get("eos_token_id")
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, list):
            ids.update(int(x) for x in e)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _tool_call_arguments_as_objects(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message's ``tool_calls`` with ``function.arguments`` (OpenAI's JSON text) as an object,
    which chat templates expect (vLLM does the same); arguments that are not a JSON object stay as given."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            try:
                args = json.loads(fn["arguments"])
            except ValueError:
                args = None
            if isinstance(args, dict):
                call = {**call, "function": {**fn, "arguments": args}}
        out.append(call)
    return {**message, "tool_calls": out}


TEXT_PART_FIELDS = {"text": "text", "refusal": "refusal"}
"""Content part types read as text, and the field holding it (vLLM's chat_utils reads a refusal part as its
``refusal`` text; the openai types require the field)."""


def content_parts_text(parts: list[Any], where: str = "content") -> str:
    """OpenAI content parts as one text: :func:`content_part_texts` joined by newlines, as vLLM joins them."""
    return "\n".join(content_part_texts(parts, where))


def content_part_texts(parts: list[Any], where: str = "content") -> list[str]:
    """The texts of OpenAI content parts: ``text`` and ``refusal`` parts. Any other part, or one without its text,
    is a :class:`ValidationError` naming it (``where``: its path)."""
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        field = TEXT_PART_FIELDS.get(kind) if isinstance(kind, str) else None
        if field is None:
            raise ValidationError(f"{where}[{j}]: only text and refusal content parts are supported, got type "
                                  f"{kind!r}.", "messages")
        value = part.get(field)
        if not isinstance(value, str):
            raise ValidationError(f"{where}[{j}].{field} is required: a {kind!r} content part needs its "
                                  f"{field!r} string.", "messages")
        texts.append(value)
    return texts


def apply_chat_template(
    tokenizer: Any,
    conversation: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
    content_format: str = "auto",
    **kwargs: Any,
) -> str:
    """The conversation's prompt text; ``content_format`` is how each message's content reaches the template
    (:mod:`pagoda.engine.chat_content_format`)."""
    if not conversation:
        raise ValidationError("messages must hold at least one message.", "messages")
    template = chat_template or tokenizer.chat_template
    if not template:
        raise ValueError(
            "The model has no chat template; pass one with --chat-template (or chat_template=...)."
        )
    parts = resolve_content_format(content_format, template) == "openai"
    msgs = []
    for i, m in enumerate(conversation):
        if not isinstance(m, dict) or "role" not in m:
            raise ValidationError(f"messages[{i}] must be an object with 'role' and 'content'.", "messages")
        content = m.get("content")
        texts = content_part_texts(content, f"messages[{i}].content") if isinstance(content, list) else \
            [content] if isinstance(content, str) else []
        shown: Any = content if content is not None else ""
        if parts:
            shown = as_text_parts(texts)
        elif isinstance(content, list):  # OpenAI content parts, joined as vLLM joins them
            shown = "\n".join(texts)
        msgs.append(_tool_call_arguments_as_objects({**m, "content": shown}))
    return tokenizer.apply_chat_template(
        template_messages(msgs), tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template,
        **kwargs
    )
