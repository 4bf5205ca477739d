"""Request fields pagoda does not implement are a 400 naming the field (never a 200 with the constraint
dropped); harmless extras and neutral values are accepted; admission failures carry ``error.param``.
The table is pagoda/entrypoints/openai/request_fields.py."""

from __future__ import annotations

import json

import pytest
from server_utils import MODEL

from pagoda.entrypoints.openai.request_fields import IGNORED, UNSUPPORTED

COMPLETION = {"model": MODEL, "prompt": "Paris is", "max_tokens": 2, "temperature": 0}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}

# A value that asks for something pagoda does not do, per field.
MEANINGFUL = {
    "guided_whitespace_pattern": r"\s", "structural_tag": "{}", "logits_processors": ["my.Processor"],
    "best_of": 3, "vllm_xargs": {"k": 1},
    "kv_transfer_params": {"do_remote_decode": True}, "prompt_embeds": "AAAA",
    "mm_processor_kwargs": {"num_crops": 4}, "spaces_between_special_tokens": False,
    "suffix": " end.", "audio": {"voice": "alloy"}, "modalities": ["text", "audio"],
    "functions": [{"name": "f"}], "function_call": "auto", "documents": [{"title": "t", "text": "x"}],
    "reasoning_effort": "high", "web_search_options": {}, "verbosity": "low",
}
# Values that change nothing, accepted.
NEUTRAL = [("priority", 0), ("best_of", 1), ("response_format", {"type": "text"}), ("guided_json", None),
           ("bad_words", []), ("tool_choice", "none"), ("include_reasoning", True), ("modalities", ["text"]),
           ("return_token_ids", False), ("suffix", "")]


def test_every_unsupported_field_has_a_meaningful_value():
    assert set(MEANINGFUL) == set(UNSUPPORTED)


CASES = [(name, ep) for name, rule in UNSUPPORTED.items() for ep in rule.endpoints]


@pytest.mark.parametrize("name,endpoint", CASES, ids=[f"{ep}-{n}" for n, ep in CASES])
def test_unsupported_field_is_400_naming_it(server, name, endpoint):
    path, base = ("/v1/completions", COMPLETION) if endpoint == "completions" else ("/v1/chat/completions", CHAT)
    if name == "spaces_between_special_tokens":  # it changes something only where special tokens are kept
        base = {**base, "skip_special_tokens": False}
    r = server.post(path, {**base, name: MEANINGFUL[name]})
    assert r.status_code == 400, (name, r.text)
    err = r.json()["error"]
    assert err["param"] == name and name in err["message"] and "is not supported" in err["message"], err


@pytest.mark.parametrize("name,value", NEUTRAL)
def test_neutral_values_are_accepted(server, name, value):
    for path, base in (("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)):
        if path == "/v1/completions" and name in ("tool_choice", "include_reasoning", "modalities"):
            continue
        r = server.post(path, {**base, name: value})
        assert r.status_code == 200, (name, r.text)


def test_sampling_token_fields_are_honoured(server):
    """allowed_token_ids, bad_words and logprob_token_ids are implemented (tests/test_sampling_fields.py)."""
    r = server.post("/v1/completions", {**COMPLETION, "max_tokens": 4, "allowed_token_ids": [11, 12, 13],
                                        "return_tokens_as_token_ids": True, "logprobs": 0})
    assert r.status_code == 200, r.text
    assert all(t in ("token_id:11", "token_id:12", "token_id:13") for t in r.json()["choices"][0]["logprobs"]["tokens"])
    r = server.post("/v1/chat/completions", {**CHAT, "bad_words": ["Hello"]})
    assert r.status_code == 200, r.text
    r = server.post("/v1/completions", {**COMPLETION, "logprob_token_ids": [5, 7]})
    assert r.status_code == 200, r.text
    top = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    assert len(top) >= 2
    r = server.post("/v1/completions", {**COMPLETION, "allowed_token_ids": [10**9]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "allowed_token_ids", r.text
    # a lone surrogate is no text to tokenize: a 400 naming bad_words, as for every other text field
    for path, base in (("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)):
        r = server.post(path, json.dumps({**base, "bad_words": ["ok", "\ud800"]}))
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "bad_words" and "not valid Unicode" in err["message"], err


def test_priority_needs_the_priority_policy(server):
    r = server.post("/v1/completions", {**COMPLETION, "priority": 5})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "priority" and "scheduling-policy priority" in err["message"], err


def test_harmless_extras_are_accepted_and_unknown_ones_refused(server):
    extras = {"user": "u1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "prompt_cache_key": "k"}
    assert set(extras) <= set(IGNORED)
    for path, base in (("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)):
        r = server.post(path, {**base, **extras})
        assert r.status_code == 200, r.text
    # parallel_tool_calls is honoured by chat (tool_calling.py); completions has no tools, so it is unknown there,
    # as is every field that belongs to the other endpoint
    assert server.post("/v1/chat/completions", {**CHAT, "parallel_tool_calls": True}).status_code == 200
    for path, base in (("/v1/completions", {**COMPLETION, "parallel_tool_calls": True}),
                       ("/v1/completions", {**COMPLETION, "reasoning_effort": "high"}),
                       ("/v1/chat/completions", {**CHAT, "suffix": "}"}),
                       ("/v1/chat/completions", {**CHAT, "no_such_field_anywhere": 1})):
        r = server.post(path, base)
        assert r.status_code == 400 and "Unrecognized request field" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("path,body,param,code", [
    ("/v1/completions", {**COMPLETION, "max_tokens": 3000}, "max_tokens", "context_length_exceeded"),
    ("/v1/completions", {**COMPLETION, "prompt": [1] * 2048}, "prompt", "context_length_exceeded"),
    ("/v1/completions", {**COMPLETION, "prompt": [1, 2, 10**6]}, "prompt", None),
    ("/v1/completions", {**COMPLETION, "logprobs": 6}, "logprobs", None),
    ("/v1/completions", {**COMPLETION, "logit_bias": {"100000": 1}}, "logit_bias", None),
    ("/v1/completions", {**COMPLETION, "truncate_prompt_tokens": 5000}, "truncate_prompt_tokens", None),
    ("/v1/completions", {**COMPLETION, "use_beam_search": True, "n": 9}, "n", None),
    ("/v1/completions", {**COMPLETION, "use_beam_search": True, "n": 2, "stop": ["x"]}, "stop", None),
    ("/v1/completions", {**COMPLETION, "use_beam_search": True, "n": 2, "allowed_token_ids": [5]},
     "allowed_token_ids", None),
    ("/v1/completions", {**COMPLETION, "use_beam_search": True, "n": 2, "bad_words": ["x"]}, "bad_words", None),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 3000}, "max_completion_tokens",
     "context_length_exceeded"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 3000}, "max_tokens", "context_length_exceeded"),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 6}, "top_logprobs", None),
    ("/v1/chat/completions", {**CHAT, "prompt_logprobs": 6}, "prompt_logprobs", None),
    ("/v1/chat/completions", {**CHAT, "n": 129}, "n", None),
])
def test_admission_errors_carry_the_param(server, path, body, param, code):
    r = server.post(path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code, err
    if param == "top_logprobs":  # vLLM's words
        assert err["message"] == "Requested sample logprobs of 6, which is greater than max allowed: 5", err


@pytest.mark.parametrize("body,param", [
    ({"use_beam_search": True, "n": 2, "top_p": 0.5}, "top_p"),
    ({"use_beam_search": True, "n": 2, "seed": 3}, "seed"),
    ({"use_beam_search": True, "n": 2, "temperature": 0.7}, "temperature"),
    ({"length_penalty": 2.0}, "length_penalty"),
    ({"early_stopping": True}, "early_stopping"),
])
def test_fields_beam_search_cannot_honour_or_that_need_it_are_400(server, body, param):
    """Beam search draws nothing (a sampling field would change nothing); its own fields change nothing without it."""
    r = server.post("/v1/completions", {**COMPLETION, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    ok = server.post("/v1/completions", {**COMPLETION, "use_beam_search": True, "n": 2, "temperature": 0,
                                         "length_penalty": 1.5, "early_stopping": True})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("extra,param", [
    ({"response_format": {"type": "json_object", "schema": {"type": "object"}}}, "response_format"),
    ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"documents": [{"text": "x"}]}}, "chat_template_kwargs"),
])
def test_keys_that_would_be_dropped_are_400(server, extra, param):
    """A schema in another server's response_format dialect, or chat_template_kwargs for what the request's own
    fields set: a 400 naming the field, not a 200 with the key dropped."""
    r = server.post("/v1/chat/completions", {**CHAT, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    ok = server.post("/v1/chat/completions", {**CHAT, "chat_template_kwargs": {"enable_thinking": False}})
    assert ok.status_code == 200, ok.text
