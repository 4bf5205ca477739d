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
``oneOf`` is compiled as ``anyOf`` (its branches are taken to be exclusive, as discriminated
unions are); docs/serving.md says so.
"""

from __future__ import annotations

from typing import Any

_NEVER = ("not", "if", "then", "else", "dependentSchemas", "contains", "minContains", "maxContains")
"""Keywords xgrammar ignores wherever they appear."""

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
"""Keywords whose value maps names (not keywords) to schemas."""

_OPEN_KEYS = ("patternProperties", "propertyNames", "additionalProperties")
"""Object keywords under which the grammar may write a key twice (it does not track the keys it wrote)."""

_LOOSE_FORMATS = {"ipv4": "it lets octets have leading zeros, e.g. '202.000.000.000'"}
"""String formats xgrammar's grammar accepts more loosely than JSON Schema validators (found by validating
outputs with ``jsonschema``)."""


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
    if s.get("format") in _LOOSE_FORMATS:
        return (f"'format: {s['format']}' (at {path}) is not enforced as JSON Schema defines it by the xgrammar "
                f"backend ({_LOOSE_FORMATS[s['format']]}); give a 'pattern' instead")
    if "multipleOf" in s and s.get("type") != "integer":
        return f"'multipleOf' on a non-integer (at {path}) is not enforced by the xgrammar backend"
    if s.get("uniqueItems") is True:
        return f"'uniqueItems' (at {path}) is not enforced by the xgrammar backend"
    counts = [k for k in ("minProperties", "maxProperties") if k in s]
    open_keys = [k for k in _OPEN_KEYS if k in s and s[k] is not False]
    if counts and open_keys:
        return (f"'{counts[0]}' together with '{open_keys[0]}' (at {path}) is not enforced by the xgrammar backend "
                f"(it may write a key twice); list the properties instead")
    return None
