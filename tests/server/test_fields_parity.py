"""vLLM API parity of request and response fields (issue 16), through the official ``openai`` client
(vLLM's extras in ``extra_body``) and raw HTTP: ``return_token_ids``, ``truncation_side``,
``request_id``, ``-1`` logprobs with ``--max-logprobs``, ``--return-tokens-as-token-ids``, the order of
``top_logprobs``, vLLM's error wording and ``param``, custom chat roles, and the fields that are a 400."""

from __future__ import annotations

import json

import openai
import pytest
from server_utils import MODEL, RemoteServer

from pagoda.config import EngineArgs

PROMPT = "Paris is"
CHAT_MSGS = [{"role": "user", "content": "hi"}]
COMPLETION = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
CHAT = {"model": MODEL, "messages": CHAT_MSGS, "max_tokens": 4, "temperature": 0}
# A chat template that, like many real ones, refuses roles it does not know.
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['user', 'assistant', 'system'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{{ m['role'] + ': ' + m['content'] + '\n' }}"
    "{% endfor %}"
)


@pytest.fixture(scope="module")
def open_server(tiny_model_dir):
    """No logprobs cap, token ids in logprobs by default, request chat templates allowed."""
    srv = RemoteServer(str(tiny_model_dir),
                       ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M", "--max-logprobs", "-1",
                        "--return-tokens-as-token-ids", "--trust-request-chat-template"])
    yield srv
    srv.stop()


def sse_events(r) -> list[dict]:
    out = []
    for line in r.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: "):]))
    return out


def tokenize(server, text: str) -> list[int]:
    return server.post("/tokenize", {"model": MODEL, "prompt": text}).json()["tokens"]


# ------------------------------------------------------------------ return_token_ids
def test_completion_return_token_ids(server):
    c = server.client()
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                             extra_body={"return_token_ids": True})
    ch = r.choices[0]
    assert ch.prompt_token_ids == tokenize(server, PROMPT)
    assert len(ch.token_ids) == r.usage.completion_tokens == 4
    assert c.completions.create(model=MODEL, prompt=ch.token_ids, max_tokens=1).usage.prompt_tokens == 4


@pytest.mark.parametrize("value", [False, None])
def test_token_id_keys_are_always_there_and_null_unless_asked(server, value):
    extra = {} if value is None else {"return_token_ids": value}
    comp = server.post("/v1/completions", {**COMPLETION, **extra}).json()["choices"][0]
    assert "prompt_token_ids" in comp and "token_ids" in comp
    assert comp["prompt_token_ids"] is None and comp["token_ids"] is None
    chat = server.post("/v1/chat/completions", {**CHAT, **extra}).json()
    assert "prompt_token_ids" in chat and chat["prompt_token_ids"] is None
    assert "token_ids" in chat["choices"][0] and chat["choices"][0]["token_ids"] is None


def test_completion_stream_return_token_ids(server):
    full = server.post("/v1/completions", {**COMPLETION, "max_tokens": 8, "return_token_ids": True}).json()
    r = server.post("/v1/completions", {**COMPLETION, "max_tokens": 8, "return_token_ids": True, "stream": True})
    chunks = [e for e in sse_events(r) if e["choices"]]
    assert chunks[0]["choices"][0]["prompt_token_ids"] == full["choices"][0]["prompt_token_ids"]
    assert all("prompt_token_ids" not in e["choices"][0] for e in chunks[1:])
    streamed = [t for e in chunks for t in e["choices"][0]["token_ids"]]
    assert streamed == full["choices"][0]["token_ids"]
    plain = sse_events(server.post("/v1/completions", {**COMPLETION, "stream": True}))
    assert all("token_ids" not in ch and "prompt_token_ids" not in ch for e in plain for ch in e["choices"])


def test_chat_return_token_ids(server):
    c = server.client()
    r = c.chat.completions.create(model=MODEL, messages=CHAT_MSGS, max_tokens=6, temperature=0,
                                  extra_body={"return_token_ids": True})
    assert r.prompt_token_ids == server.post("/tokenize", {"model": MODEL, "messages": CHAT_MSGS}).json()["tokens"]
    assert len(r.choices[0].token_ids) == r.usage.completion_tokens
    stream = c.chat.completions.create(model=MODEL, messages=CHAT_MSGS, max_tokens=6, temperature=0, stream=True,
                                       extra_body={"return_token_ids": True})
    chunks = list(stream)
    assert chunks[0].prompt_token_ids == r.prompt_token_ids
    assert all("prompt_token_ids" not in ch.model_dump(exclude_unset=True) for ch in chunks[1:])
    ids = [t for ch in chunks for choice in ch.choices for t in (getattr(choice, "token_ids", None) or [])]
    assert ids == r.choices[0].token_ids


# ------------------------------------------------------------ truncation, request id
@pytest.mark.parametrize("side,expected", [("left", [8, 9]), ("right", [5, 6]), (None, [8, 9])])
def test_truncation_side(server, side, expected):
    body = {**COMPLETION, "prompt": [5, 6, 7, 8, 9], "truncate_prompt_tokens": 2, "return_token_ids": True}
    if side is not None:
        body["truncation_side"] = side
    r = server.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["prompt_token_ids"] == expected
    r = server.post("/v1/completions", {**body, "truncate_prompt_tokens": -1})  # -1: the context length
    assert r.json()["choices"][0]["prompt_token_ids"] == [5, 6, 7, 8, 9]


def test_truncation_side_chat_and_bad_value(server):
    r = server.post("/v1/chat/completions", {**CHAT, "truncate_prompt_tokens": 1, "truncation_side": "right",
                                             "return_token_ids": True})
    full = server.post("/tokenize", {"model": MODEL, "messages": CHAT_MSGS}).json()["tokens"]
    assert r.json()["prompt_token_ids"] == full[:1]
    r = server.post("/v1/completions", {**COMPLETION, "truncation_side": "middle"})
    assert r.status_code == 400 and "truncation_side" in r.text


def test_request_id_names_the_response(server):
    c = server.client()
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body={"request_id": "my-req-1"})
    assert r.id == "cmpl-my-req-1"
    r = c.chat.completions.create(model=MODEL, messages=CHAT_MSGS, max_tokens=2, extra_body={"request_id": "my-req-2"})
    assert r.id == "chatcmpl-my-req-2"
    assert server.post("/v1/completions", {**COMPLETION, "request_id": ""}).status_code == 400


# ------------------------------------------------------------------------ logprobs
def test_all_logprobs_needs_an_uncapped_server(server):
    r = server.post("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": -1})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "top_logprobs"
    assert err["message"].startswith("Requested sample logprobs of ")
    assert err["message"].endswith("which is greater than max allowed: 5")
    r = server.post("/v1/completions", {**COMPLETION, "prompt_logprobs": -1})
    assert r.json()["error"]["message"].startswith("Requested prompt logprobs of "), r.text
    r = server.post("/v1/completions", {**COMPLETION, "logprobs": -1})  # vLLM's server refuses it here
    assert r.status_code == 400 and r.json()["error"]["message"] == "`logprobs` must be a positive value."


def test_all_logprobs_return_the_whole_vocabulary(open_server):
    r = open_server.post("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": -1, "max_tokens": 2})
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    sizes = {len(t["top_logprobs"]) for t in content}
    assert len(sizes) == 1 and sizes.pop() >= 256  # the tiny model's vocabulary (400 logits)
    for t in content:
        assert t["top_logprobs"][0]["token"] == t["token"]
    r = open_server.post("/v1/completions", {**COMPLETION, "max_tokens": 1, "prompt_logprobs": -1})
    plp = r.json()["choices"][0]["prompt_logprobs"]
    assert plp[0] is None and all(len(d) >= 256 for d in plp[1:])


def test_server_flag_return_tokens_as_token_ids(open_server):
    r = open_server.post("/v1/completions", {**COMPLETION, "logprobs": 2, "return_token_ids": True}).json()
    ch = r["choices"][0]
    assert ch["logprobs"]["tokens"] == [f"token_id:{t}" for t in ch["token_ids"]]
    assert all(k.startswith("token_id:") for d in ch["logprobs"]["top_logprobs"] for k in d)
    r = open_server.post("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 1}).json()
    assert all(t["token"].startswith("token_id:") for t in r["choices"][0]["logprobs"]["content"])


def test_chosen_token_comes_first_in_top_logprobs(server):
    c = server.client()
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.5, seed=3, logprobs=2,
                             echo=True)
    lp = r.choices[0].logprobs
    for tok, top in zip(lp.tokens[1:], lp.top_logprobs[1:], strict=True):
        assert next(iter(top)) == tok and 1 <= len(top) <= 3
    r = c.chat.completions.create(model=MODEL, messages=CHAT_MSGS, max_tokens=8, temperature=1.5, seed=3,
                                  logprobs=True, top_logprobs=3)
    for t in r.choices[0].logprobs.content:
        assert t.top_logprobs[0].token == t.token and len(t.top_logprobs) == 3


def test_max_logprobs_range():
    EngineArgs(model="m", max_logprobs=-1).validate()
    EngineArgs(model="m", max_logprobs=1000).validate()
    with pytest.raises(ValueError, match="max_logprobs"):
        EngineArgs(model="m", max_logprobs=-2).validate()


# ---------------------------------------------------------------------- error bodies
@pytest.mark.parametrize("field,value,message", [
    ("temperature", -1, "temperature must be non-negative, got -1.0."),
    ("top_k", -2, "top_k must be 0 (disable), or at least 1, got -2."),
    ("top_p", 0, "top_p must be in (0, 1], got 0.0."),
    ("presence_penalty", 3, "presence_penalty must be in [-2, 2], got 3.0."),
    ("repetition_penalty", 0, "repetition_penalty must be greater than zero, got 0.0."),
    ("min_p", 2, "min_p must be in [0, 1], got 2.0."),
    ("min_tokens", -1, "min_tokens must be greater than or equal to 0, got -1."),
    ("stop", "", "stop cannot contain an empty string."),
    ("prompt_logprobs", -2, "prompt_logprobs must be non-negative or -1, got -2."),
])
def test_range_errors_in_vllms_words(server, field, value, message):
    r = server.post("/v1/completions", {**COMPLETION, field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["message"] == message and err["param"] == field, err


def test_every_bad_logit_bias_key_is_named(server):
    c = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, logit_bias={"a": 1, "5": 1, "b c": 2})
    err = e.value.body
    assert err["param"] == "logit_bias"
    assert err["message"] == "logit_bias contains key(s) that cannot be converted to integer token IDs: ['a', 'b c']"


@pytest.mark.parametrize("prompt", ["", []])
def test_empty_prompt_in_vllms_words(server, prompt):
    r = server.post("/v1/completions", {**COMPLETION, "prompt": prompt})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "prompt"
    assert err["message"] == "Either prompt or prompt_embeds must be provided and non-empty."


def test_chat_top_logprobs_checks(server):
    r = server.post("/v1/chat/completions", {**CHAT, "top_logprobs": 2})
    assert r.json()["error"]["message"] == "when using `top_logprobs`, `logprobs` must be set to true."
    r = server.post("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": -3})
    assert r.json()["error"]["message"] == "`top_logprobs` must be a positive value or -1."
    assert server.post("/v1/chat/completions", {**CHAT, "top_logprobs": 0}).status_code == 200


# ------------------------------------------------------------------------ chat roles
def test_custom_role_reaches_the_template(server):
    msgs = [{"role": "narrator", "content": "Once upon a time"}, {"role": "user", "content": "go on"}]
    r = server.post("/v1/chat/completions", {**CHAT, "messages": msgs, "return_token_ids": True})
    assert r.status_code == 200, r.text
    text = server.post("/detokenize", {"model": MODEL, "tokens": r.json()["prompt_token_ids"]}).json()["prompt"]
    assert "narrator" in text


def test_template_refusing_a_role_is_a_400(open_server):
    body = {**CHAT, "chat_template": STRICT_TEMPLATE, "messages": [{"role": "narrator", "content": "x"}]}
    r = open_server.post("/v1/chat/completions", body)
    assert r.status_code == 400 and "unknown role narrator" in r.json()["error"]["message"], r.text
    body["messages"] = CHAT_MSGS
    assert open_server.post("/v1/chat/completions", body).status_code == 200


# ------------------------------------------------------------------ fields that are a 400
@pytest.mark.parametrize("path,field,value", [
    ("/v1/completions", "vllm_xargs", {"k": 1}),
    ("/v1/completions", "mm_processor_kwargs", {"num_crops": 4}),
    ("/v1/chat/completions", "mm_processor_kwargs", {"num_crops": 4}),
    ("/v1/chat/completions", "include_reasoning", False),
])
def test_unimplemented_fields_are_a_400_naming_them(server, path, field, value):
    base = COMPLETION if path == "/v1/completions" else CHAT
    r = server.post(path, {**base, field: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_spaces_between_special_tokens(server):
    r = server.post("/v1/completions", {**COMPLETION, "spaces_between_special_tokens": False,
                                        "skip_special_tokens": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "spaces_between_special_tokens"
    for extra in ({"spaces_between_special_tokens": False}, {"spaces_between_special_tokens": True,
                                                            "skip_special_tokens": False}):
        assert server.post("/v1/completions", {**COMPLETION, **extra}).status_code == 200


def test_echo_and_min_tokens_work(server):
    c = server.client()
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, echo=True)
    assert r.choices[0].text.startswith(PROMPT)
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                             extra_body={"min_tokens": 6, "stop_token_ids": list(range(400))[:50]})
    assert r.usage.completion_tokens == 6
