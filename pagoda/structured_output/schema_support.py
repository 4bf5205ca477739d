"""JSON-schema keywords the xgrammar backend would not enforce: refused by name, never silently dropped.

xgrammar 0.2 converts most of JSON Schema into its grammar (types, enum/const, ranges, integer
``multipleOf``, string length/pattern/format, array item counts, object property counts,
``propertyNames``/``patternProperties``/``dependentRequired``, ``anyOf``, ``$ref``), but it accepts
some keywords without enforcing them, so an output could break the schema. :func:`unsupported_feature`
names the first such use; admission turns it into a 400. Found by validating outputs with ``jsonschema``
(session 39's black-box pass): ``uniqueItems: true`` gave ``[1, 2, 2]``, ``contains`` an array without the
element, and an object whose keys come from ``propertyNames`` / ``patternProperties`` /
``additionalProperties`` repeated a key (``{"p": 2, "p": 1}``), which breaks ``minProperties`` /
``maxProperties`` once parsed.
``oneOf`` is compiled as ``anyOf`` (:func:`as_enforced`; its branches are taken to be exclusive, as
discriminated unions are; docs/serving.md says so): xgrammar 0.2.9 itself turns a ``oneOf`` whose branches it
cannot prove disjoint into *any* JSON value. Session 49's pass (a schema fuzzer checking every finished output
with ``jsonschema``) found more keywords the grammar ignores: ``dependentRequired`` / ``dependencies``, a
fractional ``multipleOf`` on integers, ``required`` keys not in ``properties``, numeric and string bounds
without a ``type``, and anything beside ``anyOf`` / ``oneOf`` / ``allOf``, ``$ref``, ``enum`` or ``const`` that is
not an annotation (xgrammar then follows the one keyword alone); and ``format: date`` let any month have 31 days,
so it is compiled as :data:`DATE_PATTERN` (``date-time`` too, as :data:`DATE_TIME_PATTERN`). The seeded fuzzer of
tests/test_structured_fuzz.py found the rest: ``multipleOf`` above 1024 or beside a one-ended or wide range
(:func:`_multiple_of_problem`); ``patternProperties`` / ``propertyNames`` beside listed ``properties`` or a second
pattern (:func:`_names_problem`); string formats xgrammar has no rule for (:data:`_ENFORCED_FORMATS`); and a
pattern's optional group, which xgrammar compiles wrongly (:func:`optional_groups_counted`).
"""

from __future__ import annotations

import math
from typing import Any

_NEVER = ("not", "if", "then", "else", "dependentSchemas", "contains", "minContains", "maxContains",
          "dependentRequired", "dependencies")
"""Keywords xgrammar ignores wherever they appear."""

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
"""Keywords whose value maps names (not keywords) to schemas."""

_OPEN_KEYS = ("patternProperties", "propertyNames", "additionalProperties")
"""Object keywords under which the grammar may write a key twice (it does not track the keys it wrote)."""

_LOOSE_FORMATS = {"ipv4": "it lets octets have leading zeros, e.g. '202.000.000.000'",
                  "hostname": "it lets a label run past 63 characters"}
"""String formats xgrammar's grammar accepts more loosely than JSON Schema validators (found by validating
outputs with ``jsonschema``; ``hostname`` by tests/test_structured_fuzz.py)."""

_ENFORCED_FORMATS = frozenset({"date", "time", "date-time", "duration", "email", "hostname", "ipv4", "ipv6", "uri",
                               "uri-reference", "uri-template", "uuid", "json-pointer", "relative-json-pointer"})
"""The string formats xgrammar (0.2.9) has a rule for (vLLM's list of the formats it leaves to xgrammar); any other
(``idn-email``, ``idn-hostname``, ``iri``, ``regex``, OpenAPI's ``byte`` / ``password`` ...) it compiles as any
string."""


_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "$id", "$schema", "$anchor",
                          "deprecated", "readOnly", "writeOnly", "discriminator", "$defs", "definitions"})
"""Keywords that constrain nothing (or only hold definitions): allowed beside any other keyword."""

_ALONE = ("anyOf", "oneOf", "allOf", "$ref", "enum", "const")
"""Keywords xgrammar follows alone, ignoring their non-annotation siblings (``type`` beside ``enum`` / ``const``
excepted when every value has that type)."""

_BOUNDS = {"minimum": "number", "maximum": "number", "exclusiveMinimum": "number", "exclusiveMaximum": "number",
           "multipleOf": "number", "minLength": "string", "maxLength": "string", "pattern": "string",
           "format": "string"}
"""Keywords that bound one type of value: without a ``type`` the grammar lets any value through unbounded."""

_RANGE = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")

MAX_MULTIPLE_OF = 1024
"""The largest integer ``multipleOf`` xgrammar (0.2.9) enforces; above it the keyword is dropped."""
MAX_MULTIPLE_OF_RANGE = 10_000
"""The most integers a range beside ``multipleOf`` may hold for xgrammar (0.2.9) to enforce both; with a wider
range, or one with a single end, it drops ``multipleOf``."""

_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
                               "null": type(None), "array": list, "object": dict}


_YEAR = "(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = "([0-9][0-9](0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
DATE_PATTERN = (f"^(({_YEAR}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
                f"|02-(0[1-9]|1[0-9]|2[0-8])))|{_LEAP_YEAR}-02-29)$")
"""The dates JSON Schema's ``format: date`` (RFC 3339 full-date, as Python's ``date.fromisoformat`` reads it: years
0001-9999, each month's own days, February 29 in Gregorian leap years only). xgrammar's own date rule lets any
month have 31 days ('1093-04-31'), so ``format: date`` is compiled as this pattern."""
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+){0,1}(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
DATE_TIME_PATTERN = f"^{DATE_PATTERN[1:-1]}T{_TIME}$"
"""``format: date-time`` (RFC 3339 date-time): :data:`DATE_PATTERN`'s dates, ``T``, then the times xgrammar's own
date-time rule writes (a leap second 60, a fraction, ``Z`` or an offset). Its own rule lets any month have 31 days
and the year be 0000 ('2750-09-31T20:44:58Z', found by tests/test_structured_fuzz.py), so ``format: date-time``
is compiled as this pattern."""
_FORMAT_PATTERNS = {"date": DATE_PATTERN, "date-time": DATE_TIME_PATTERN}


def as_enforced(schema: Any) -> Any:
    """``schema`` as it is compiled: every ``oneOf`` written as ``anyOf`` (module docstring), ``format: date`` as
    :data:`DATE_PATTERN`, ``format: date-time`` as :data:`DATE_TIME_PATTERN`."""
    if isinstance(schema, list):
        return [as_enforced(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in ("enum", "const", "examples", "default"):  # values, not schemas
            out[k] = v
        elif k == "patternProperties" and isinstance(v, dict):  # patterns -> schemas
            out[k] = {optional_groups_counted(name): as_enforced(sub) for name, sub in v.items()}
        elif k in _SCHEMA_MAPS and isinstance(v, dict):  # names -> schemas: a property may be called "oneOf"
            out[k] = {name: as_enforced(sub) for name, sub in v.items()}
        elif k == "pattern" and isinstance(v, str):
            out[k] = optional_groups_counted(v)
        else:
            out["anyOf" if k == "oneOf" else k] = as_enforced(v)
    if out.get("format") in _FORMAT_PATTERNS and "pattern" not in out:
        out["pattern"] = _FORMAT_PATTERNS[out.pop("format")]
    return out


def optional_groups_counted(pattern: str) -> str:
    """``pattern`` with every optional group ``(...)?`` written ``(...){0,1}`` (the same language).

    xgrammar 0.2.9 compiles a JSON-schema ``pattern`` (not a ``regex`` constraint) wrongly where an optional group
    holds a repeated element beside another: ``^a(x[0-9]+)?b$`` took "a12b", ``(\\.[0-9]+)?`` let a time's fraction
    lose its dot ('05:34:222383Z'); found by tests/test_structured_fuzz.py. ``{0,1}`` compiles right. Escapes and
    character classes are skipped (a ``]`` first in a class is a literal, as in PCRE and Python)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
        elif c == "[":
            j = i + 1
            j += pattern[j:j + 1] == "^"
            j += pattern[j:j + 1] == "]"
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            out.append(pattern[i:j + 1])
            i = j + 1
        elif c == "?" and out and out[-1] == ")":
            out.append("{0,1}")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _has_type(value: Any, types: Any) -> bool:
    names = types if isinstance(types, list) else [types]
    for name in names:
        want = _JSON_TYPES.get(name)
        if want is None:
            return False
        if isinstance(value, bool) and name not in ("boolean",):
            continue  # JSON booleans are not numbers
        if name == "integer" and isinstance(value, float) and value.is_integer():
            return True
        if isinstance(value, want):
            return True
    return False


def unsupported_feature(schema: Any, path: str = "#") -> str | None:
    """A message naming the first keyword of ``schema`` (at JSON pointer ``path``) the backend would not
    enforce, or None."""
    if isinstance(schema, list):
        for i, s in enumerate(schema):
            if (msg := unsupported_feature(s, f"{path}/{i}")) is not None:
                return msg
        return None
    if not isinstance(schema, dict):
        return None
    msg = _own_problem(schema, path)
    if msg is not None:
        return msg
    for k, v in schema.items():
        if k in ("enum", "const", "examples", "default"):  # values, not schemas
            continue
        if k in _SCHEMA_MAPS and isinstance(v, dict):  # names -> schemas: a property may be called "contains"
            for name, sub in v.items():
                if (msg := unsupported_feature(sub, f"{path}/{k}/{name}")) is not None:
                    return msg
            continue
        if isinstance(v, dict | list) and (msg := unsupported_feature(v, f"{path}/{k}")) is not None:
            return msg
    return None


def _own_problem(s: dict[str, Any], path: str) -> str | None:
    for k in _NEVER:
        if k in s:
            return f"'{k}' (at {path}) is not enforced by the xgrammar backend"
    if isinstance(s.get("allOf"), list) and len(s["allOf"]) > 1:
        return f"'allOf' with more than one schema (at {path}) is not enforced by the xgrammar backend"
    length = [k for k in ("minLength", "maxLength") if k in s]
    if length and ("format" in s or "pattern" in s):
        other = "format" if "format" in s else "pattern"
        return (f"'{length[0]}' together with '{other}' (at {path}) is not enforced by the xgrammar backend; "
                f"put the length into the pattern")
    if s.get("format") in _FORMAT_PATTERNS and "pattern" in s:
        return f"'format: {s['format']}' together with 'pattern' (at {path}) is not enforced by the xgrammar backend"
    if s.get("format") in _LOOSE_FORMATS:
        return (f"'format: {s['format']}' (at {path}) is not enforced as JSON Schema defines it by the xgrammar "
                f"backend ({_LOOSE_FORMATS[s['format']]}); give a 'pattern' instead")
    fmt, types = s.get("format"), s.get("type")
    if isinstance(fmt, str) and fmt not in _ENFORCED_FORMATS and "string" in (
            types if isinstance(types, list) else [types]):
        return (f"'format: {fmt}' (at {path}) is not enforced by the xgrammar backend (it enforces "
                f"{', '.join(sorted(_ENFORCED_FORMATS - _LOOSE_FORMATS.keys()))}); give a 'pattern' instead")
    if "multipleOf" in s and (msg := _multiple_of_problem(s, path)) is not None:
        return msg
    msg = _sibling_problem(s, path) or _required_problem(s, path)
    if msg is not None:
        return msg
    if s.get("uniqueItems") is True:
        return f"'uniqueItems' (at {path}) is not enforced by the xgrammar backend"
    msg = _names_problem(s, path)
    if msg is not None:
        return msg
    counts = [k for k in ("minProperties", "maxProperties") if k in s]
    open_keys = [k for k in _OPEN_KEYS if k in s and s[k] is not False]
    if counts and open_keys:
        return (f"'{counts[0]}' together with '{open_keys[0]}' (at {path}) is not enforced by the xgrammar backend "
                f"(it may write a key twice); list the properties instead")
    return None


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) or isinstance(x, float) and x.is_integer()


def _multiple_of_problem(s: dict[str, Any], path: str) -> str | None:
    """``multipleOf`` where xgrammar (0.2.9) drops it: on a non-integer or by a fraction, by more than
    :data:`MAX_MULTIPLE_OF`, or beside a range that lacks an end or holds more than :data:`MAX_MULTIPLE_OF_RANGE`
    integers (it warns "range + multipleOf combination not yet supported; ignoring multipleOf")."""
    m = s["multipleOf"]
    if s.get("type") != "integer" or not _whole(m):
        return (f"'multipleOf' on a non-integer or by a fraction (at {path}) is not enforced by the xgrammar "
                f"backend")
    if m > MAX_MULTIPLE_OF:
        return f"'multipleOf' above {MAX_MULTIPLE_OF} (at {path}) is not enforced by the xgrammar backend"
    bounds = [k for k in _RANGE if k in s]
    if not bounds:
        return None
    lo, hi = _integer_range(s)
    if lo is None or hi is None or hi - lo + 1 > MAX_MULTIPLE_OF_RANGE:
        return (f"'multipleOf' together with '{bounds[0]}' (at {path}) is not enforced by the xgrammar backend "
                f"unless the range has both ends and holds at most {MAX_MULTIPLE_OF_RANGE} integers")
    return None


def _integer_range(s: dict[str, Any]) -> tuple[float | None, float | None]:
    """The least and greatest integers ``s``'s bounds allow (None: no such bound, or one that is not a number)."""
    def num(k: str) -> float | None:
        v = s.get(k)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None

    lows = [math.ceil(v) for v in [num("minimum")] if v is not None]
    lows += [math.floor(v) + 1 for v in [num("exclusiveMinimum")] if v is not None]
    highs = [math.floor(v) for v in [num("maximum")] if v is not None]
    highs += [math.ceil(v) - 1 for v in [num("exclusiveMaximum")] if v is not None]
    return (max(lows) if lows else None), (min(highs) if highs else None)


def _names_problem(s: dict[str, Any], path: str) -> str | None:
    """Property names the grammar would let break the schema. xgrammar writes a ``patternProperties`` or
    ``propertyNames`` name without checking it against the listed ``properties`` (whose names JSON Schema also
    holds to every pattern that matches them and to ``propertyNames``) nor against the other patterns (a name that
    matches two must satisfy both schemas), and may repeat a listed name with another value (``{"a": 1, "a": "x"}``);
    found by tests/test_structured_fuzz.py's schema fuzzer."""
    patterns = s.get("patternProperties")
    n_patterns = len(patterns) if isinstance(patterns, dict) else 0
    listed = bool(s.get("properties"))
    if n_patterns > 1:
        return (f"more than one pattern in 'patternProperties' (at {path}) is not enforced by the xgrammar backend (a "
                f"name matching two patterns must satisfy both schemas)")
    if n_patterns and listed:
        return (f"'patternProperties' together with 'properties' (at {path}) is not enforced by the xgrammar backend "
                f"(a listed name matching the pattern, or written twice, must satisfy both schemas)")
    if "propertyNames" in s and (listed or n_patterns):
        other = "properties" if listed else "patternProperties"
        return (f"'propertyNames' together with '{other}' (at {path}) is not enforced by the xgrammar backend (it "
                f"does not hold the {'listed names' if listed else 'names the patterns give'} to 'propertyNames')")
    return None


def _sibling_problem(s: dict[str, Any], path: str) -> str | None:
    """A keyword xgrammar ignores beside one it follows alone (:data:`_ALONE`), or a bound without its type."""
    lone = [k for k in _ALONE if k in s]
    if lone:
        extra = [k for k in s if k not in _ANNOTATIONS and k != lone[0]]
        if lone[0] in ("enum", "const") and "type" in extra:
            values = s["enum"] if lone[0] == "enum" and isinstance(s["enum"], list) else [s.get("const")]
            if all(_has_type(v, s["type"]) for v in values):  # a type every value has: it changes nothing
                extra.remove("type")
        if lone[0] in ("anyOf", "oneOf") and "type" in extra and _branches_typed(s[lone[0]], s["type"]):
            extra.remove("type")  # every branch has (one of) that type already
        if extra:
            return (f"'{extra[0]}' beside '{lone[0]}' (at {path}) is not enforced by the xgrammar backend (it follows "
                    f"'{lone[0]}' alone); move it into each branch or definition")
    elif "type" not in s:
        bare = [k for k in _BOUNDS if k in s]
        if bare:
            return (f"'{bare[0]}' without a 'type' (at {path}) is not enforced by the xgrammar backend; add "
                    f"\"type\": \"{_BOUNDS[bare[0]]}\"")
    return None


def _required_problem(s: dict[str, Any], path: str) -> str | None:
    """A required key the grammar would not write: one that ``properties`` does not describe."""
    required, properties = s.get("required"), s.get("properties")
    if isinstance(required, list) and required:
        missing = [r for r in required if not isinstance(properties, dict) or r not in properties]
        if missing:
            return (f"required property {missing[0]!r} (at {path}) is not in 'properties': the xgrammar backend "
                    f"would not write it; describe it under 'properties'")
    return None


def _branches_typed(branches: Any, types: Any) -> bool:
    """Whether every branch declares a ``type`` among ``types``."""
    def names(t: Any) -> set[Any]:
        return set(t if isinstance(t, list) else [t])

    return isinstance(branches, list) and all(
        isinstance(b, dict) and "type" in b and names(b["type"]) <= names(types) for b in branches)
