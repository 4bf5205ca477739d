"""The real default model (which does not naturally write JSON) under constraints: 15 varied JSON schemas in
one generate call all parse and validate with jsonschema; regex and choice outputs always match.

A grammar ends valid only if generation ends: at ``max_tokens`` the output is an unfinished prefix
(``finish_reason == "length"``), as in vLLM. So every value in these schemas is bounded (integer
ranges, string lengths, fixed-shape formats, item counts): a 135M model otherwise loops inside an
unbounded string or number (it wrote ``"1.1.1.1..."`` as an email's local part and 100-digit ids)
until ``max_tokens``. With bounded values all of them must finish with ``stop`` within ``max_tokens``
(the longest seen is well under it), and every one must validate."""

from __future__ import annotations

import json
import re

import pytest

from pagoda import SamplingParams
from pagoda.structured_output import StructuredOutputsParams

pytestmark = pytest.mark.default_model
import jsonschema  # noqa: E402

# An IPv4 address as JSON Schema's 'ipv4' format means it (no leading zeros); 'format: ipv4' itself is refused
# (xgrammar allows '202.000.000.000', which jsonschema rejects).
_IPV4 = r"^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}$"


@pytest.fixture(scope="module")
def llm():
    from pagoda import LLM

    return LLM("default", max_model_len=1024, kv_cache_memory_bytes=256 * 2**20)


N_SCHEMAS = 15


def _schemas() -> list[dict]:
    """``N_SCHEMAS`` schemas: flat, nested objects, arrays (bounded), enums, required/optional, string formats and
    patterns. 15 keep one of each kind (it was 50, the same kinds repeated): each of the 10 leaf kinds as the
    first and as the second field, and every combination of all-required / one-required (with greedy / sampled),
    whitespace allowed / not, a nested object or not and an array of objects or not (``i`` mod 2, 3 and 4: 12
    combinations, all within ``i < 12``)."""
    leaf = [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "integer", "minimum": -50, "maximum": 50},
            {"type": "boolean"}, {"enum": ["red", "green", "blue"]}, {"type": "string", "maxLength": 12},
            {"type": "string", "format": "date"}, {"type": "string", "pattern": _IPV4},
            {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"}, {"type": "string", "format": "uuid"},
            {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "minItems": 1,
             "maxItems": 3}]
    out = []
    for i in range(N_SCHEMAS):
        a, b, c = leaf[i % 10], leaf[(i * 3 + 1) % 10], leaf[(i * 7 + 2) % 10]
        props = {f"f{i}_a": a, f"f{i}_b": b}
        if i % 3 == 1:
            props["inner"] = {"type": "object", "properties": {"x": c, "y": {"type": "boolean"}}, "required": ["x"],
                              "additionalProperties": False}
        if i % 4 == 2:
            item = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9999}},
                    "required": ["id"]}
            props["items"] = {"type": "array", "items": item, "maxItems": 2}
        required = list(props) if i % 2 == 0 else [f"f{i}_a"]
        out.append({"type": "object", "properties": props, "required": required, "additionalProperties": False})
    return out


def _prompt(llm, text: str) -> str:
    return llm.get_tokenizer().apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                   add_generation_prompt=True)


_MAX_TOKENS = 160


def test_many_json_schemas_validate(llm):
    schemas = _schemas()
    prompts = [_prompt(llm, f"Give a JSON record number {i}.") for i in range(len(schemas))]
    params = [SamplingParams(temperature=0.7 if i % 2 else 0.0, seed=i, max_tokens=_MAX_TOKENS,
                             structured_outputs=StructuredOutputsParams(json=s, disable_any_whitespace=i % 3 == 0))
              for i, s in enumerate(schemas)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    for s, o in zip(schemas, outs, strict=True):
        c = o.outputs[0]
        assert c.finish_reason == "stop", (c.finish_reason, c.text)
        obj = json.loads(c.text)
        jsonschema.validate(obj, s, format_checker=jsonschema.FormatChecker())


def test_regex_and_choice_always_match(llm):
    regexes = [r"\d{3}-\d{4}", r"(yes|no), because [a-z ]{5,20}\.", r"[A-Z][a-z]{1,10} [A-Z][a-z]{1,10}",
               r"0x[0-9a-f]{8}"]
    choices = ["Paris", "London", "Berlin", "Rome"]
    prompts, params = [], []
    for i in range(12):
        rx = regexes[i % len(regexes)]
        prompts.append(_prompt(llm, "Answer in the requested format."))
        params.append(SamplingParams(temperature=1.0, seed=i, max_tokens=40,
                                     structured_outputs=StructuredOutputsParams(regex=rx)))
    prompts.append(_prompt(llm, "What is the capital of France?"))
    params.append(SamplingParams(temperature=1.0, seed=0, n=8, max_tokens=8,
                                 structured_outputs=StructuredOutputsParams(choice=choices)))
    outs = llm.generate(prompts, params, use_tqdm=False)
    for i, o in enumerate(outs[:-1]):
        c = o.outputs[0]
        assert c.finish_reason == "stop" and re.fullmatch(regexes[i % len(regexes)], c.text), c.text
    assert all(c.text in choices and c.finish_reason == "stop" for c in outs[-1].outputs)
