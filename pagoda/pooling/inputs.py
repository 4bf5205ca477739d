"""Front-end admission of pooling requests: tokenize (with ``truncate_prompt_tokens``), check against the
engine's pooler, and build the core request (a prompt-only request: ``max_tokens`` 0, no sampling).

Checks, each a :class:`ValidationError` naming the field: the engine is a pooling engine (else
``model``), the task is one the model serves (``task``), the task takes the output fields set (``normalize``,
``dimensions``, ``use_activation``), ``dimensions`` is one it supports, the prompt
is not empty and fits ``max_model_len`` unless truncated (``prompt``, ``context_length_exceeded``),
token ids are in the vocabulary.
"""

from __future__ import annotations

import time
from typing import Any

from pagoda.engine import admission
from pagoda.engine.messages import AdmissionLimits, EngineCoreRequest
from pagoda.errors import ValidationError
from pagoda.pooling.config import ResolvedPooler
from pagoda.pooling.params import PoolingParams
from pagoda.sampling_params import SamplingParams

_NO_SAMPLING = SamplingParams(max_tokens=1, detokenize=False)

GENERATIVE_ONLY = ("This model runs with --runner pooling (an embedding / classification / scoring model): it "
                   "cannot generate text. Use the pooling APIs (LLM.embed/classify/score/reward/encode; "
                   "/v1/embeddings, /classify, /score, /rerank, /pooling).")


def not_pooling_error() -> ValidationError:
    return ValidationError("This model is a generative model (--runner generate): pooling requests need a pooling "
                           "model (--runner pooling, or --convert embed|classify|reward).", "model",
                           code="wrong_runner")


def check_text(text: str, field: str = "prompt") -> str:
    """``text``, checked to be Unicode the tokenizer can take (:func:`admission.check_unicode`, naming ``field``)."""
    admission.check_unicode(text, field)
    return text


def check_task(pooler: ResolvedPooler, task: str) -> None:
    """``task`` is one the engine's pooler serves; else a ValidationError naming ``task`` (for ``score`` on a
    classifier of several labels, vLLM's reason: a cross-encoder score is one logit; on an embedding model, where
    its scores come from: the embed task's cosine)."""
    if task in pooler.supported_tasks:
        return
    if task == "score" and pooler.kind == "embed":
        raise ValidationError("task 'score' is a cross-encoder's (a classifier of one label); this embedding model "
                              "scores pairs by the cosine of their embeddings: use LLM.score or /score.", "task",
                              code="unsupported_task")
    if task == "score" and pooler.kind == "classify":
        raise ValidationError(f"Score API is only enabled for num_labels == 1 (this classifier has {pooler.num_labels} "
                              f"labels; use classify for its probabilities).", "task", code="unsupported_task")
    raise ValidationError(f"task {task!r} is not served by this {pooler.kind} model (it serves "
                          f"{list(pooler.supported_tasks)}).", "task", code="unsupported_task")


def truncation(truncate: int | None, max_len: int) -> int | None:
    """The tokens ``truncate_prompt_tokens`` keeps (-1: the context length); above the context length a
    ValidationError in vLLM's words (it would keep more than any input may have)."""
    if truncate is None:
        return None
    if truncate > max_len:
        raise ValidationError(f"truncate_prompt_tokens value ({truncate}) is greater than max_model_len ({max_len}). "
                              f"Please, select a smaller truncation size.", "truncate_prompt_tokens")
    return max_len if truncate == -1 else truncate


def tokenize_text(tokenizer: Any, text: str, truncate: int | None, max_len: int, add_special_tokens: bool = True,
                  field: str = "prompt", lowercase: bool = False) -> list[int]:
    """``text``'s token ids (Unicode checked, naming ``field``). With ``truncate_prompt_tokens`` the tokenizer cuts
    the text to k tokens, keeping its first ones and the special tokens it adds (``[SEP]``), as vLLM's pooling
    tokenizer does, whether or not special tokens are added. ``lowercase``: the pooler's ``lowercase``
    (sentence_bert_config.json's ``do_lower_case``), applied first, as sentence-transformers and vLLM do."""
    check_text(text, field)
    if lowercase:
        text = text.lower()
    k = truncation(truncate, max_len)
    if k is None:
        return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
    return list(tokenizer(text, add_special_tokens=add_special_tokens, truncation=True, max_length=k)["input_ids"])


def render_score_template(tokenizer: Any, template: str, text_1: str, text_2: str) -> str:
    """A score pair through a score template (vLLM's: the chat template given with ``--chat-template`` or
    ``LLM.score(chat_template=...)``), rendered over the messages ``[{"role": "query", "content": text_1},
    {"role": "document", "content": text_2}]`` with no generation prompt. A template that fails to render is a
    ValidationError naming ``chat_template``."""
    messages = [{"role": "query", "content": text_1}, {"role": "document", "content": text_2}]
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=False)
    except Exception as e:  # jinja2's errors: a template that does not take query / document messages
        raise ValidationError(f"The score template could not render the query / document pair: {e}",
                              "chat_template") from e
    return str(text)


def tokenize_pair(tokenizer: Any, text_1: str, text_2: str, truncate: int | None,
                  max_len: int, lowercase: bool = False, *, use_sep_token: bool = True,
                  chat_template: str | None = None) -> dict[str, Any]:
    """A cross-encoder's input, as vLLM builds it: with ``chat_template`` (a score template) the pair rendered by
    :func:`render_score_template` and tokenized as one text; else, with ``use_sep_token`` (the pooler's; a
    cross-encoder's default), the pair tokenized together (with segment ids when the tokenizer has them); else
    (an LLM converted into a classifier) ``text_1 + text_2`` tokenized as one text. ``lowercase``: the pooler's
    (sentence_bert_config.json's ``do_lower_case``), applied to both texts as sentence-transformers' CrossEncoder
    and vLLM do."""
    kw: dict[str, Any] = {}
    k = truncation(truncate, max_len)
    if k is not None:
        kw = {"truncation": True, "max_length": k}
    text_1, text_2 = check_text(text_1), check_text(text_2)
    if lowercase:
        text_1, text_2 = text_1.lower(), text_2.lower()
    if chat_template is not None:
        enc = tokenizer(render_score_template(tokenizer, chat_template, text_1, text_2), **kw)
    elif use_sep_token:
        enc = tokenizer(text_1, text_2, **kw)
    else:
        enc = tokenizer(text_1 + text_2, **kw)
    out: dict[str, Any] = {"prompt_token_ids": list(enc["input_ids"])}
    if "token_type_ids" in enc:
        out["token_type_ids"] = list(enc["token_type_ids"])
    return out


def _tokenize(tokenizer: Any, prompt: Any, truncate: int | None, max_len: int, lowercase: bool = False
              ) -> tuple[str | None, list[int], list[int] | None]:
    k = truncation(truncate, max_len)
    if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
        ids, tt = prompt["prompt_token_ids"], prompt.get("token_type_ids")
        if not isinstance(ids, (list, tuple)) or not all(admission.is_token_id(t) for t in ids):
            raise ValidationError("prompt_token_ids must be a list of integer token ids.", "prompt")
        ids, tt = list(ids), list(tt) if tt is not None else None
        if tt is not None and len(tt) != len(ids):
            raise ValidationError("token_type_ids must have one entry per prompt token.", "token_type_ids")
        if k is not None and len(ids) > k:  # token ids: keep the last k (vLLM's left truncation)
            ids, tt = ids[-k:], tt[-k:] if tt is not None else None
        return prompt.get("prompt"), ids, tt
    if isinstance(prompt, dict):
        prompt = prompt.get("prompt")
    if isinstance(prompt, list) and all(admission.is_token_id(t) for t in prompt):
        return _tokenize(tokenizer, {"prompt_token_ids": prompt}, truncate, max_len)
    if not isinstance(prompt, str):
        raise ValidationError("A prompt must be a string, a list of token ids or a dict with 'prompt' or "
                              "'prompt_token_ids'.", "prompt")
    return prompt, tokenize_text(tokenizer, prompt, truncate, max_len, lowercase=lowercase), None


def process_pooling(request_id: str, prompt: Any, params: PoolingParams, pooler: ResolvedPooler | None,
                    tokenizer: Any, limits: AdmissionLimits, priority: int = 0, scheduling_policy: str = "fcfs"
                    ) -> tuple[str | None, list[int], EngineCoreRequest]:
    """Tokenize and admit one pooling request; returns (text, token ids, the core request, whose params have their
    task set: an unset one is the model's first). ``priority`` is queued as a generation request's is (non-zero
    only under ``--scheduling-policy priority``)."""
    if pooler is None:
        raise not_pooling_error()
    admission.check_priority(priority, scheduling_policy)
    if params.task is None:  # vLLM's default task: the model's own (its first)
        params = params.with_task(pooler.supported_tasks[0])
    assert params.task is not None  # for mypy: set just above
    check_task(pooler, params.task)
    params.check_task_parameters()
    pooler.check_dimensions(params.dimensions)
    text, ids, tt = _tokenize(tokenizer, prompt, params.truncate_prompt_tokens, limits.max_model_len, pooler.lowercase)
    if not ids:
        raise ValidationError("The input is empty (no tokens).", "prompt")
    if len(ids) > limits.max_model_len:
        raise ValidationError(
            f"The input has {len(ids)} tokens, more than this model's maximum context length of "
            f"{limits.max_model_len}; shorten it or set truncate_prompt_tokens.", "prompt",
            code="context_length_exceeded")
    if len(ids) > limits.kv_cache_tokens:
        raise ValidationError(f"The input has {len(ids)} tokens, more than the whole KV cache holds "
                              f"({limits.kv_cache_tokens}).", "prompt")
    admission.check_prompt_ids(ids, limits)
    req = EngineCoreRequest(request_id, ids, _NO_SAMPLING, [], 0, time.time(), pooling_params=params,
                            token_type_ids=tt, priority=priority)
    return text, ids, req
