"""Sampling parameters for text generation (vLLM's names and meanings).

:class:`SamplingParams` is a msgspec Struct, as in vLLM: the front end hands it to the engine
core as is (in process) or as msgpack (``AddRequest`` over ZMQ), and decoding it runs the same
checks as constructing it. Invariants after ``__post_init__``: every field is in its allowed
range, ``stop`` is a list of non-empty strings, ``stop_token_ids`` a list of ints, ``top_k`` is
0 when disabled (-1 is accepted and normalised), ``seed`` -1 is no seed and ``logprobs`` /
``prompt_logprobs`` True is 1 (vLLM's normalisations), and ``temperature == 0`` means greedy. A
field out of range or of the wrong type raises :class:`pagoda.errors.ValidationError` naming the
field; so does a combination that would be ignored (stop strings without ``detokenize``).

``allowed_token_ids`` is None or a non-empty list; ``bad_words`` a list of distinct non-empty
strings, which the front end (it has the tokenizer) turns into ``bad_words_token_ids``
(vLLM's ``update_from_tokenizer``); ``logprob_token_ids`` is None or non-empty, and then
``logprobs == len(logprob_token_ids)`` (the sampler reports those ids in place of the top-k).
Vocabulary bounds are admission's (:mod:`pagoda.engine.admission`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgspec

from pagoda.errors import PARAM, ValidationError
from pagoda.structured_output.params import StructuredOutputsParams

# Caps on what multiplies work (the server exposes them as flags).
MAX_N = 128
MAX_LOGPROBS = 20
"""Default of ``--max-logprobs`` (vLLM's); -1 there means the whole vocabulary."""
ALL_LOGPROBS = -1
"""``logprobs`` / ``prompt_logprobs`` value asking for the whole vocabulary (resolved at admission)."""
MAX_STOP_STRINGS = 256
MAX_STOP_STRING_LEN = 4096
MAX_LOGIT_BIAS = 1024
MAX_LOGPROB_TOKEN_IDS = 128  # vLLM's bound on logprob_token_ids
MAX_BAD_WORDS = 128  # bad_words entries (each becomes one or two token sequences)

_GREEDY_EPS = 1e-5


class RequestOutputKind(Enum):
    """vLLM's ``SamplingParams.output_kind``: what the engine's outputs of a running request carry."""

    CUMULATIVE = 0  # every output holds the whole output so far
    DELTA = 1  # each output holds only what is new since the previous one (LLMEngine.step, AsyncLLM.generate)
    FINAL_ONLY = 2  # one output, when the request finishes (what LLM.generate always asks for)


def _bad(name: str, rule: str) -> ValidationError:
    return ValidationError(f"{PARAM} {rule}", name)


def _num(name: str, value: Any, integer: bool = False) -> None:
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise _bad(name, f"must be {'an integer' if integer else 'a number'}, got {value!r}.")
    if not integer and not math.isfinite(value):
        raise _bad(name, f"must be finite, got {value}.")


def _token_ids(name: str, ids: Any) -> None:
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise _bad(name, f"must be a list of integer token ids, got {ids!r}.")


def _in_range(name: str, value: Any, lo: float, hi: float, shown: str, integer: bool = False,
              lo_open: bool = False) -> None:
    _num(name, value, integer)
    if value > hi or value < lo or (lo_open and value == lo):
        raise _bad(name, f"must be in {shown}, got {value}.")


class SamplingParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    # Set by the front end from ``bad_words``: the token sequences whose last token is banned
    # once the output ends with the rest (vLLM's ``_bad_words_token_ids``).
    bad_words_token_ids: list[list[int]] | None = None
    logprob_token_ids: list[int] | None = None
    # Keep only the prompt's last k tokens (-1: the context length), vLLM's left truncation; applied by the
    # front end when it tokenizes (the server's own field, with truncation_side, is applied there).
    truncate_prompt_tokens: int | None = None
    # Grammar-constrained decoding (pagoda.structured_output): JSON schema, any JSON, regex, choice, grammar.
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        self._normalise()
        self._verify()

    # ----------------------------------------------------------------- helpers
    @property
    def sampling_type_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def all_stop_token_ids(self) -> set[int]:
        return set(self.stop_token_ids or [])

    def clone(self, **changes: Any) -> SamplingParams:
        """A copy with ``changes`` applied (checked like a new instance)."""
        return msgspec.structs.replace(self, **changes)

    def verify(self) -> None:
        """Check again (fields may have been assigned after construction)."""
        self.__post_init__()

    # ------------------------------------------------------------- validation
    def _normalise(self) -> None:
        if self.seed == -1 and not isinstance(self.seed, bool):  # vLLM: -1 is no seed
            self.seed = None
        for name in ("logprobs", "prompt_logprobs"):  # vLLM: True asks for the sampled token's logprob alone
            if getattr(self, name) is True:
                setattr(self, name, 1)
        self._normalise_stops()
        if isinstance(self.top_k, (int, float)) and not isinstance(self.top_k, bool) and self.top_k == -1:
            self.top_k = 0
        if self.logit_bias:
            try:
                self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except (TypeError, ValueError, AttributeError) as e:
                raise _bad("logit_bias", f"must map token ids to numbers: {e}") from None
        if isinstance(self.bad_words, str):
            self.bad_words = [self.bad_words]
        if self.bad_words is not None:
            self.bad_words = list(dict.fromkeys(self.bad_words))
        if isinstance(self.structured_outputs, dict):  # a convenience offline; the server builds the struct
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        if self.logprob_token_ids is not None:
            self.logprob_token_ids = list(self.logprob_token_ids) or None
            if self.logprob_token_ids and self.logprobs is None:
                self.logprobs = len(self.logprob_token_ids)  # vLLM's num_logprobs

    def _normalise_stops(self) -> None:
        """``stop`` a list of strings, ``stop_token_ids`` a list (their elements are checked by _verify_stops)."""
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        elif _is_sequence_like(self.stop):
            self.stop = list(self.stop)
        else:
            raise _bad("stop", f"must be a string or a list of strings, got {self.stop!r}.")
        if self.stop_token_ids is not None and not _is_sequence_like(self.stop_token_ids):
            raise _bad("stop_token_ids", f"must be a list of integer token ids, got {self.stop_token_ids!r}.")
        self.stop_token_ids = list(self.stop_token_ids or [])

    def _verify(self) -> None:
        self._verify_output_fields()
        _in_range("n", self.n, 1, MAX_N, f"[1, {MAX_N}]", integer=True)
        for name in ("presence_penalty", "frequency_penalty"):
            _in_range(name, getattr(self, name), -2.0, 2.0, "[-2, 2]")
        _num("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0.0:  # vLLM's wording
            raise _bad("repetition_penalty", f"must be greater than zero, got {self.repetition_penalty}.")
        _in_range("repetition_penalty", self.repetition_penalty, 0.0, 2.0**10, "(0, 1024]", lo_open=True)
        _num("temperature", self.temperature)
        if self.temperature < 0.0:
            raise _bad("temperature", f"must be non-negative, got {self.temperature}.")
        _in_range("temperature", self.temperature, 0.0, 1e4, "[0, 10000]")
        _in_range("top_p", self.top_p, 0.0, 1.0, "(0, 1]", lo_open=True)
        _num("top_k", self.top_k, True)
        if self.top_k < 0:
            raise _bad("top_k", f"must be 0 (disable), or at least 1, got {self.top_k}.")
        _in_range("min_p", self.min_p, 0.0, 1.0, "[0, 1]")
        if self.seed is not None:
            _num("seed", self.seed, True)
            if not -(2**63) <= self.seed < 2**64:
                raise _bad("seed", f"must fit in 64 bits, got {self.seed}.")
        self._verify_lengths()
        for name in ("logprobs", "prompt_logprobs"):  # the cap is the engine's --max-logprobs (admission)
            v = getattr(self, name)
            if v is not None and not (name == "logprobs" and self.logprob_token_ids):  # those ids: their own cap
                _num(name, v, True)
                if v < 0 and v != ALL_LOGPROBS:
                    raise _bad(name, f"must be non-negative or -1, got {v}.")
        self._verify_stops()
        if self.logit_bias:
            if len(self.logit_bias) > MAX_LOGIT_BIAS:
                raise _bad("logit_bias", f"may hold at most {MAX_LOGIT_BIAS} entries.")
            for k, v in self.logit_bias.items():
                if not math.isfinite(v) or not -100.0 <= v <= 100.0:
                    raise _bad("logit_bias", f"values must be in [-100, 100], got {v} for token {k}.")
        self._verify_token_sets()
        if self.structured_outputs is not None and self.ignore_eos:
            raise _bad("ignore_eos", "cannot be combined with structured_outputs: the grammar ends the output with "
                                     "EOS once it is complete.")

    def _verify_output_fields(self) -> None:
        """The switches' types, truncate_prompt_tokens, what needs the output's text, and what the detokenizer
        does not implement."""
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, f"must be a boolean, got {getattr(self, name)!r}.")
        if self.truncate_prompt_tokens is not None:  # its upper bound is the context length (admission)
            _num("truncate_prompt_tokens", self.truncate_prompt_tokens, True)
            if self.truncate_prompt_tokens < 1 and self.truncate_prompt_tokens != -1:
                raise _bad("truncate_prompt_tokens", f"must be -1 (the context length) or at least 1, got "
                                                     f"{self.truncate_prompt_tokens}.")
        self._verify_output_kind()
        if not self.detokenize and self.stop:  # vLLM's rule: stop strings are matched in the text
            raise _bad("detokenize", "must be true when stop strings are given (they are matched in the text); "
                                     "use stop_token_ids to stop without text.")
        if not self.spaces_between_special_tokens and not self.skip_special_tokens:
            raise _bad("spaces_between_special_tokens", "false is not implemented with skip_special_tokens=False "
                                                        "(special tokens kept in the text are joined as the "
                                                        "tokenizer decodes them).")

    def _verify_output_kind(self) -> None:
        """A RequestOutputKind (its value or name is taken for it)."""
        kind = self.output_kind
        if not isinstance(kind, RequestOutputKind):
            try:
                if isinstance(kind, bool):
                    raise TypeError
                kind = RequestOutputKind[kind] if isinstance(kind, str) else RequestOutputKind(kind)
            except (KeyError, ValueError, TypeError):
                raise _bad("output_kind", f"must be a RequestOutputKind (CUMULATIVE, DELTA or FINAL_ONLY), got "
                                          f"{kind!r}.") from None
            self.output_kind = kind

    def _verify_token_sets(self) -> None:
        """allowed_token_ids, bad_words and logprob_token_ids (their vocabulary bounds are admission's)."""
        if self.allowed_token_ids is not None:
            _token_ids("allowed_token_ids", self.allowed_token_ids)
            if not self.allowed_token_ids:
                raise _bad("allowed_token_ids", "must not be empty when given.")
        if self.bad_words is not None:
            if len(self.bad_words) > MAX_BAD_WORDS:
                raise _bad("bad_words", f"may hold at most {MAX_BAD_WORDS} words.")
            if not all(isinstance(w, str) and w for w in self.bad_words):
                raise _bad("bad_words", f"cannot contain an empty string. Got bad_words={self.bad_words}")
        for seq in self.bad_words_token_ids or []:
            _token_ids("bad_words", seq)
        if self.logprob_token_ids is not None:
            ids = self.logprob_token_ids
            _token_ids("logprob_token_ids", ids)
            if len(ids) > MAX_LOGPROB_TOKEN_IDS:
                raise _bad("logprob_token_ids", f"may hold at most {MAX_LOGPROB_TOKEN_IDS} ids, got {len(ids)}.")
            if self.logprobs != len(ids):
                raise _bad("logprob_token_ids", f"needs logprobs equal to its length when both are set; got "
                                                f"logprobs={self.logprobs}, len(logprob_token_ids)={len(ids)}.")

    def _verify_lengths(self) -> None:
        if self.max_tokens is not None:
            _num("max_tokens", self.max_tokens, True)
            if self.max_tokens < 1:
                raise _bad("max_tokens", f"must be at least 1, got {self.max_tokens}.")
        _num("min_tokens", self.min_tokens, True)
        if self.min_tokens < 0:
            raise _bad("min_tokens", f"must be greater than or equal to 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise _bad("min_tokens", f"must be less than or equal to max_tokens={self.max_tokens}, "
                                     f"got {self.min_tokens}.")

    def _verify_stops(self) -> None:
        assert isinstance(self.stop, list)
        if len(self.stop) > MAX_STOP_STRINGS:
            raise _bad("stop", f"may hold at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}.")
        for s in self.stop:
            if not isinstance(s, str):
                raise _bad("stop", f"strings must be non-empty strings, got {s!r}.")
            if not s:
                raise _bad("stop", "cannot contain an empty string.")
            if len(s) > MAX_STOP_STRING_LEN:
                raise _bad("stop", f"strings may be at most {MAX_STOP_STRING_LEN} characters each.")
        for t in self.stop_token_ids or []:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 2**63:
                raise _bad("stop_token_ids", f"must be non-negative 64-bit integers, got {t!r}.")
        if len(self.stop_token_ids or []) > MAX_STOP_STRINGS:
            raise _bad("stop_token_ids", f"may hold at most {MAX_STOP_STRINGS} ids.")

    def __repr__(self) -> str:  # compact: only what differs from the defaults
        keep = [
            f"{name}={getattr(self, name)!r}"
            for name, default in zip(self.__struct_fields__, self.__struct_defaults__, strict=True)
            if getattr(self, name) != default and getattr(self, name) not in ([], None)
        ]
        return f"SamplingParams({', '.join(keep)})"


def _is_sequence_like(x: Any) -> bool:
    """A list, tuple, set or other iterable of items (as vLLM's ``list(...)`` takes them), but not a string, bytes or
    a mapping (whose ``list()`` would be its characters or keys)."""
    from collections.abc import Iterable, Mapping

    return isinstance(x, Iterable) and not isinstance(x, (str, bytes, Mapping))


_BOOL_FIELDS = ("ignore_eos", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
                "include_stop_str_in_output")


@dataclass
class BeamSearchParams:
    """Beam search parameters (vLLM's ``BeamSearchParams``); run with ``LLM.beam_search``.

    ``beam_width`` beams are kept and ``beam_width`` sequences returned, best first, ranked
    as Hugging Face ``generate(num_beams=…)`` ranks them: ``cum_logprob / gen_len **
    length_penalty`` (``gen_len`` counts the EOS token). ``temperature`` is accepted for
    vLLM compatibility and, as in vLLM (raw logprobs) and HF beam search without sampling,
    does not change the result. ``early_stopping`` is a pagoda extension with HF's meaning
    (``True``, ``False`` or ``"never"``; HF's default ``False``).
    """

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    early_stopping: bool | str = False

    def __post_init__(self) -> None:
        for name in ("beam_width", "max_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _bad(name, f"must be an integer of at least 1, got {v!r}.")
        if self.beam_width > MAX_N:
            raise _bad("beam_width", f"must be at most {MAX_N}, got {self.beam_width}.")
        for name in ("temperature", "length_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise _bad(name, f"must be a finite number, got {v!r}.")
        if not 0.0 <= self.temperature <= 1e4:
            raise _bad("temperature", f"must be in [0, 10000], got {self.temperature}.")
        if self.early_stopping not in (True, False, "never"):
            raise _bad("early_stopping", f"must be true, false or 'never', got {self.early_stopping!r}.")
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, f"must be a boolean, got {getattr(self, name)!r}.")


GENERATION_CONFIG_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}
"""``generation_config.json``'s keys that set sampling defaults (vLLM's), and the ``SamplingParams`` field each
sets: what ``--override-generation-config`` may name."""


def defaults_from_generation_config(gen_cfg: dict[str, Any]) -> dict[str, Any]:
    """The sampling defaults vLLM takes from ``generation_config.json``."""
    out: dict[str, Any] = {}
    for src, dst in GENERATION_CONFIG_KEYS.items():
        if gen_cfg.get(src) is not None:
            out[dst] = gen_cfg[src]
    if "top_k" in out and out["top_k"] in (None, -1):
        out["top_k"] = 0
    return out


__all__ = ["SamplingParams", "BeamSearchParams", "RequestOutputKind", "defaults_from_generation_config",
           "GENERATION_CONFIG_KEYS"]
