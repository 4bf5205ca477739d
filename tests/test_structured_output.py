"""Structured outputs on a tiny fp32 model: the bitmask kernel against its plain-torch reference, the matcher
interface (fill for k positions, accept, rollback), constrained greedy == argmax over the allowed tokens, and
the engine paths (n > 1, preemption, async scheduling, compile failures, bad specs)."""

from __future__ import annotations

import json
import re
from unittest import mock

import pytest
import torch

from pagoda import SamplingParams
from pagoda.errors import ValidationError
from pagoda.structured_output import StructuredOutputsConfig, StructuredOutputsParams
from pagoda.structured_output.backend import allocate_bitmask
from pagoda.structured_output.bitmask import apply_token_bitmask, apply_token_bitmask_reference, unpack_bitmask
from pagoda.structured_output.params import GrammarKey
from pagoda.structured_output.validate import validate

ARCH = "llama"


def test_bitmask_kernel_matches_reference():
    g = torch.Generator().manual_seed(0)
    for V in (31, 64, 400, 1001):
        bm = torch.randint(-(2**31), 2**31 - 1, (5, (V + 31) // 32), dtype=torch.int32, generator=g)
        logits = torch.randn(5, V, generator=g)
        ref = logits.clone()
        apply_token_bitmask_reference(ref, bm)
        apply_token_bitmask(logits, bm)
        assert torch.equal(torch.isinf(logits), torch.isinf(ref))
        assert torch.equal(logits[~torch.isinf(ref)], ref[~torch.isinf(ref)])
        allowed = unpack_bitmask(bm, V)
        t = 37 % V
        assert bool(allowed[0, t]) == bool((int(bm[0, t // 32]) >> (t % 32)) & 1)


def test_bitmask_all_allowed_rows_untouched():
    """Unconstrained rows (all bits set) are skipped; constrained rows around them are masked as the reference."""
    g = torch.Generator().manual_seed(1)
    V = 100
    bm = torch.randint(-(2**31), 2**31 - 1, (4, 4), dtype=torch.int32, generator=g)
    bm[1] = -1
    bm[3] = -1
    logits = torch.randn(4, V, generator=g)
    ref = logits.clone()
    apply_token_bitmask_reference(ref, bm)
    apply_token_bitmask(logits, bm)
    assert torch.equal(logits, ref)
    assert not torch.isinf(logits[1]).any() and not torch.isinf(logits[3]).any()


def test_bitmask_given_rows_equals_scanned_rows():
    """The engine passes the constrained rows (no scan): the same result as scanning the bitmask for them."""
    g = torch.Generator().manual_seed(2)
    V = 130
    bm = torch.randint(-(2**31), 2**31 - 1, (5, (V + 31) // 32), dtype=torch.int32, generator=g)
    bm[0] = -1
    bm[3] = -1
    logits = torch.randn(5, V, generator=g)
    scanned, given = logits.clone(), logits.clone()
    apply_token_bitmask(scanned, bm)
    apply_token_bitmask(given, bm, [1, 2, 4])
    assert torch.equal(scanned, given) and not torch.equal(given, logits)
    apply_token_bitmask(given, bm, [])  # no constrained row: nothing changes
    assert torch.equal(scanned, given)
    # A grammar vocabulary narrower than the logits (a tokenizer smaller than the LM head): a constrained row's
    # columns past it are never allowed, whatever the bits past it say; an unconstrained row is left whole.
    for narrow, vocab in ((bm[:, :3], None), (bm[:, :3], 90), (bm, 96)):  # 96 or 90 of the 130 columns
        ref, given = logits.clone(), logits.clone()
        apply_token_bitmask_reference(ref, narrow[:, :3])
        if vocab is not None:
            ref[:, vocab:] = float("-inf")
        apply_token_bitmask(given, narrow, [1, 2, 4], vocab)
        assert torch.equal(given[[1, 2, 4]], ref[[1, 2, 4]]) and torch.isinf(given[[1, 2, 4], vocab or 96:]).all()
        assert torch.equal(given[[0, 3]], logits[[0, 3]])


def test_xgrammar_fill_writes_every_word(tiny):
    """The step's bitmask buffer is reused without clearing (step_bitmask.py): a matcher's fill must write its
    whole row, whatever the row held before, including the padding past the tokenizer's vocabulary."""
    from transformers import AutoTokenizer

    from pagoda.structured_output.xgrammar_backend import XgrammarBackend

    tok = AutoTokenizer.from_pretrained(tiny.path(ARCH))
    assert len(tok) % 32
    gen = torch.Generator().manual_seed(3)
    for V in (len(tok), len(tok) + 45):  # the tokenizer's ids (the last word part-used), or padded logits
        be = XgrammarBackend(tok, V, [tok.eos_token_id])
        assert be.vocab_size == len(tok)  # a padded width still gives the tokenizer's vocabulary (see the next test)
        for spec in (StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "integer"}}}),
                     StructuredOutputsParams(regex=r"[a-c]{2,6}x")):
            m = be.matcher(be.compile(GrammarKey.of(spec, StructuredOutputsConfig())))
            for _ in range(6):
                clean = allocate_bitmask(2, be.vocab_size)
                dirty = torch.randint(-(2**31), 2**31 - 1, clean.shape, dtype=torch.int32, generator=gen)
                m.fill_bitmask(clean, 1)
                m.fill_bitmask(dirty, 1)
                assert torch.equal(clean[1], dirty[1])
                allowed = unpack_bitmask(clean[1:], be.vocab_size)[0].nonzero().flatten().tolist()
                t = next(t for t in allowed if t != tok.eos_token_id)
                assert m.accept_token(t)


def test_padded_logits_allow_what_xgrammar_allows_at_the_padded_width(tiny):
    """The grammar's vocabulary is the tokenizer's, not the padded logits width (xgrammar's accept costs time in
    proportion to the padding ids): after masking, the allowed logits columns are exactly those of xgrammar
    built at the padded width (which never allows a padding id), state after state."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from pagoda.structured_output.xgrammar_backend import XgrammarBackend, build_grammar

    tok = AutoTokenizer.from_pretrained(tiny.path(ARCH))
    V = len(tok) + 300
    be = XgrammarBackend(tok, V, [tok.eos_token_id])
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=V, stop_token_ids=[tok.eos_token_id])
    padded = xgr.GrammarCompiler(info, cache_enabled=False)
    for spec in (StructuredOutputsParams(json={"type": "object", "properties": {"s": {"type": "string"}},
                                               "required": ["s"]}),
                 StructuredOutputsParams(regex=r"[a-c]{2,6}x")):
        key = GrammarKey.of(spec, StructuredOutputsConfig())
        ours, ref = be.matcher(be.compile(key)), xgr.GrammarMatcher(padded.compile_grammar(build_grammar(key)))
        for _ in range(12):
            if ref.is_terminated():
                break
            bm, ref_bm = allocate_bitmask(1, be.vocab_size), allocate_bitmask(1, V)
            ours.fill_bitmask(bm, 0)
            ref.fill_next_token_bitmask(ref_bm, 0)
            logits, ref_logits = torch.zeros(1, V), torch.zeros(1, V)
            apply_token_bitmask(logits, bm, [0], be.vocab_size)  # xgrammar may set the last word's spare bits
            apply_token_bitmask(ref_logits, ref_bm, [0])
            assert torch.equal(logits, ref_logits)
            t = int(torch.isfinite(logits[0]).nonzero()[-1])  # the highest allowed id: EOS once complete
            assert ours.accept_token(t) and ref.accept_token(t)


def _backend(tiny):
    from transformers import AutoTokenizer

    from pagoda.structured_output.xgrammar_backend import XgrammarBackend

    tok = AutoTokenizer.from_pretrained(tiny.path(ARCH))
    return tok, XgrammarBackend(tok, len(tok), [tok.eos_token_id])


def test_matcher_fill_accept_rollback(tiny):
    """The interface a speculative verifier needs: rows for k positions, then the matcher unchanged."""
    from concurrent.futures import Future

    from pagoda.structured_output.manager import RequestGrammar

    tok, be = _backend(tiny)
    key = GrammarKey.of(StructuredOutputsParams(choice=["abc", "abd"]), StructuredOutputsConfig())
    fut: Future = Future()
    fut.set_result(be.compile(key))
    g = RequestGrammar(key, fut, lambda: be)
    V = len(tok)
    ids = tok.encode("abc")
    bm = allocate_bitmask(len(ids) + 1, V)
    g.fill_bitmask(bm, 0, ids)
    allowed = unpack_bitmask(bm, V)
    for i, t in enumerate(ids):
        assert allowed[i, t]
    assert allowed[len(ids), tok.eos_token_id] and allowed[len(ids)].sum() == 1  # only EOS after "abc"
    one = allocate_bitmask(1, V)
    g.fill_bitmask(one, 0)
    assert torch.equal(one[0], bm[0])  # the drafts were rolled back
    assert g.accept_tokens(ids + [tok.eos_token_id]) == len(ids) + 1 and g.is_terminated()
    g.rollback(1)
    assert not g.is_terminated()
    assert g.accept_tokens(tok.encode("x")) == 0


@pytest.mark.parametrize("schema", [
    {"type": "string", "maxLength": 6},
    {"type": "string", "minLength": 2},
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 6}}, "required": ["a"]},
    {"type": "structural_tag", "format": {"type": "tag", "begin": "<f>", "end": "</f>", "content": {
        "type": "json_schema",
        "json_schema": {"type": "object", "properties": {"a": {"type": "string", "maxLength": 6}}, "required": ["a"]},
    }}},
])
def test_bounded_strings_refuse_raw_control_characters(tiny, schema):
    """xgrammar 0.2.9 writes a length-bounded string's characters as [^"\\\r\n], which lets a raw TAB (or any
    U+0000-U+001F but CR/LF) into the answer: no JSON parser accepts that. pagoda narrows the rule; the bound
    still holds."""
    tok, be = _backend(tiny)
    if schema["type"] == "structural_tag":  # a tag's JSON schema, in xgrammar's structural-tag format
        so = StructuredOutputsParams(structural_tag=json.dumps(schema))
        head, tail = '<f>{"a": "', '"}</f>'
    else:
        so = StructuredOutputsParams(json=json.dumps(schema))
        head = '{"a": "' if schema["type"] == "object" else '"'
        tail = '"}' if schema["type"] == "object" else '"'
    compiled = be.compile(GrammarKey.of(so, StructuredOutputsConfig()))

    def fits(text: str) -> bool:
        m = be.matcher(compiled)
        return all(m.accept_token(t) for t in tok.encode(text)) and m.accept_token(tok.eos_token_id)

    assert fits(head + "abc" + tail)
    for ch in ("\t", "\x01", "\x1f"):
        assert not fits(head + "a" + ch + "b" + tail), repr(ch)
    if "maxLength" in json.dumps(schema):
        assert fits(head + "abcdef" + tail) and not fits(head + "abcdefg" + tail)
    else:
        assert not fits(head + "a" + tail)


def _fits(tok, be, so: StructuredOutputsParams, text: str) -> bool:
    m = be.matcher(be.compile(GrammarKey.of(so, StructuredOutputsConfig())))
    return all(m.accept_token(t) for t in tok.encode(text, add_special_tokens=False)) and m.accept_token(
        tok.eos_token_id)


def test_choices_with_a_control_character_before_a_hex_digit_stay_those_choices(tiny):
    """A choice's control character was written ``\\x0a``; xgrammar reads ``\\x`` over every hex digit after it, so
    "yes\\nbecause" became "yes" + U+0ABEC + "ause", which the grammar then forced on the model."""
    tok, be = _backend(tiny)
    for choices in (["yes\nbecause", "no\nbecause"], ["A\t1", "B\t2"], ["a\x7fb"]):
        so = StructuredOutputsParams(choice=choices)
        assert all(_fits(tok, be, so, c) for c in choices), choices
        assert not _fits(tok, be, so, choices[0][:-1]), choices


def test_latin1_literals_survive_a_length_bound_elsewhere_in_the_schema(tiny):
    """A schema with a length-bounded string is re-read from xgrammar's printed form (the control-character fix),
    which prints é as ``\\xe9``: "Québec" came back as "Qu" + U+E9B + "ec" and could no longer be written."""
    tok, be = _backend(tiny)
    for city in ("Québec", "café1", "Zürich"):
        schema = {"type": "object", "properties": {"city": {"enum": [city, "Paris"]},
                                                   "note": {"type": "string", "maxLength": 10}},
                  "required": ["city"], "additionalProperties": False}
        so = StructuredOutputsParams(json=json.dumps(schema))
        assert _fits(tok, be, so, '{"city": "' + city + '"}'), city
        assert not _fits(tok, be, so, '{"city": "Qu"}')


def test_json_object_keeps_its_properties_when_additional_properties_are_disabled(tiny):
    """``disable_additional_properties`` (per request or server-wide) applies to json schemas, as vLLM's: on
    ``json_object`` it used to leave ``{}`` as the only answer."""
    tok, be = _backend(tiny)
    key = GrammarKey.of(StructuredOutputsParams(json_object=True),
                        StructuredOutputsConfig(disable_additional_properties=True))
    assert key.kind == "json_object" and not key.additional_properties
    m = be.matcher(be.compile(key))
    assert all(m.accept_token(t) for t in tok.encode('{"a": 1}', add_special_tokens=False))
    assert m.accept_token(tok.eos_token_id)


def test_constrained_greedy_is_argmax_over_allowed(tiny):
    """fp32: each constrained greedy token is the argmax of the raw logits over the grammar's allowed tokens."""
    llm = tiny.llm(ARCH)
    tok, be = _backend(tiny)
    prompt = [5, 17, 99, 3]
    regex = r"[a-c]{2,6}x"
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=0,
                            structured_outputs=StructuredOutputsParams(regex=regex))
    out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
    assert re.fullmatch(regex, out.text), out.text
    assert out.finish_reason == "stop"
    matcher = be.matcher(be.compile(GrammarKey.of(params.structured_outputs, StructuredOutputsConfig())))
    hf = tiny.hf(ARCH)
    ids = list(prompt)
    V = hf.config.vocab_size
    for t in out.token_ids:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].float()
        bm = allocate_bitmask(1, V)
        matcher.fill_bitmask(bm, 0)
        allowed = unpack_bitmask(bm, V)[0]
        masked = logits.masked_fill(~allowed, float("-inf"))
        top5 = masked.topk(5).indices.tolist()
        assert t in top5[:1] or (masked[t] - masked.max()).abs() < 1e-4, (t, top5)
        assert matcher.accept_token(t)
        ids.append(t)


@pytest.mark.parametrize("kwargs", [{}, {"async_scheduling": True}, {"num_gpu_blocks_override": 14, "block_size": 4}])
def test_constraints_hold_with_n_async_and_preemption(tiny, kwargs):
    """n > 1 (a matcher per sample), async scheduling (waits for the last token), forced preemption (kept)."""
    llm = tiny.llm(ARCH, **kwargs)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "yy"]}},
              "required": ["a", "b"], "additionalProperties": False}
    ps = [
        SamplingParams(temperature=1.0, seed=3, n=3, max_tokens=40, structured_outputs=StructuredOutputsParams(
            json=schema, disable_any_whitespace=True)),
        SamplingParams(temperature=0.7, seed=1, n=2, max_tokens=10,
                       structured_outputs=StructuredOutputsParams(choice=["red", "green", "blue"])),
        SamplingParams(temperature=0, max_tokens=8),  # unconstrained neighbour in the same steps
    ]
    prompts = [{"prompt_token_ids": [1 + i, 7, 9, 11, 13, 2]} for i in range(3)]
    outs = llm.generate(prompts, ps, use_tqdm=False)
    for c in outs[0].outputs:
        if c.finish_reason == "stop":
            obj = json.loads(c.text)
            assert set(obj) == {"a", "b"} and isinstance(obj["a"], int) and obj["b"] in ("x", "yy")
        else:  # truncated at max_tokens: a prefix of valid compact JSON
            assert c.finish_reason == "length" and c.text.startswith('{"a": ')
    assert all(c.text in ("red", "green", "blue") and c.finish_reason == "stop" for c in outs[1].outputs)
    ref = llm.generate([prompts[2]], ps[2], use_tqdm=False)[0].outputs[0]
    assert outs[2].outputs[0].token_ids == ref.token_ids  # a constrained neighbour changes nothing


@pytest.mark.parametrize("spec", [
    {"json": {"type": "foo"}}, {"regex": "(("}, {"grammar": "root ::= undefined_rule"}, {"choice": []},
    {"json": "{not json"}, {"regex": "a", "choice": ["a"]},
    # keywords xgrammar would accept without enforcing: refused by name
    {"json": {"type": "string", "format": "email", "maxLength": 8}}, {"json": {"not": {"type": "integer"}}},
    {"json": {"type": "object", "properties": {"x": {"type": "number", "multipleOf": 0.5}}}},
    {"json": {"allOf": [{"type": "integer"}, {"minimum": 5}]}},
    {"json": {"type": "string", "format": "ipv4"}},  # xgrammar allows leading zeros JSON Schema's ipv4 forbids
    # found by validating served outputs (session 39): [1, 2, 2], an array without the element, {"p": 2, "p": 1}
    {"json": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}},
    {"json": {"type": "array", "items": {"type": "integer"}, "contains": {"const": 7}}},
    {"json": {"type": "object", "propertyNames": {"enum": ["p", "q"]}, "minProperties": 2}},
    {"json": {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}, "maxProperties": 1}},
    {"json": {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1}},
    # found by a schema fuzzer checking every output with jsonschema (session 49): {"a": 795} without its
    # dependency, 56 for multipleOf 2.5, a required key never written, format date beside a pattern (format: date
    # alone is compiled as DATE_PATTERN), keywords beside one that
    # xgrammar follows alone ([] for an object whose anyOf holds only "required"), bounds without a type
    {"json": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "dependentRequired": {"a": ["b"]}}},
    {"json": {"type": "object", "properties": {"a": {"type": "integer"}}, "dependencies": {"a": ["b"]}}},
    {"json": {"type": "integer", "multipleOf": 2.5}},
    {"json": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]}},
    {"json": {"type": "string", "format": "date", "pattern": "^2"}},
    {"json": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}},
    {"json": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "allOf": [{"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}]}},
    {"json": {"type": "integer", "enum": ["x", 1]}},
    {"json": {"type": "string", "enum": ["a", "bbbb"], "minLength": 2}},
    {"json": {"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 2}},
    {"json": {"minimum": 5, "maximum": 6}}, {"json": {"minLength": 3}},
    # a structural tag's schemas are checked as a json constraint's
    {"structural_tag": json.dumps({"type": "structural_tag", "format": {"type": "tag", "begin": "<f>", "end": "</f>",
                                   "content": {"type": "json_schema", "json_schema": {
                                       "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}})},
])
def test_bad_specs_refused_before_queueing(tiny, spec):
    """A spec that cannot build, or uses a keyword xgrammar would not enforce, is refused before queueing."""
    llm = tiny.llm(ARCH)
    with pytest.raises(ValidationError) as ei:
        llm.generate([{"prompt_token_ids": [1, 2]}],
                     SamplingParams(max_tokens=2, structured_outputs=StructuredOutputsParams(**spec)), use_tqdm=False)
    assert ei.value.parameter == "structured_outputs"
    assert not llm.llm_engine.has_unfinished_requests()


def test_one_of_is_compiled_as_any_of(tiny):
    """xgrammar 0.2.9 turns a oneOf whose branches it cannot prove disjoint into any JSON value; compiled as anyOf
    (docs/serving.md) the answer is at least one of the branches."""
    tok, be = _backend(tiny)
    schema = {"oneOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
                         "additionalProperties": False}, {"type": "integer"}]}
    so = StructuredOutputsParams(json=json.dumps(schema))
    assert _fits(tok, be, so, '{"a": 1}') and _fits(tok, be, so, "7")
    assert not _fits(tok, be, so, "[]") and not _fits(tok, be, so, '"x"')
    # a property called "oneOf" keeps its name
    named = {"type": "object", "properties": {"oneOf": {"type": "integer"}}, "required": ["oneOf"],
             "additionalProperties": False}
    assert _fits(tok, be, StructuredOutputsParams(json=json.dumps(named)), '{"oneOf": 1}')


def test_a_structural_tags_json_has_the_bounded_whitespace_of_a_json_constraint(tiny):
    """A strict tool's schema inside a structural tag: xgrammar's own conversion there lets any amount of whitespace
    through (a small model can loop on it); built as a json constraint's, at most MAX_JSON_WHITESPACE."""
    from pagoda.structured_output.xgrammar_backend import MAX_JSON_WHITESPACE

    tok, be = _backend(tiny)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    tag = {"type": "structural_tag", "format": {"type": "tag", "begin": "<f>", "end": "</f>",
                                                "content": {"type": "json_schema", "json_schema": schema}}}
    so = StructuredOutputsParams(structural_tag=json.dumps(tag))
    plain = StructuredOutputsParams(json=json.dumps(schema))
    for n in (0, 1, MAX_JSON_WHITESPACE, 200):
        body = "{" + " " * n + '"a": 1}'
        assert _fits(tok, be, so, "<f>" + body + "</f>") == _fits(tok, be, plain, body), n
    assert _fits(tok, be, so, '<f>{"a": 1}</f>') and not _fits(tok, be, so, "<f>{" + " " * 200 + '"a": 1}</f>')
    assert not _fits(tok, be, so, '<f>{"a": "x"}</f>')


def test_format_date_holds_each_months_days(tiny):
    """xgrammar's own date rule let any month have 31 days ("1093-04-31"); compiled as DATE_PATTERN, only dates
    Python's ``date.fromisoformat`` (jsonschema's format checker) reads are written."""
    tok, be = _backend(tiny)
    so = StructuredOutputsParams(json=json.dumps({"type": "string", "format": "date"}))
    for day in ("2024-02-29", "2000-02-29", "1999-12-31", "2023-04-30", "0001-01-01"):
        assert _fits(tok, be, so, json.dumps(day)), day
    for day in ("1093-04-31", "2023-02-29", "1900-02-29", "2023-13-01", "2023-00-10", "0000-01-01", "2023-1-01"):
        assert not _fits(tok, be, so, json.dumps(day)), day


def test_validation_time_limit():
    """A spec that builds too slowly is a 400, not a hung request (a zero limit stands in for a slow build)."""
    p = StructuredOutputsParams(regex="[a-z]{1,3}" * 5 + "unique-for-this-test")
    with pytest.raises(ValidationError, match="longer than"):
        validate(p, StructuredOutputsConfig(), timeout_s=0.0)


def test_config_and_params_shapes():
    with pytest.raises(ValueError, match="guidance"):
        StructuredOutputsConfig.from_dict({"backend": "guidance"})
    with pytest.raises(ValueError, match="unsupported key"):
        StructuredOutputsConfig.from_dict({"enable_in_reasoning": True})
    with pytest.raises(ValueError, match="reasoning_parser must be one of"):
        StructuredOutputsConfig.from_dict({"reasoning_parser": "x"})
    with pytest.raises(ValueError, match="reasoning_parser must be one of"):
        StructuredOutputsConfig.from_dict({"reasoning_parser": ["qwen3"]})
    with pytest.raises(ValidationError, match="ignore_eos"):
        SamplingParams(ignore_eos=True, structured_outputs=StructuredOutputsParams(json_object=True))
    p = SamplingParams(structured_outputs={"json": {"type": "object"}})
    assert p.structured_outputs.kind == "json" and json.loads(p.structured_outputs.json) == {"type": "object"}
    import msgspec

    blob = msgspec.msgpack.encode(p)
    assert msgspec.msgpack.decode(blob, type=SamplingParams).structured_outputs == p.structured_outputs


def test_preemption_happened(tiny):
    """The small-cache configuration above really preempts (else it would test nothing)."""
    llm = tiny.llm(ARCH, num_gpu_blocks_override=14, block_size=4)
    assert llm.llm_engine.core.scheduler.num_preemptions_total > 0


def test_async_constrained_steps_run_ahead_and_match_sync(tiny):
    """With async scheduling a constrained request is no longer waited for: step N+1's forward is launched
    before step N completes, and its bitmask is filled once N's tokens advanced the matchers. The tokens are
    exactly the synchronous engine's (greedy and seeded sampling), preemption included."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "yy"]},
                                               "c": {"type": "array", "items": {"type": "boolean"}}},
              "required": ["a", "b", "c"], "additionalProperties": False}
    so = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    ps = [SamplingParams(temperature=0, max_tokens=40, structured_outputs=so),
          SamplingParams(temperature=1.0, seed=11, n=2, max_tokens=40, structured_outputs=so),
          SamplingParams(temperature=0.8, seed=4, max_tokens=12,
                         structured_outputs=StructuredOutputsParams(regex=r"[a-d]{3,9}z"))]
    prompts = [{"prompt_token_ids": [3 + i, 7, 9, 11, 2]} for i in range(3)]
    results = {}
    for flag in (False, True):
        llm = tiny.llm(ARCH, async_scheduling=flag, num_gpu_blocks_override=14, block_size=4)
        core = llm.llm_engine.core
        with mock.patch.object(core.runner, "forward_async", wraps=core.runner.forward_async) as split:
            outs = llm.generate(prompts, ps, use_tqdm=False)
        results[flag] = [[(c.token_ids, c.finish_reason) for c in o.outputs] for o in outs]
        assert split.call_count > 0, "constrained steps were not split into forward and sampling"
        assert (core.num_steps_ahead > 0) is flag
        assert core.scheduler.num_preemptions_total > 0
        core.check_integrity()
        for c in outs[0].outputs + outs[1].outputs:
            if c.finish_reason == "stop":
                obj = json.loads(c.text)
                assert set(obj) == {"a", "b", "c"} and obj["b"] in ("x", "yy")
        assert all(re.fullmatch(r"[a-d]{3,9}z", c.text) or c.finish_reason == "length" for c in outs[2].outputs)
    assert results[True] == results[False]


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": False},  # no constraint: kept
    {"type": "object", "propertyNames": {"enum": ["p", "q"]}},  # no count: a repeated key parses to a valid object
    {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False, "minProperties": 1},
    # names in a properties / $defs map are not keywords: a field may be called "contains", "not" or "if"
    {"type": "object", "properties": {"contains": {"type": "string"}, "not": {"type": "integer"},
                                      "if": {"type": "boolean"}}},
    {"$defs": {"contains": {"type": "string"}}, "$ref": "#/$defs/contains"},
    # annotations beside the keywords xgrammar follows alone; a type every enum value or branch already has
    {"$ref": "#/$defs/s", "description": "a note", "default": "x", "$defs": {"s": {"type": "string"}}},
    {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Maybe", "default": None},
    {"type": "string", "enum": ["a", "b"], "title": "Letter"}, {"type": "integer", "const": 3},
    {"type": "object", "anyOf": [{"type": "object", "properties": {"k": {"const": "a"}}, "required": ["k"]}]},
    {"type": "integer", "multipleOf": 3},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
])
def test_keywords_kept_where_the_grammar_enforces_them(schema):
    from pagoda.structured_output.schema_support import unsupported_feature

    assert unsupported_feature(schema) is None


def test_the_admission_checks_threads_start_at_once_and_once():
    """``start_workers`` (an API server's start-up) leaves both of the check's threads running, so a server's thread
    count does not depend on which requests it has seen (tests/reliability compares it against a baseline); a
    second call starts nothing, and a check afterwards starts no thread."""
    import threading

    from pagoda.structured_output import validate as v
    from pagoda.structured_output.params import StructuredOutputsConfig, StructuredOutputsParams

    def workers() -> int:
        return sum(t.name.startswith("pagoda-grammar-check") for t in threading.enumerate())

    v.start_workers()
    assert workers() == v._WORKERS
    v.start_workers()
    v.validate(StructuredOutputsParams(regex="[a-z]{3,7}"), StructuredOutputsConfig())
    assert workers() == v._WORKERS
