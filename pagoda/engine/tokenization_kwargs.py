"""vLLM's ``tokenization_kwargs`` (``LLM.generate``, ``LLMEngine.add_request``, ``AsyncLLM.add_request``): the keys
pagoda honours, applied to one prompt before it is admitted; any other key is refused by name."""

from __future__ import annotations

from typing import Any

from pagoda.engine.input_processor import PromptType
from pagoda.errors import ValidationError

TOKENIZATION_KWARGS = ("add_special_tokens", "truncate_prompt_tokens", "truncation", "max_length")
"""The keys of vLLM's ``tokenization_kwargs`` pagoda honours (any other is refused by name)."""


def parse_tokenization_kwargs(kwargs: dict[str, Any] | None, max_model_len: int) -> tuple[bool, int | None]:
    """Checked ``tokenization_kwargs`` as ``(add_special_tokens, keep)``: ``keep`` the number of last tokens a prompt
    keeps (None: no cut). Raises ``ValidationError`` naming a key pagoda does not honour or a bad value."""
    if not kwargs:
        return True, None
    if not isinstance(kwargs, dict):
        raise ValidationError(f"tokenization_kwargs must be a dict, got {type(kwargs).__name__}.",
                              "tokenization_kwargs")
    unknown = sorted(str(k) for k in kwargs if k not in TOKENIZATION_KWARGS)
    if unknown:
        raise ValidationError(f"tokenization_kwargs key(s) {unknown} are not supported; pagoda honours "
                              f"{list(TOKENIZATION_KWARGS)}.", "tokenization_kwargs")
    special = kwargs.get("add_special_tokens", True)
    truncation = kwargs.get("truncation")
    if not isinstance(special, bool) or truncation is not None and not isinstance(truncation, bool):
        raise ValidationError("tokenization_kwargs: add_special_tokens and truncation must be booleans.",
                              "tokenization_kwargs")
    keep: list[int] = []
    for name in ("truncate_prompt_tokens", "max_length"):
        k = kwargs.get(name)
        if k is None:
            continue
        if isinstance(k, bool) or not isinstance(k, int) or not (k >= 1 or k == -1 and name != "max_length"):
            raise ValidationError(f"tokenization_kwargs[{name!r}]={k!r}: must be a positive integer"
                                  f"{' or -1 (the context length)' if name != 'max_length' else ''}.",
                                  "tokenization_kwargs")
        if name == "max_length" and truncation is False:
            continue  # HF: max_length without truncation does not cut
        keep.append(max_model_len if k == -1 else k)
    if truncation and kwargs.get("max_length") is None:
        keep.append(max_model_len)
    return special, min(keep) if keep else None


def apply_tokenization_kwargs(prompt: PromptType, kwargs: dict[str, Any] | None, tokenizer: Any,
                              max_model_len: int) -> PromptType:
    """vLLM's ``tokenization_kwargs`` applied to one prompt: a text prompt is tokenized here with
    ``add_special_tokens`` (default True) and comes back as a prompt dict with its ids; ``truncate_prompt_tokens``
    (k, or -1: the context length) and ``truncation`` / ``max_length`` (HF's: ``max_length`` given, or
    ``truncation=True`` with the context length) keep the prompt's last k tokens, as vLLM's tokenizer (its
    truncation side is left). ``add_special_tokens`` has no effect on token-id prompts (as in vLLM). None / {}:
    the prompt unchanged. Raises ``ValidationError`` naming a key pagoda does not honour or a bad value."""
    if not kwargs:
        return prompt
    special, keep = parse_tokenization_kwargs(kwargs, max_model_len)
    if isinstance(prompt, str):
        prompt = {"prompt": prompt}
    if isinstance(prompt, dict) and "prompt_token_ids" not in prompt and isinstance(prompt.get("prompt"), str):
        prompt = {**prompt, "prompt_token_ids": tokenizer.encode(prompt["prompt"], add_special_tokens=special)}
    if keep is not None:
        if isinstance(prompt, dict) and isinstance(prompt.get("prompt_token_ids"), (list, tuple)):
            prompt = {**prompt, "prompt_token_ids": list(prompt["prompt_token_ids"])[-keep:]}
        elif isinstance(prompt, list):
            prompt = prompt[-keep:]
    return prompt
