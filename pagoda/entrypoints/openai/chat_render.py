"""A request's messages through the chat template, with the server's rules for it (one place for every route
that renders messages: chat completions, chat-style embeddings).

Rules: a request's own ``chat_template`` needs ``--trust-request-chat-template``; rendering runs in a worker
thread, interrupted after :data:`CHAT_TEMPLATE_TIMEOUT_S`, and its text is capped at
:data:`CHAT_TEMPLATE_MAX_CHARS`; a template error (jinja) is the request's fault, a 400 naming ``messages``.

Templates render in transformers' jinja2 ImmutableSandboxedEnvironment (no attribute escapes, no mutation of
inputs); the time limit (a runaway loop is interrupted by an exception raised in its thread) and the size limit
keep a hostile template (--trust-request-chat-template) from stalling the server or filling its memory with a
prompt that could never fit anyway.
"""

from __future__ import annotations

from typing import Any

from pagoda.engine.tokenizer import apply_chat_template
from pagoda.entrypoints.openai.serving_engine import ServingError

CHAT_TEMPLATE_TIMEOUT_S = 1.0
CHAT_TEMPLATE_MAX_CHARS = 4 * 2**20


class _TemplateTimeout(Exception):
    pass


def render_limited(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a worker thread, interrupted after CHAT_TEMPLATE_TIMEOUT_S."""
    import ctypes
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=work, name="chat-template", daemon=True)
    t.start()
    t.join(CHAT_TEMPLATE_TIMEOUT_S)
    if t.is_alive():
        assert t.ident is not None  # set once the thread started
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(_TemplateTimeout))
        t.join(1.0)
        raise ServingError(400, f"The chat template took longer than {CHAT_TEMPLATE_TIMEOUT_S:g} s to render.",
                           param="chat_template", code="chat_template_timeout")
    if "error" in box:
        raise box["error"]
    result = box.get("result")
    if isinstance(result, str) and len(result) > CHAT_TEMPLATE_MAX_CHARS:
        raise ServingError(400, f"The chat template rendered more than {CHAT_TEMPLATE_MAX_CHARS} characters.",
                           param="chat_template", code="chat_template_too_large")
    return result


def render_chat(tokenizer: Any, conversation: list[dict[str, Any]], add_generation_prompt: bool,
                chat_template: str | None, trust_request_chat_template: bool, content_format: str = "auto",
                **kwargs: Any) -> str:
    """The conversation's prompt text under the rules above; raises ValueError / ServingError (400s)."""
    if chat_template is not None and not trust_request_chat_template:
        raise ServingError(400, "chat_template in a request is not allowed by this server "
                           "(start it with --trust-request-chat-template).", param="chat_template")
    try:
        text = render_limited(apply_chat_template, tokenizer, conversation, add_generation_prompt, chat_template,
                              content_format, **kwargs)
    except (ValueError, ServingError):
        raise
    except Exception as e:  # template errors (jinja) are the request's fault
        raise ServingError(400, f"Could not apply the chat template: {type(e).__name__}: {e}",
                           param="messages") from e
    if not isinstance(text, str):
        raise ServingError(400, "The chat template did not produce text.", param="messages")
    return text
