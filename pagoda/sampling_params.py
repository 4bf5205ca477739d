"""Sampling parameters for text generation (vLLM's names and meanings).

Invariants after ``__post_init__``: every field is in its allowed range, ``stop`` is a
list of non-empty strings, ``stop_token_ids`` a list of ints, ``top_k`` is 0 when
disabled (-1 is accepted and normalised), and ``temperature == 0`` means greedy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Caps on what multiplies work (the server exposes them as flags).
MAX_N = 128
MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 256
MAX_STOP_STRING_LEN = 4096

_GREEDY_EPS = 1e-5


@dataclass
class SamplingParams:
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
    logit_bias: dict[int, float] | None = None
    # Names of the fields the caller set explicitly (generation-config defaults fill the rest).
    _explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __init__(self, **kwargs: Any) -> None:
        names = {f.name for f in fields(self) if f.name != "_explicit"}
        unknown = set(kwargs) - names - {"_explicit"}
        if unknown:
            raise TypeError(f"SamplingParams got unknown field(s): {sorted(unknown)}")
        for f in fields(self):
            if f.name == "_explicit":
                continue
            default = f.default if f.default_factory is f.default_factory else f.default  # type: ignore[misc]
            setattr(self, f.name, kwargs.get(f.name, default))
        self._explicit = frozenset(kwargs.get("_explicit", set(kwargs) - {"_explicit"}))
        self.__post_init__()

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

    def with_defaults(self, defaults: dict[str, Any]) -> "SamplingParams":
        """Fill fields the caller did not set from ``defaults`` (generation config)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_explicit"}
        for k, v in defaults.items():
            if k in values and k not in self._explicit:
                values[k] = v
        return SamplingParams(**values, _explicit=self._explicit | set(defaults))

    def clone(self, **changes: Any) -> "SamplingParams":
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_explicit"}
        values.update(changes)
        return SamplingParams(**values, _explicit=self._explicit | set(changes))

    # ------------------------------------------------------------- validation
    def _normalise(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if isinstance(self.top_k, (int, float)) and not isinstance(self.top_k, bool) and self.top_k == -1:
            self.top_k = 0
        if self.logit_bias:
            try:
                self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except (TypeError, ValueError) as e:
                raise ValueError(f"logit_bias must map token ids to numbers: {e}") from None

    def _verify(self) -> None:
        def num(name: str, value: Any, integer: bool = False) -> None:
            ok_types = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, ok_types):
                kind = "an integer" if integer else "a number"
                raise ValueError(f"{name} must be {kind}, got {value!r}.")
            if not integer and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}.")

        num("n", self.n, True)
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be in [1, {MAX_N}], got {self.n}.")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            num(name, v)
            if not -2.0 <= v <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {v}.")
        num("repetition_penalty", self.repetition_penalty)
        if not 0.0 < self.repetition_penalty <= 2.0 ** 10:
            raise ValueError(f"repetition_penalty must be in (0, 1024], got {self.repetition_penalty}.")
        num("temperature", self.temperature)
        if not 0.0 <= self.temperature <= 1e4:
            raise ValueError(f"temperature must be in [0, 10000], got {self.temperature}.")
        num("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        num("top_k", self.top_k, True)
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 or -1 (disable), or at least 1, got {self.top_k}.")
        num("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.seed is not None:
            num("seed", self.seed, True)
            if not -(2**63) <= self.seed < 2**64:
                raise ValueError(f"seed must fit in 64 bits, got {self.seed}.")
        if self.max_tokens is not None:
            num("max_tokens", self.max_tokens, True)
            if self.max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        num("min_tokens", self.min_tokens, True)
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be at least 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}."
            )
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is None:
                continue
            num(name, v, True)
            if not 0 <= v <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be in [0, {MAX_LOGPROBS}], got {v}.")
        assert isinstance(self.stop, list)
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop may hold at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}.")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}.")
            if len(s) > MAX_STOP_STRING_LEN:
                raise ValueError(f"each stop string may be at most {MAX_STOP_STRING_LEN} characters.")
        for t in self.stop_token_ids or []:
            if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                raise ValueError(f"stop_token_ids must be non-negative integers, got {t!r}.")
        if len(self.stop_token_ids or []) > MAX_STOP_STRINGS:
            raise ValueError(f"stop_token_ids may hold at most {MAX_STOP_STRINGS} ids.")
        if self.logit_bias:
            if len(self.logit_bias) > 1024:
                raise ValueError("logit_bias may hold at most 1024 entries.")
            for k, v in self.logit_bias.items():
                if not math.isfinite(v) or not -100.0 <= v <= 100.0:
                    raise ValueError(f"logit_bias values must be in [-100, 100], got {v} for token {k}.")

    def __repr__(self) -> str:  # compact
        keep = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name != "_explicit" and getattr(self, f.name) != f.default and getattr(self, f.name) not in ([], None)
        ]
        return f"SamplingParams({', '.join(keep)})"


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
                raise ValueError(f"{name} must be an integer of at least 1, got {v!r}.")
        if self.beam_width > MAX_N:
            raise ValueError(f"beam_width must be at most {MAX_N}, got {self.beam_width}.")
        for name in ("temperature", "length_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}.")
        if not 0.0 <= self.temperature <= 1e4:
            raise ValueError(f"temperature must be in [0, 10000], got {self.temperature}.")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}.")
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}.")


def defaults_from_generation_config(gen_cfg: dict[str, Any]) -> dict[str, Any]:
    """The sampling defaults vLLM takes from ``generation_config.json``."""
    out: dict[str, Any] = {}
    mapping = {
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "min_p": "min_p",
        "repetition_penalty": "repetition_penalty",
        "max_new_tokens": "max_tokens",
    }
    for src, dst in mapping.items():
        if gen_cfg.get(src) is not None:
            out[dst] = gen_cfg[src]
    if "top_k" in out and out["top_k"] in (None, -1):
        out["top_k"] = 0
    return out


__all__ = ["SamplingParams", "BeamSearchParams", "defaults_from_generation_config", "replace"]
