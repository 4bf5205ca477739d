"""How a message's ``content`` reaches the chat template (vLLM's ``--chat-template-content-format``).

``string``: the text (OpenAI text parts joined by newlines). ``openai``: a list of ``{"type": "text", "text": ...}``
parts, what templates written for multimodal models loop over. ``auto`` (the default) picks ``openai`` when the
template loops over a message's content (``{% for part in message['content'] %}``, ``message.content`` alike), else
``string``, as vLLM detects it: a template that only loops over the parts would otherwise render a string's
characters (or nothing) and drop the text silently.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

ContentFormat = Literal["auto", "string", "openai"]
CONTENT_FORMATS: tuple[str, ...] = ("auto", "string", "openai")


@functools.lru_cache(maxsize=32)
def detect_content_format(template: str) -> Literal["string", "openai"]:
    """``openai`` when some ``for`` loop of ``template`` iterates over an attribute or item named ``content``
    (of a message: the loops over ``messages`` give them), else ``string``; a template jinja cannot parse is
    ``string`` (rendering it reports the error)."""
    import jinja2
    from jinja2 import nodes

    try:
        ast = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return "string"
    for loop in ast.find_all(nodes.For):
        it = loop.iter
        if isinstance(it, nodes.Filter) and it.node is not None:  # e.g. message['content'] | selectattr(...)
            it = it.node
        if isinstance(it, nodes.Getattr) and it.attr == "content":
            return "openai"
        if isinstance(it, nodes.Getitem) and isinstance(it.arg, nodes.Const) and it.arg.value == "content":
            return "openai"
    return "string"


def resolve_content_format(content_format: str, template: str) -> Literal["string", "openai"]:
    """The format the template gets: ``content_format`` itself, or for ``auto`` :func:`detect_content_format`."""
    if content_format not in CONTENT_FORMATS:
        raise ValueError(f"chat_template_content_format must be one of {CONTENT_FORMATS}, got {content_format!r}.")
    if content_format == "auto":
        return detect_content_format(template)
    return "openai" if content_format == "openai" else "string"


def as_text_parts(texts: list[str]) -> list[dict[str, Any]]:
    """Message texts as OpenAI text parts (the ``openai`` format's content)."""
    return [{"type": "text", "text": t} for t in texts]
