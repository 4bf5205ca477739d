"""``--speculative-config`` / ``LLM(speculative_config=...)``: vLLM's JSON keys, checked at start-up.

Every key is validated here; an unknown key, a bad value or a method pagoda does not run is a
``ValueError`` naming the key. The draft model's own checks (vocabulary, context) run when it
loads (:mod:`pagoda.spec_decode.draft_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SPEC_METHODS = ("ngram", "suffix", "draft_model", "eagle", "eagle3", "synthetic")
"""Methods named in the config. ``synthetic`` is pagoda's timing-only proposer (never for real use)."""
MODEL_METHODS = ("draft_model", "eagle", "eagle3")  # methods that load ``model`` (a checkpoint folder)
# Suffix decoding's keys and vLLM's defaults (pagoda.spec_decode.suffix).
SUFFIX_KEYS = ("suffix_decoding_max_tree_depth", "suffix_decoding_max_spec_factor", "suffix_decoding_min_token_prob",
               "suffix_decoding_max_cached_requests")
DEFAULT_SUFFIX_DEPTH = 24
DEFAULT_SUFFIX_SPEC_FACTOR = 1.0
DEFAULT_SUFFIX_MIN_TOKEN_PROB = 0.1
DEFAULT_SUFFIX_CACHED_REQUESTS = 10000
# vLLM's keys that pagoda accepts; others (medusa, tree drafting, ...) are refused by name.
_KEYS = ("method", "num_speculative_tokens", "model", "prompt_lookup_min", "prompt_lookup_max",
         "draft_tensor_parallel_size", "quantization", "revision", "max_model_len", "disable_by_batch_size",
         "enforce_eager", *SUFFIX_KEYS)
DEFAULT_LOOKUP_MIN = 2
DEFAULT_LOOKUP_MAX = 5


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    prompt_lookup_min: int = DEFAULT_LOOKUP_MIN
    prompt_lookup_max: int = DEFAULT_LOOKUP_MAX
    model: str | None = None  # the draft model (draft_model) or head (eagle, eagle3) checkpoint folder
    quantization: str | None = None
    revision: str | None = None
    max_model_len: int | None = None  # the draft's context (default: the target's)
    disable_by_batch_size: int | None = None  # no speculation while more requests than this run
    suffix_max_depth: int = DEFAULT_SUFFIX_DEPTH  # suffix: the longest match looked for
    suffix_max_spec_factor: float = DEFAULT_SUFFIX_SPEC_FACTOR  # suffix: draft <= factor x match length
    suffix_min_token_prob: float = DEFAULT_SUFFIX_MIN_TOKEN_PROB  # suffix: a draft stops below this probability
    suffix_max_cached_requests: int = DEFAULT_SUFFIX_CACHED_REQUESTS  # suffix: finished outputs kept (0: none)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeculativeConfig:
        """Parse and check vLLM's speculative-config object."""
        if not isinstance(d, dict):
            raise ValueError(f"speculative_config must be a JSON object, got {type(d).__name__}.")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise ValueError(f"speculative_config: unknown key(s) {unknown}; accepted: {list(_KEYS)}.")
        method = _method(d)
        suffix = _suffix_settings(d, method)
        k = d.get("num_speculative_tokens")
        if k is None and method == "suffix":  # a suffix draft's length is adaptive: this is its cap
            k = suffix[0]
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"speculative_config.num_speculative_tokens must be a positive integer, got {k!r}.")
        tp = d.get("draft_tensor_parallel_size")
        if tp is not None and (type(tp) is not int or tp != 1):
            raise ValueError(f"speculative_config.draft_tensor_parallel_size must be 1, got {tp!r}.")
        lo, hi = _lookup_range(d)
        lookup_given = [key for key in ("prompt_lookup_min", "prompt_lookup_max") if d.get(key) is not None]
        if lookup_given and method != "ngram":
            raise ValueError(f"speculative_config.{lookup_given[0]} applies to method 'ngram' only (method is "
                             f"{method!r}).")
        dbs = d.get("disable_by_batch_size")
        if dbs is not None and (type(dbs) is not int or dbs < 1):
            raise ValueError(f"speculative_config.disable_by_batch_size must be a positive integer, got {dbs!r}.")
        mml = d.get("max_model_len")
        if mml is not None and method != "draft_model":
            raise ValueError(f"speculative_config.max_model_len applies to method 'draft_model' only (the draft "
                             f"model's context); method {method!r} drafts over the target's whole context.")
        if mml is not None and (type(mml) is not int or mml <= k):
            raise ValueError(f"speculative_config.max_model_len must be an integer above num_speculative_tokens "
                             f"({k}), got {mml!r}.")
        if method in MODEL_METHODS and not d.get("model"):
            raise ValueError(f"speculative_config.model: method {method!r} needs the draft's checkpoint path.")
        if method not in MODEL_METHODS and d.get("model") not in (None, method, f"[{method}]"):
            raise ValueError(f"speculative_config.model: method {method!r} takes no model, got {d.get('model')!r}.")
        _check_draft_loading(d, method)
        return cls(method, k, lo, hi, d.get("model") if method in MODEL_METHODS else None,
                   d.get("quantization"), d.get("revision"), mml, dbs, *suffix)


def _check_draft_loading(d: dict[str, Any], method: str) -> None:
    """``quantization`` / ``revision`` (strings, for ``draft_model``: an EAGLE head is read unquantized from a local
    folder, so neither applies to it) and ``enforce_eager`` (drafts and heads run eagerly: only true, or absent,
    describes what runs)."""
    for key in ("quantization", "revision"):
        v = d.get(key)
        if v is None:
            continue
        if method not in MODEL_METHODS:
            raise ValueError(f"speculative_config.{key} applies to a draft model or head (method {method!r} loads "
                             f"none).")
        if method != "draft_model":
            raise ValueError(f"speculative_config.{key} applies to method 'draft_model' only: pagoda reads an "
                             f"{method.upper()} head unquantized from a local folder (method is {method!r}).")
        if not isinstance(v, str) or not v:
            raise ValueError(f"speculative_config.{key} must be a string, got {v!r}.")
    eager = d.get("enforce_eager")
    if eager is not None and eager is not True:
        raise ValueError(f"speculative_config.enforce_eager: drafts run eagerly in pagoda (their own CUDA graphs are "
                         f"not built); leave it out or set true, got {eager!r}.")


def _method(d: dict[str, Any]) -> str:
    """``method``, or vLLM's guess from ``model`` when it is left out: ``"[ngram]"`` / ``"ngram"``, an EAGLE head
    by its name (``eagle-`` in it: ``eagle``; ``eagle3``: ``eagle3``, as vLLM's auto-detection reads the published
    heads' names, e.g. yuhuili/EAGLE-LLaMA3-Instruct-8B, yuhuili/EAGLE3-LLaMA3.1-Instruct-8B), else a draft model."""
    method = d.get("method")
    model = d.get("model")
    if method is None:
        if model in ("ngram", "[ngram]"):
            method = "ngram"
        elif isinstance(model, str) and "eagle-" in model.lower():
            method = "eagle"
        elif isinstance(model, str) and "eagle3" in model.lower():
            method = "eagle3"
        elif model:
            method = "draft_model"
        else:
            raise ValueError(f"speculative_config.method is required ({', '.join(SPEC_METHODS[:5])}).")
    if method not in SPEC_METHODS:
        raise ValueError(f"speculative_config.method must be one of {SPEC_METHODS[:5]}, got {method!r}.")
    return str(method)


def _suffix_settings(d: dict[str, Any], method: str) -> tuple[int, float, float, int]:
    """(max tree depth, max spec factor, min token prob, max cached requests) of ``method: suffix``; its keys are
    refused elsewhere."""
    given = [key for key in SUFFIX_KEYS if key in d]
    if method != "suffix":
        if given:
            raise ValueError(f"speculative_config.{given[0]} applies to method 'suffix' only (method is {method!r}).")
        return (DEFAULT_SUFFIX_DEPTH, DEFAULT_SUFFIX_SPEC_FACTOR, DEFAULT_SUFFIX_MIN_TOKEN_PROB,
                DEFAULT_SUFFIX_CACHED_REQUESTS)
    depth = d.get("suffix_decoding_max_tree_depth", DEFAULT_SUFFIX_DEPTH)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"speculative_config.suffix_decoding_max_tree_depth must be a positive integer, got "
                         f"{depth!r}.")
    factor = d.get("suffix_decoding_max_spec_factor", DEFAULT_SUFFIX_SPEC_FACTOR)
    if not isinstance(factor, int | float) or isinstance(factor, bool) or not 0 < factor < float("inf"):
        raise ValueError(f"speculative_config.suffix_decoding_max_spec_factor must be a positive number, got "
                         f"{factor!r}.")
    prob = d.get("suffix_decoding_min_token_prob", DEFAULT_SUFFIX_MIN_TOKEN_PROB)
    if not isinstance(prob, int | float) or isinstance(prob, bool) or not 0 <= prob <= 1:
        raise ValueError(f"speculative_config.suffix_decoding_min_token_prob must be a number in [0, 1], got {prob!r}.")
    cached = d.get("suffix_decoding_max_cached_requests", DEFAULT_SUFFIX_CACHED_REQUESTS)
    if not isinstance(cached, int) or isinstance(cached, bool) or cached < 0:
        raise ValueError(f"speculative_config.suffix_decoding_max_cached_requests must be an integer >= 0 (0: no "
                         f"earlier requests' outputs), got {cached!r}.")
    return depth, float(factor), float(prob), cached


def _lookup_range(d: dict[str, Any]) -> tuple[int, int]:
    """(prompt_lookup_min, prompt_lookup_max). vLLM's rule when one is given: the other equals it (only max=4 looks
    for 4-grams alone); when neither is given, pagoda's defaults (2, 5; vLLM's are 5, 5)."""
    lo, hi = d.get("prompt_lookup_min"), d.get("prompt_lookup_max")
    for key, v in (("prompt_lookup_min", lo), ("prompt_lookup_max", hi)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"speculative_config.{key} must be a positive integer, got {v!r}.")
    if lo is None and hi is None:
        lo, hi = DEFAULT_LOOKUP_MIN, DEFAULT_LOOKUP_MAX
    elif lo is None:
        lo = hi
    elif hi is None:
        hi = lo
    assert isinstance(lo, int) and isinstance(hi, int)
    if lo > hi:
        raise ValueError(f"speculative_config.prompt_lookup_min ({lo}) must not exceed prompt_lookup_max ({hi}).")
    return lo, hi
