"""What a request asks to be constrained to (vLLM's ``StructuredOutputsParams``) and the engine-wide
settings (vLLM's ``StructuredOutputsConfig``, ``--structured-outputs-config``).

Invariants after ``__post_init__``: exactly one of ``json``, ``regex``, ``choice``, ``grammar``,
``json_object`` (true), ``structural_tag`` is set; ``json`` is a JSON text (a dict is serialised,
its key order kept); ``choice`` is a non-empty list of strings. Whether the spec itself compiles
(a valid schema, regex or grammar) is checked by :func:`pagoda.structured_output.validate.validate`
at admission, before anything is queued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec

from pagoda.errors import ValidationError

KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
"""The constraint kinds, in the order vLLM lists them."""

BACKENDS = ("auto", "xgrammar", "guidance")
"""``--structured-outputs-config`` backends; ``auto`` is xgrammar (see docs/design.md for why)."""

FIELD = "structured_outputs"
"""The request field a refused spec is reported under (endpoints rename it: ``response_format``, ``guided_json``)."""


def _bad(rule: str) -> ValidationError:
    return ValidationError(f"{{parameter}} {rule}", FIELD)


class StructuredOutputsParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One constraint on a request's output; set it as ``SamplingParams(structured_outputs=...)``."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool | None = None  # None: the engine's --structured-outputs-config default
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    # Private (never read from a request body: structured_fields refuses the key): the grammar holds the whole
    # output, from the first token, even with --reasoning-parser (vLLM's engine-wide
    # ``StructuredOutputsConfig.enable_in_reasoning``, here per request). /v1/completions sets it: it never splits
    # the reasoning off, so its text is the answer (see pagoda.structured_output.manager).
    _enable_in_reasoning: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.json, dict):
            self.json = json.dumps(self.json)
        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise _bad(f"must set exactly one of {', '.join(KINDS)}; got {given or 'none'}.")
        if self.json is not None:
            if not isinstance(self.json, str):
                raise _bad(f"json must be a JSON schema (an object or its JSON text), got {type(self.json).__name__}.")
            try:
                schema = json.loads(self.json)
            except ValueError as e:
                raise _bad(f"json is not valid JSON: {e}") from None
            if not isinstance(schema, (dict, bool)):
                raise _bad("json must be a JSON schema object.")
        if self.choice is not None and (not self.choice or not all(isinstance(c, str) for c in self.choice)):
            raise _bad("choice must be a non-empty list of strings.")
        for name in ("regex", "grammar", "structural_tag"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise _bad(f"{name} must be a non-empty string.")
        if self.whitespace_pattern is not None:
            raise ValidationError("{parameter} whitespace_pattern (guided_whitespace_pattern) is not supported: "
                                  "the xgrammar backend bounds whitespace itself (disable_any_whitespace).", FIELD)

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    @property
    def spec(self) -> str:
        """The constraint as text: the schema, regex, grammar or tag; choices as a JSON list; '' for json_object."""
        v = getattr(self, self.kind)
        if self.kind == "choice":
            return json.dumps(v)
        return "" if self.kind == "json_object" else str(v)


@dataclass(frozen=True)
class StructuredOutputsConfig:
    """``--structured-outputs-config`` (vLLM's ``StructuredOutputsConfig`` fields pagoda honours)."""

    backend: str = "auto"
    # pagoda's default is compact JSON (vLLM's is False): bounded whitespace (GUIDE §8) and xgrammar's fast path;
    # flexible-but-bounded whitespace costs ~40x the compile time and far more per-token mask time (docs/design.md).
    disable_any_whitespace: bool = True
    disable_additional_properties: bool = False
    # vLLM's field (set by --reasoning-parser): the grammar applies to the answer after the reasoning only.
    reasoning_parser: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> StructuredOutputsConfig:
        d = dict(d or {})
        known = {"backend", "disable_any_whitespace", "disable_additional_properties", "reasoning_parser"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"--structured-outputs-config: unsupported key(s) {unknown}; pagoda honours "
                             f"{sorted(known)}.")
        cfg = cls(**d)
        if cfg.backend not in BACKENDS:
            raise ValueError(f"--structured-outputs-config: backend must be one of {BACKENDS}, got {cfg.backend!r}.")
        if cfg.backend == "guidance":
            raise ValueError("--structured-outputs-config: the guidance (llguidance) backend is not implemented in "
                             "pagoda; use backend 'xgrammar' or 'auto' (docs/design.md says why xgrammar).")
        if cfg.reasoning_parser:
            from pagoda.reasoning import REASONING_PARSERS

            if not isinstance(cfg.reasoning_parser, str) or cfg.reasoning_parser not in REASONING_PARSERS:
                raise ValueError(f"--structured-outputs-config: reasoning_parser must be one of "
                                 f"{sorted(REASONING_PARSERS)}, got {cfg.reasoning_parser!r}.")
        for name in ("disable_any_whitespace", "disable_additional_properties"):
            if not isinstance(getattr(cfg, name), bool):
                raise ValueError(f"--structured-outputs-config: {name} must be true or false.")
        return cfg


@dataclass(frozen=True)
class GrammarKey:
    """What a compiled grammar depends on: the cache key (the backend is engine-wide)."""

    kind: str
    spec: str
    any_whitespace: bool
    additional_properties: bool = True

    @classmethod
    def of(cls, p: StructuredOutputsParams, cfg: StructuredOutputsConfig) -> GrammarKey:
        no_ws = cfg.disable_any_whitespace if p.disable_any_whitespace is None else p.disable_any_whitespace
        no_extra = p.disable_additional_properties or cfg.disable_additional_properties
        return cls(p.kind, p.spec, not no_ws, not no_extra)
