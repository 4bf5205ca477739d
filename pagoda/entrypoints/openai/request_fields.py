"""Which request fields pagoda honours, ignores or refuses: the one table (documented in docs/serving.md).

Every field of vLLM's ``CompletionRequest`` / ``ChatCompletionRequest`` (and OpenAI's) is in
one of three classes:

* **honoured** -- declared on the pydantic models in :mod:`protocol` and implemented;
* **ignored** (:data:`IGNORED`) -- harmless extras that change nothing about the output
  (bookkeeping for OpenAI's platform, hints); accepted with a warning in the log;
* **unsupported** (:data:`UNSUPPORTED`) -- fields that change what the output means and that
  pagoda does not implement. A request that sets one to anything but its neutral value is a 400
  naming the field (``"<field> is not supported ..."``), never a 200 with the constraint dropped.

A field in none of these (unknown to vLLM too: a typo such as ``max_token``, or another server's extension), or
the other endpoint's field set to something (``suffix`` on chat), is a 400 naming it, as OpenAI's own API answers
("Unrecognized request argument"), where vLLM only logs a warning: a request whose field was dropped would run as
if it had not been sent. A null value asks for nothing and passes. Beam search cannot honour some sampling
fields (:data:`BEAM_UNSUPPORTED`), and a request without it sets beam search's own fields in vain
(:data:`BEAM_ONLY`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pagoda.errors import ValidationError


def unset(value: Any, req: Any = None) -> bool:
    return value is None or value == "" or (isinstance(value, (list, dict)) and not value)


@dataclass(frozen=True)
class Unsupported:
    reason: str
    neutral: Callable[[Any, Any], bool] = unset  # (value, request) -> the value changes nothing
    endpoints: tuple[str, ...] = ("completions", "chat")


def _zero(v: Any, req: Any) -> bool:
    return v is None or v == 0


def _false(v: Any, req: Any) -> bool:
    return v is None or v is False


def _true(v: Any, req: Any) -> bool:
    return v is None or v is True


def _best_of(v: Any, req: Any) -> bool:
    return v is None or v == (req.n if req.n is not None else 1)


def _absent(v: Any, req: Any) -> bool:  # even an empty value asks for the feature
    return v is None


def _text_only(v: Any, req: Any) -> bool:
    return unset(v) or v == ["text"]


def default_verbosity(v: Any, req: Any = None) -> bool:
    """``verbosity`` (chat) / ``text.verbosity`` (Responses) asks for nothing new: unset or OpenAI's default."""
    return v is None or v == "medium"


def _spaces_between(v: Any, req: Any) -> bool:  # only shows when special tokens are kept in the text
    return v is None or v is True or getattr(req, "skip_special_tokens", None) is not False


UNSUPPORTED: dict[str, Unsupported] = {
    # structured outputs (the others are honoured: structured_fields)
    "guided_whitespace_pattern": Unsupported("a custom whitespace pattern is not implemented; whitespace in JSON is "
                                             "bounded by the backend (structured_outputs.disable_any_whitespace "
                                             "makes it compact)"),
    "structural_tag": Unsupported("top-level structural_tag is not implemented; pass it inside structured_outputs"),
    # sampling
    "logits_processors": Unsupported("per-request logits processors are not implemented (vLLM V1 dropped them too)"),
    "best_of": Unsupported("best_of must equal n when given (no sampling of extra candidates)", _best_of),
    "vllm_xargs": Unsupported("custom extension arguments are not implemented"),
    "spaces_between_special_tokens": Unsupported(
        "the detokenizer does not implement it (special tokens kept in the text are joined as the tokenizer "
        "decodes them); it may be false only with skip_special_tokens", _spaces_between),
    # scheduling / serving
    "kv_transfer_params": Unsupported("disaggregated prefill (KV transfer) is not implemented"),
    # inputs and outputs pagoda does not have
    "prompt_embeds": Unsupported("prompts must be text or token ids", endpoints=("completions",)),
    "suffix": Unsupported("insertion (text after the completion) is not implemented", endpoints=("completions",)),
    "audio": Unsupported("audio output is not implemented", endpoints=("chat",)),
    "modalities": Unsupported("only text output is implemented", _text_only, endpoints=("chat",)),
    "functions": Unsupported("the deprecated function-calling fields are not implemented; use tools",
                             endpoints=("chat",)),
    "function_call": Unsupported("the deprecated function-calling fields are not implemented; use tool_choice",
                                 endpoints=("chat",)),
    "documents": Unsupported("documents for retrieval-augmented chat templates are not passed on",
                             endpoints=("chat",)),
    "reasoning_effort": Unsupported("reasoning controls are not implemented", endpoints=("chat",)),
    "web_search_options": Unsupported("web search is not implemented", _absent, endpoints=("chat",)),
    "mm_processor_kwargs": Unsupported("there is no multimodal processor (image and audio content parts are "
                                       "refused)"),
    "verbosity": Unsupported("verbosity control is not implemented (only OpenAI's default, medium)",
                             default_verbosity, endpoints=("chat",)),
}
"""Fields that would change the output and are not implemented: a 400 unless neutral."""

IGNORED: dict[str, str] = {
    "user": "an end-user id for the platform's abuse monitoring",
    "metadata": "tags for the platform's stored completions",
    "store": "pagoda stores nothing",
    "service_tier": "there is one tier",
    "safety_identifier": "an end-user id for the platform's abuse monitoring",
    "prompt_cache_key": "a routing hint for the platform's cache; pagoda's prefix cache needs none",
    "prompt_cache_retention": "a lifetime for the platform's cache; pagoda's prefix cache keeps blocks while memory "
                              "allows",
    "prompt_cache_options": "breakpoints and lifetime for the platform's cache; pagoda's prefix cache needs none",
    "prediction": "predicted outputs only speed up generation, they do not change it",
    "media_io_kwargs": "no multimodal processor (image and audio content parts are refused)",
}
"""Harmless extras: accepted, logged as ignored."""

IGNORED_VALUES: dict[str, tuple[str, ...]] = {
    "service_tier": ("auto", "default", "flex", "scale", "priority", "fast", "ultrafast"),
    "prompt_cache_retention": ("in_memory", "24h"),
}
"""The values OpenAI documents for the ignored fields that have a fixed set (another value is a 400 there too)."""


def check_ignored_values(extra: dict[str, Any]) -> None:
    """Refuse an ignored field (:data:`IGNORED_VALUES`) set to a value OpenAI does not define (null passes)."""
    for name, allowed in IGNORED_VALUES.items():
        value = extra.get(name)
        if value is not None and value not in allowed:
            raise ValidationError(f"{name} must be one of {list(allowed)} (OpenAI's values; pagoda accepts and "
                                  f"ignores it), got {value!r}.", name)


BEAM_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "stop": (None, [], ""), "stop_token_ids": (None, []), "logit_bias": (None, {}), "min_tokens": (None, 0),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "repetition_penalty": (None, 1, 1.0),
    "prompt_logprobs": (None,), "allowed_token_ids": (None,), "bad_words": (None, []),
    "logprob_token_ids": (None,), "priority": (None, 0),
    # sampling: beam search draws nothing (its ranking reads the raw logprobs, as vLLM's does)
    "temperature": (None, 0, 0.0, 1, 1.0), "top_p": (None, 1, 1.0), "top_k": (None, 0, -1), "min_p": (None, 0, 0.0),
    "seed": (None,),
}
"""Fields beam search cannot honour (it ranks raw logprobs and stops only at EOS or max_tokens),
with their neutral values."""

BEAM_ONLY: dict[str, tuple[Any, ...]] = {"length_penalty": (None, 1, 1.0), "early_stopping": (None, False)}
"""Beam search's own fields, with their neutral values: set otherwise without ``use_beam_search``, a 400."""


def logged_as_ignored(extra: dict[str, Any], unknown_is_error: bool) -> list[str]:
    """The extra fields a request model logs as ignored: the harmless ones, and where an unknown field is no error
    (routes other than completions and chat) the unknown ones too; unsupported fields are a 400 either way."""
    return sorted(k for k in extra if k in IGNORED or not (k in UNSUPPORTED or unknown_is_error))


def _unknown(name: str, value: Any, req: Any, endpoint: str) -> bool:
    """An extra field that asks for something no table knows here: not a harmless extra, not null, and either in no
    table or another endpoint's unsupported field set to more than its neutral value."""
    if name in IGNORED or value is None:
        return False
    rule = UNSUPPORTED.get(name)
    return rule is None or (endpoint not in rule.endpoints and not rule.neutral(value, req))


def check_request_fields(req: Any, endpoint: str) -> None:
    """Refuse a request that sets an unsupported or unknown field (or one beam search cannot honour, or one of beam
    search's own without it)."""
    extra = getattr(req, "model_extra", None) or {}
    unknown = sorted(k for k, v in extra.items() if _unknown(k, v, req, endpoint))
    if unknown:
        raise ValidationError(f"Unrecognized request field(s) {unknown}: pagoda implements no such field on this "
                              f"endpoint (docs/serving.md lists the fields); remove it or check its spelling.",
                              unknown[0])
    check_ignored_values(extra)
    for name, rule in UNSUPPORTED.items():
        if endpoint not in rule.endpoints:
            continue
        value = getattr(req, name, None)
        if not rule.neutral(value, req):
            raise ValidationError(f"{name} is not supported by pagoda: {rule.reason}.", name)
    if getattr(req, "use_beam_search", False):
        for name, neutral in BEAM_UNSUPPORTED.items():
            if getattr(req, name, None) not in neutral:
                raise ValidationError(f"{name} is not supported with use_beam_search.", name)
    else:
        for name, neutral in BEAM_ONLY.items():
            if getattr(req, name, None) not in neutral:
                raise ValidationError(f"{name} applies to beam search only (set use_beam_search).", name)
