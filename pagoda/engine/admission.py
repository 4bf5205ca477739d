"""Admission: every check a request must pass before it reaches the engine core, in one place.

The input processor (:mod:`pagoda.engine.input_processor`), which both the offline ``LLM``
(through ``LLMEngine``) and the server (through ``AsyncLLM``) use, calls these functions; a
failure raises :class:`pagoda.errors.ValidationError` naming the request field
(``parameter``), which the server answers with a 400 carrying ``error.param``. What the
checks need to know about the engine (context length, vocabulary, KV-cache capacity, token
budget) is an :class:`~pagoda.engine.messages.AdmissionLimits`, which the core computes
from its own state and sends in its ``Ready`` message.

Field-range checks of a single parameter (``0 < top_p <= 1``, ``n <= 128`` ...) live in
:class:`pagoda.sampling_params.SamplingParams` / ``BeamSearchParams`` and raise the same
error type. The scheduler keeps only its invariants (a request it is given always fits) and
raises :class:`pagoda.errors.EngineInvariantError` when they break.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pagoda.beam_search import candidates_per_step
from pagoda.engine.messages import AdmissionLimits
from pagoda.errors import ValidationError
from pagoda.sampling_params import ALL_LOGPROBS, BeamSearchParams, SamplingParams

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
"""OpenAI's error code for a request longer than the model's context."""


def is_token_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def check_prompt_ids(ids: Sequence[Any], limits: AdmissionLimits, parameter: str = "prompt") -> None:
    """A prompt is a non-empty list of in-vocabulary token ids."""
    if not ids:
        raise ValidationError("The prompt is empty; it must hold at least one token.", parameter)
    V = limits.vocab_size
    if set(map(type, ids)) == {int} and min(ids) >= 0 and max(ids) < V:
        return  # the common case, checked at C speed; otherwise the checks below name what is wrong
    if not all(is_token_id(t) for t in ids):
        raise ValidationError("prompt_token_ids must be a list of integers.", parameter)
    for t in ids:
        if not 0 <= t < V:
            raise ValidationError(f"Token id {t} is out of vocabulary (vocab size {V}).", parameter, value=t)


def check_cache_salt(salt: Any) -> None:
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise ValidationError("cache_salt must be a non-empty string.", "cache_salt")


def resolve_num_logprobs(value: int | None, limits: AdmissionLimits) -> int | None:
    """A logprobs count with -1 (the whole vocabulary) resolved to the vocabulary size."""
    return limits.vocab_size if value == ALL_LOGPROBS else value


def check_num_logprobs(value: int | None, limits: AdmissionLimits, parameter: str = "logprobs") -> None:
    """``logprobs`` / ``prompt_logprobs`` / ``top_logprobs`` (-1: the vocabulary size): at most the engine's
    ``max_logprobs`` (vLLM's wording: "Requested sample logprobs of N, which is greater than max allowed: M")."""
    n = resolve_num_logprobs(value, limits)
    if n is not None and n > limits.max_logprobs:
        kind = "prompt" if parameter == "prompt_logprobs" else "sample"
        raise ValidationError(f"Requested {kind} logprobs of {n}, which is greater than max allowed: "
                              f"{limits.max_logprobs}", parameter, value=value)


def check_sampling(params: SamplingParams, limits: AdmissionLimits) -> None:
    """Checks of the sampling parameters that depend on the engine (ranges are SamplingParams')."""
    params.verify()  # fields may have been assigned after construction (n=0 once hung)
    if not params.logprob_token_ids:  # logprobs == len(logprob_token_ids), capped by SamplingParams
        check_num_logprobs(params.logprobs, limits, "logprobs")
    check_num_logprobs(params.prompt_logprobs, limits, "prompt_logprobs")
    check_in_vocab("logit_bias", params.logit_bias or (), limits)
    check_in_vocab("logprob_token_ids", params.logprob_token_ids or (), limits)
    if params.allowed_token_ids is not None and not all(0 <= t < limits.vocab_size for t in params.allowed_token_ids):
        raise ValidationError("allowed_token_ids contains out-of-vocab token id!", "allowed_token_ids")
    check_in_vocab("bad_words", [t for seq in params.bad_words_token_ids or () for t in seq], limits)


def check_in_vocab(parameter: str, ids: Iterable[int], limits: AdmissionLimits) -> None:
    """Every id in ``ids`` is in the vocabulary (vLLM's message, the first 8 offenders named)."""
    V = limits.vocab_size
    bad = sorted({t for t in ids if not 0 <= t < V})
    if bad:
        raise ValidationError(f"token_id(s) {bad[:8]} in {parameter} contain out-of-vocab token ids. "
                              f"Vocabulary size: {V}.", parameter)


def check_unicode(text: str, parameter: str) -> None:
    """Text to tokenize is valid Unicode: JSON can carry lone surrogates ("\\ud800"), on which the tokenizer
    fails with a TypeError (a 500 on the server, a puzzle offline)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValidationError(f"{parameter} is not valid Unicode text: {e.reason} at position {e.start}.",
                              parameter) from None


def bad_words_token_ids(bad_words: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """vLLM's ``update_from_tokenizer``: each bad word as token ids, alone and after a space.

    The word is encoded without special tokens, its leading spaces stripped; the
    space-prefixed form is kept too when it starts with a different token and has as many
    tokens (a word inside a text, for tokenizers that merge the space into the word).
    """
    out: list[list[int]] = []
    for word in bad_words:
        check_unicode(word, "bad_words")
        plain = tokenizer.encode(word.lstrip(), add_special_tokens=False)
        if not plain:
            raise ValidationError("bad_words entries must tokenize to at least one token.", "bad_words")
        out.append(list(plain))
        spaced = tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            out.append(list(spaced))
    return out


def check_length(prompt_len: int, max_tokens: int | None, limits: AdmissionLimits,
                 cap_to_context: bool = False) -> int:
    """Context length, whole-KV-cache capacity and token budget; returns the resolved ``max_tokens``.

    ``max_tokens=None`` means "up to the context length". The parameter named is ``prompt``
    when the prompt alone (plus one generated token) is too long, else ``max_tokens``.
    With ``cap_to_context`` (the offline ``LLM``, as vLLM's: its scheduler ends a request
    at the context length with ``finish_reason="length"``) a ``max_tokens`` past the
    context is cut to what fits instead of refused; the server refuses it, as vLLM's does.
    """
    L = limits.max_model_len
    if max_tokens is None:
        max_tokens = max(1, L - prompt_len)
    elif cap_to_context and prompt_len < L:
        max_tokens = min(max_tokens, L - prompt_len)
    total = prompt_len + max_tokens
    param = "prompt" if prompt_len + 1 > L else "max_tokens"
    if total > L:
        raise ValidationError(
            f"This model's maximum context length is {L} tokens. However, you requested {total} tokens "
            f"({prompt_len} in the prompt, {max_tokens} in the completion). "
            f"Please reduce the length of the prompt or max_tokens.",
            param, code=CONTEXT_LENGTH_EXCEEDED)
    cap = limits.kv_cache_tokens
    if total > cap:
        raise ValidationError(
            f"The request needs {total} tokens of KV cache but the whole cache holds {cap} tokens. "
            f"Reduce the prompt or max_tokens, or raise the KV cache size "
            f"(--kv-cache-memory-bytes / --gpu-memory-utilization).",
            "prompt" if prompt_len + 1 > cap else "max_tokens")
    if not limits.enable_chunked_prefill and prompt_len > limits.max_num_batched_tokens:
        raise ValidationError(
            f"The prompt has {prompt_len} tokens, more than max_num_batched_tokens="
            f"{limits.max_num_batched_tokens} with chunked prefill disabled; enable chunked prefill or raise "
            f"--max-num-batched-tokens.", "prompt")
    return max_tokens


def check_request(ids: Sequence[Any], params: SamplingParams, limits: AdmissionLimits,
                  cap_to_context: bool = False) -> int:
    """Every check of a sampling request; returns its resolved ``max_tokens`` (see :func:`check_length`)."""
    check_prompt_ids(ids, limits)
    check_sampling(params, limits)
    return check_length(len(ids), params.max_tokens, limits, cap_to_context)


def resolve_all_logprobs(params: SamplingParams, limits: AdmissionLimits) -> SamplingParams:
    """``params`` with ``logprobs`` / ``prompt_logprobs`` of -1 replaced by the vocabulary size (the sampler
    needs a count); the same object when neither is -1."""
    changes = {name: limits.vocab_size for name in ("logprobs", "prompt_logprobs")
               if getattr(params, name) == ALL_LOGPROBS}
    return params.clone(**changes) if changes else params


def check_beam_search(ids: Sequence[Any], params: BeamSearchParams, eos_token_ids: Sequence[int],
                      limits: AdmissionLimits, logprobs: int | None = None) -> None:
    """A beam search the engine can run: each step asks for ``candidates_per_step`` logprobs per beam."""
    params.__post_init__()
    check_prompt_ids(ids, limits)
    num_eos = 0 if params.ignore_eos else len(set(eos_token_ids))
    k = candidates_per_step(params.beam_width, num_eos)
    if k > limits.max_logprobs:
        per = max(2, 1 + num_eos)
        raise ValidationError(
            f"beam_width={params.beam_width} needs {k} candidate logprobs per beam and step "
            f"({per} x beam_width), above max_logprobs={limits.max_logprobs}; use beam_width <= "
            f"{limits.max_logprobs // per}.", "beam_width", value=params.beam_width)
    check_num_logprobs(logprobs, limits, "logprobs")
    check_length(len(ids), params.max_tokens, limits)


def check_truncate_prompt_tokens(value: int | None, limits: AdmissionLimits) -> None:
    if value is not None and not 1 <= value <= limits.max_model_len:
        raise ValidationError(f"truncate_prompt_tokens must be in [1, {limits.max_model_len}] (the context "
                              f"length), got {value}.", "truncate_prompt_tokens", value=value)


def check_priority(priority: Any, policy: str) -> None:
    """``priority`` is an integer, and non-zero only under ``--scheduling-policy priority`` (as vLLM)."""
    if not is_token_id(priority):
        raise ValidationError(f"priority must be an integer, got {priority!r}.", "priority")
    if priority != 0 and policy != "priority":
        raise ValidationError("Got priority != 0 but the scheduling policy is not 'priority' (start the server "
                              "with --scheduling-policy priority, or LLM(scheduling_policy='priority') offline).",
                              "priority", value=priority)


def check_request_id_free(request_id: str, in_use: bool) -> None:
    if in_use:
        raise ValidationError(f"request id {request_id!r} is already in use", "request_id")
