"""The xgrammar backend (the default; docs/design.md gives the measurement behind the choice).

Whitespace in JSON is bounded (GUIDE §8): ``disable_any_whitespace`` gives xgrammar's compact
form (``", "`` and ``": "`` separators, nothing else); otherwise any whitespace is allowed but at
most :data:`MAX_JSON_WHITESPACE` characters in a row, so a model cannot loop on blank space.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from pagoda.structured_output.backend import choice_ebnf, is_ebnf
from pagoda.structured_output.params import GrammarKey
from pagoda.structured_output.schema_support import as_enforced, unsupported_feature

MAX_JSON_WHITESPACE = 4
"""Most whitespace characters between two JSON tokens when whitespace is not disabled."""


def build_grammar(key: GrammarKey) -> Any:
    """The tokenizer-free xgrammar ``Grammar`` of ``key`` (raises on an invalid spec; admission uses it)."""
    import xgrammar as xgr

    if key.kind in ("json", "json_object"):
        schema = json.loads(key.spec) if key.kind == "json" else {"type": "object"}
        return _json_grammar(schema, key, closed=not key.additional_properties and key.kind == "json")
    if key.kind == "regex":
        return xgr.Grammar.from_regex(key.spec)
    if key.kind == "choice":
        return xgr.Grammar.from_ebnf(choice_ebnf(json.loads(key.spec)))
    if key.kind == "grammar":
        return xgr.Grammar.from_ebnf(key.spec) if is_ebnf(key.spec) else xgr.Grammar.from_lark(key.spec)
    if key.kind == "structural_tag":  # its JSON schemas as a json constraint's (:func:`_tag_schemas`)
        return _no_raw_control_characters(xgr.Grammar.from_structural_tag(
            json.dumps(_tag_schemas(json.loads(key.spec), key))))
    raise ValueError(f"unknown constraint kind {key.kind!r}")


def _json_grammar(schema: Any, key: GrammarKey, closed: bool) -> Any:
    """The grammar of a JSON schema: refused by name where it would not be enforced (:func:`unsupported_feature`),
    ``oneOf`` as ``anyOf``, ``closed``: no unlisted properties (vLLM's ``disable_additional_properties``), at most
    :data:`MAX_JSON_WHITESPACE` whitespace characters between tokens unless whitespace is disabled."""
    import xgrammar as xgr

    _check(schema)
    schema = as_enforced(schema)
    if closed:
        schema = _no_additional_properties(schema)
    ws: dict[str, Any] = ({"any_whitespace": True, "max_whitespace_cnt": MAX_JSON_WHITESPACE}
                          if key.any_whitespace else {"any_whitespace": False})
    return _no_raw_control_characters(xgr.Grammar.from_json_schema(json.dumps(schema), **ws))


_LOOSE_CHARACTER_CLASS = r'[^\"\\\r\n]'
"""The character class xgrammar (0.2.9; its issue #800) writes for one character of a ``minLength``/``maxLength``-
bounded string, in its printed form (any character but a quote, a backslash, CR and LF): as a rule of its own
(``name_characters ::= ((<class>))``), or inline where the bound is 1 (``root ::= (("\\"" <class> "\\""))``, found by
tests/test_structured_fuzz.py). It lets the raw control characters U+0000-U+001F other than CR and LF into a JSON
string, which no JSON parser accepts (a bounded field could end in an unparseable answer)."""
_JSON_STRING_CHARACTER = r'[^\0-\u001f\"\\\r\n]'
"""The character class of xgrammar's own unbounded JSON strings (``basic_string_sub``), in its printed form."""


def _no_raw_control_characters(grammar: Any) -> Any:
    """``grammar`` with every loose bounded-string character class (:data:`_LOOSE_CHARACTER_CLASS`) narrowed to
    :data:`_JSON_STRING_CHARACTER`, re-read from its printed form (which xgrammar reads back unchanged); the
    grammar itself when it has none (an xgrammar that fixed the class)."""
    import xgrammar as xgr

    text = str(grammar)
    fixed = _narrow_loose_classes(text)
    return xgr.Grammar.from_ebnf(_fixed_width_escapes(fixed)) if fixed != text else grammar


def _narrow_loose_classes(text: str) -> str:
    """``text`` (a printed grammar) with each character class equal to :data:`_LOOSE_CHARACTER_CLASS` replaced by
    :data:`_JSON_STRING_CHARACTER`; quoted literals (a ``const`` that spells the class) are left as they are."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch not in '"[':
            out.append(ch)
            i += 1
            continue
        close = '"' if ch == '"' else "]"
        j = i + 1
        while j < n and text[j] != close:
            j += 2 if text[j] == "\\" else 1
        token = text[i:j + 1]
        out.append(_JSON_STRING_CHARACTER if ch == "[" and token == _LOOSE_CHARACTER_CLASS else token)
        i = j + 1
    return "".join(out)


_HEX_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\x([0-9a-fA-F]{2})")
"""An escape ``\\xNN`` of xgrammar's printed grammar (not an escaped backslash before an ``x``)."""


def _fixed_width_escapes(text: str) -> str:
    """xgrammar prints U+0000-U+001F, U+007F-U+00FF as ``\\xNN`` but reads ``\\x`` over every hex digit that
    follows, so ``é`` then ``b`` (printed ``\\xe9b``) would come back as U+0E9B: rewritten as ``\\u00NN``, which
    it reads as exactly four digits."""
    return _HEX_ESCAPE.sub(lambda m: f"{m.group(1)}\\u00{m.group(2)}", text)


def _tag_schemas(node: Any, key: GrammarKey) -> Any:
    """``node`` (a structural tag's JSON) with every ``json_schema`` content replaced by a ``grammar`` content built
    as a ``json`` constraint's (:func:`_json_grammar`: checked, and its whitespace bounded, which xgrammar's own
    conversion inside a tag leaves free); a legacy ``structures`` entry's ``schema`` is checked only."""
    if isinstance(node, list):
        return [_tag_schemas(n, key) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "json_schema" and "json_schema" in node:
        grammar = _json_grammar(node["json_schema"], key, closed=not key.additional_properties)
        return {"type": "grammar", "grammar": _fixed_width_escapes(str(grammar))}
    if "begin" in node and "schema" in node:
        _check(node["schema"])
        return node
    return {k: _tag_schemas(v, key) for k, v in node.items()}


def _check(schema: Any) -> None:
    """Refuse by name a schema the grammar would not enforce (:func:`unsupported_feature`)."""
    unsupported = unsupported_feature(schema)
    if unsupported is not None:
        raise ValueError(unsupported)


def _no_additional_properties(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that does not say otherwise."""
    if isinstance(schema, list):
        return [_no_additional_properties(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _no_additional_properties(v) for k, v in schema.items()}
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


class _XgrMatcher:
    def __init__(self, m: Any) -> None:
        self._m = m

    def accept_token(self, token_id: int) -> bool:
        return bool(self._m.accept_token(token_id))

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    def rollback(self, num_tokens: int) -> None:
        self._m.rollback(num_tokens)

    def is_terminated(self) -> bool:
        return bool(self._m.is_terminated())

    def jump_forward_string(self) -> str:
        return str(self._m.find_jump_forward_string())


def grammar_vocab_size(tokenizer: Any, logits_width: int, stop_token_ids: list[int]) -> int:
    """The ids a grammar can allow: the tokenizer's (and the stop tokens'), at most the logits' width.

    The logits columns past it are never allowed (:func:`pagoda.structured_output.bitmask.apply_token_bitmask`
    masks them), exactly as when xgrammar is given the padded width, which treats each padding id as a special
    token: that costs every ``accept_token`` time in proportion to the padding (12 us per call for the 79,104
    padding ids of a 49,152-token tokenizer on 128,256 logits, 0.5 us without)."""
    ids = max([len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1, *(t + 1 for t in stop_token_ids)])
    return min(logits_width, ids)


class XgrammarBackend:
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        """``vocab_size``: the logits' width; the bitmask covers :attr:`vocab_size`, the grammar's vocabulary."""
        import xgrammar as xgr

        self._tokenizer = tokenizer
        self.vocab_size = grammar_vocab_size(tokenizer, vocab_size, stop_token_ids)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size,
                                                  stop_token_ids=stop_token_ids)
        # pagoda caches compiled grammars itself (manager); xgrammar's compiler threads stay few on small hosts.
        self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)

    def compile(self, key: GrammarKey) -> Any:
        return self._compiler.compile_grammar(build_grammar(key))

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def matcher(self, compiled: Any) -> _XgrMatcher:
        import xgrammar as xgr

        return _XgrMatcher(xgr.GrammarMatcher(compiled))  # rollback is unbounded in xgrammar >= 0.2
