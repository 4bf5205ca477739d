"""The request fields that ask for structured outputs, turned into one :class:`StructuredOutputsParams`.

Sources, as vLLM reads them: ``response_format`` (``text`` | ``json_object`` | ``json_schema`` with
``json_schema.schema``), ``structured_outputs`` (an object of StructuredOutputsParams fields), and the
older ``guided_json`` / ``guided_regex`` / ``guided_choice`` / ``guided_grammar`` (with
``guided_decoding_backend``, which must name the engine's backend or ``auto``). At most one source
may constrain a request; a malformed one is a 400 naming its field. ``guided_whitespace_pattern``
is refused in the field table (:mod:`request_fields`): whitespace is bounded by the backend.
"""

from __future__ import annotations

from typing import Any

from pagoda.errors import ValidationError
from pagoda.structured_output.params import FIELD, StructuredOutputsParams

_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
_BACKEND_NAMES = ("auto", "xgrammar")
_REQUEST_KEYS = frozenset(f for f in StructuredOutputsParams.__struct_fields__ if not f.startswith("_"))
"""The ``structured_outputs`` keys a request may send (a private one, such as ``_enable_in_reasoning``, is the
server's to set: a request sending it gets the unknown-key 400)."""
_JSON_SCHEMA_KEYS = frozenset({"name", "description", "schema", "strict", "json_schema"})
"""OpenAI's ``response_format.json_schema`` keys (``json_schema``: vLLM's name for ``schema``). The schema is
always enforced, so ``strict: false`` is honoured by giving more than asked."""


def _response_format(rf: Any) -> dict[str, Any] | None:
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise ValidationError("response_format must be an object with a 'type'.", "response_format")
    extra = sorted(set(rf) - {"type", "json_schema"})
    if extra:  # e.g. {"type": "json_object", "schema": ...} (another server's dialect): the schema would be dropped
        raise ValidationError(f"response_format takes 'type' and 'json_schema' only, got {extra}; a schema goes in "
                              f"{{'type': 'json_schema', 'json_schema': {{'name': ..., 'schema': ...}}}}.",
                              "response_format")
    kind = rf.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        js = rf.get("json_schema")
        unknown = sorted(set(js) - _JSON_SCHEMA_KEYS) if isinstance(js, dict) else []
        if unknown:  # e.g. a misspelt "strict": dropped, the request would run as if it had not been sent
            raise ValidationError(f"response_format.json_schema takes {sorted(_JSON_SCHEMA_KEYS - {'json_schema'})}"
                                  f", got unknown key(s) {unknown}.", "response_format")
        if isinstance(js, dict) and js.get("strict") is not None and not isinstance(js["strict"], bool):
            raise ValidationError(f"response_format.json_schema.strict must be a boolean, got {js['strict']!r}.",
                                  "response_format")
        schema = js.get("schema", js.get("json_schema")) if isinstance(js, dict) else None
        if not isinstance(schema, (dict, str)):
            raise ValidationError("response_format of type 'json_schema' needs json_schema.schema (a JSON schema "
                                  "object).", "response_format")
        return {"json": schema}
    raise ValidationError(f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}.",
                          "response_format")


def _sources(req: Any) -> list[tuple[str, dict[str, Any]]]:
    """(request field, StructuredOutputsParams keyword arguments) of every field that asks for a constraint."""
    found = []
    rf = _response_format(getattr(req, "response_format", None))
    if rf is not None:
        found.append(("response_format", rf))
    so = getattr(req, "structured_outputs", None)
    if so is not None:
        if not isinstance(so, dict):
            raise ValidationError("structured_outputs must be an object.", FIELD)
        found.append((FIELD, dict(so)))
    for name, kind in _GUIDED.items():
        v = getattr(req, name, None)
        if v is not None:
            found.append((name, {kind: v}))
    return found


def structured_outputs_from_request(req: Any) -> tuple[StructuredOutputsParams | None, str]:
    """The request's constraint (None when unconstrained) and the field it came from (for error names)."""
    sources = _sources(req)
    backend = getattr(req, "guided_decoding_backend", None)
    if backend is not None and backend not in _BACKEND_NAMES:
        raise ValidationError(f"guided_decoding_backend must be one of {_BACKEND_NAMES} (the engine's backend is "
                              f"chosen with --structured-outputs-config), got {backend!r}.", "guided_decoding_backend")
    if not sources:
        return None, FIELD
    if len(sources) > 1:
        names = [n for n, _ in sources]
        raise ValidationError(f"only one kind of structured output may be asked for; got {names}.", names[1])
    field, kwargs = sources[0]
    if getattr(req, "use_beam_search", False):
        raise ValidationError(f"{field} is not supported with use_beam_search.", field)
    unknown = sorted(set(kwargs) - _REQUEST_KEYS)
    if unknown:
        raise ValidationError(f"{field} has unknown key(s) {unknown}.", field)
    try:
        return StructuredOutputsParams(**kwargs), field
    except ValidationError as e:
        raise e.renamed({FIELD: field}) from None
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{field} is invalid: {e}", field) from None


def structured_source(req: Any) -> str:
    """The field a request's constraint comes from (what an admission error on it is named); never raises."""
    for name in ("response_format", FIELD, *_GUIDED):
        v = getattr(req, name, None)
        if v is not None and not (name == "response_format" and isinstance(v, dict) and v.get("type") == "text"):
            return name
    return FIELD
