"""Endpoints and request fields against a live server, with the official openai client and raw HTTP."""

from __future__ import annotations

import json

import pytest
from server_utils import ALIAS, MODEL

PROMPT = "Paris is the capital of"


def greedy_text(client, prompt=PROMPT, max_tokens=24, **kw) -> str:
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                  extra_body={"ignore_eos": True, **kw})
    return r.choices[0].text


def sse_events(resp) -> list:
    events = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# --------------------------------------------------------------------------- basics
def test_models_version_health(server):
    models = server.client().models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL, ALIAS]
    raw = server.get("/v1/models").json()
    assert raw["object"] == "list" and raw["data"][0]["max_model_len"] == 2048
    assert server.get(f"/v1/models/{ALIAS}").json()["id"] == ALIAS
    assert server.get("/version").json()["version"]
    assert server.get("/health", headers={"Authorization": ""}).status_code == 200


def test_completion_basic(server):
    c = server.client()
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    n_prompt = server.post("/tokenize", {"prompt": PROMPT}).json()["count"]
    assert r.usage.prompt_tokens == n_prompt
    assert r.usage.total_tokens == n_prompt + 8
    # the alias serves the same model; results are deterministic under greedy
    r2 = c.completions.create(model=ALIAS, prompt=PROMPT, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert r2.choices[0].text == r.choices[0].text and r2.model == ALIAS


def test_completion_prompt_forms(server):
    c = server.client()
    ids = server.post("/tokenize", {"prompt": PROMPT}).json()["tokens"]
    by_text = greedy_text(c, PROMPT, 6)
    r = c.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].text == by_text
    r = c.completions.create(model=MODEL, prompt=[PROMPT, "The quick brown fox"], max_tokens=6, temperature=0,
                             extra_body={"ignore_eos": True})
    assert [ch.index for ch in r.choices] == [0, 1]
    assert r.choices[0].text == by_text
    assert r.choices[1].text == greedy_text(c, "The quick brown fox", 6)
    r = c.completions.create(model=MODEL, prompt=[ids, ids[:3]], max_tokens=6, temperature=0,
                             extra_body={"ignore_eos": True})
    assert len(r.choices) == 2 and r.choices[0].text == by_text
    assert r.usage.prompt_tokens == len(ids) + 3


def test_completion_echo_and_logprobs(server):
    c = server.client()
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3, echo=True,
                             extra_body={"ignore_eos": True})
    ch = r.choices[0]
    assert ch.text.startswith(PROMPT)
    n_prompt = r.usage.prompt_tokens
    lp = ch.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n_prompt + 5
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first prompt token
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs[1:])
    for top in lp.top_logprobs[n_prompt:]:
        assert 1 <= len(top) <= 4  # top 3, plus the sampled token when it is not among them
    # greedy: the sampled token is the most likely one
    gen = zip(lp.tokens[n_prompt:], lp.token_logprobs[n_prompt:], lp.top_logprobs[n_prompt:], strict=True)
    for tok, val, top in gen:
        assert val == pytest.approx(max(top.values()), abs=1e-5)
        assert top[tok] == pytest.approx(val, abs=1e-6)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_chat_basic_and_content_parts(server):
    c = server.client()
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi"}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    # the prompt is the model's chat template (ChatML) applied to the messages
    tok = server.post("/tokenize", {"messages": msgs}).json()
    assert r.usage.prompt_tokens == tok["count"]
    prompt = server.post("/detokenize", {"tokens": tok["tokens"]}).json()["prompt"]
    assert prompt == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay hi<|im_end|>\n"
                      "<|im_start|>assistant\n")
    # content as a list of text parts renders the parts joined by newlines, as vLLM joins them
    parts = [{"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
             {"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}]}]
    joined = [msgs[0], {"role": "user", "content": "Say\nhi"}]
    assert server.post("/tokenize", {"messages": parts}).json()["tokens"] == \
        server.post("/tokenize", {"messages": joined}).json()["tokens"]
    r2 = c.chat.completions.create(model=MODEL, messages=parts, max_tokens=6, temperature=0,
                                   extra_body={"ignore_eos": True})
    r3 = c.chat.completions.create(model=MODEL, messages=joined, max_tokens=6, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert r2.choices[0].message.content == r3.choices[0].message.content
    # a refusal part (the openai types allow it in assistant content) reads as its refusal text, as in vLLM
    refused = [*joined, {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."},
                                                          {"type": "text", "text": "Sorry."}]}]
    as_text = [*joined, {"role": "assistant", "content": "No.\nSorry."}]
    assert server.post("/tokenize", {"messages": refused}).json()["tokens"] == \
        server.post("/tokenize", {"messages": as_text}).json()["tokens"]
    r4 = server.post("/v1/chat/completions", {"model": MODEL, "messages": refused, "max_tokens": 2, "echo": True,
                                              "add_generation_prompt": False, "continue_final_message": True})
    assert r4.status_code == 200, r4.text
    assert r4.json()["choices"][0]["message"]["content"].startswith("No.\nSorry."), r4.text
    # add_generation_prompt=False drops the assistant header
    tok2 = server.post("/tokenize", {"messages": msgs, "add_generation_prompt": False}).json()
    assert tok2["count"] < tok["count"]


def test_chat_logprobs(server):
    c = server.client()
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4,
                                  temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob >= item.top_logprobs[2].logprob
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-5)  # greedy
        assert item.bytes is not None


def test_streaming_completion_with_usage(server):
    c = server.client()
    full = greedy_text(c, PROMPT, 12)
    stream = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(ch.usage is None for ch in chunks[:-1])
    assert "".join(ch.choices[0].text for ch in chunks[:-1]) == full
    assert chunks[-2].choices[0].finish_reason == "length"


def test_streaming_chat_raw_sse(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    with __import__("httpx").stream("POST", server.url + "/v1/chat/completions", json=body, headers=server.headers,
                                    timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    first = events[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 10
    finish = [e for e in events[:-2] if e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "length"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[1:-2])
    nonstream = server.post("/v1/chat/completions", {**body, "stream": False, "stream_options": None}).json()
    assert text == nonstream["choices"][0]["message"]["content"]


def test_n2_streaming_and_not(server):
    c = server.client()
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=8,
                                  temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    assert [ch.index for ch in r.choices] == [0, 1]
    assert r.usage.completion_tokens == 16
    stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=8,
                                       temperature=1.0, seed=7, stream=True, extra_body={"ignore_eos": True})
    texts = {0: "", 1: ""}
    finishes = {}
    for ch in stream:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "length", 1: "length"}
    # same seed: the streamed choices equal the non-streamed ones
    assert texts[0] == r.choices[0].message.content and texts[1] == r.choices[1].message.content
    rc = c.completions.create(model=MODEL, prompt=[PROMPT, "hello"], n=2, max_tokens=4, temperature=0,
                              extra_body={"ignore_eos": True})
    assert sorted(ch.index for ch in rc.choices) == [0, 1, 2, 3]


def test_seeded_reproducibility(server):
    c = server.client()

    def sample(seed):
        return c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=1.0, seed=seed,
                                    extra_body={"ignore_eos": True}).choices[0].text

    a, b, other = sample(1234), sample(1234), sample(99)
    assert a == b
    assert a != other


def test_stop_strings(server):
    c = server.client()
    full = greedy_text(c, PROMPT, 40)
    # a stop string taken from the middle of the greedy text
    stop = None
    for i in range(3, len(full) - 2):
        cand = full[i:i + 2]
        if cand.isascii() and cand.strip() == cand and cand.isalnum():
            stop = cand
            break
    assert stop is not None, full
    idx = full.find(stop)
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop],
                             extra_body={"ignore_eos": True})
    ch = r.choices[0]
    assert ch.text == full[:idx] and ch.finish_reason == "stop"
    assert ch.model_extra["stop_reason"] == stop
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop,
                             extra_body={"ignore_eos": True, "include_stop_str_in_output": True})
    assert r.choices[0].text == full[:idx + len(stop)]
    # streaming never leaks a stop string's beginning
    stream = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop],
                                  stream=True, extra_body={"ignore_eos": True})
    assert "".join(ch.choices[0].text for ch in stream) == full[:idx]


def test_stop_token_ids_and_min_tokens(server):
    c = server.client()
    ids = server.post("/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 10, "temperature": 0,
                                          "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True}
                      ).json()["choices"][0]["logprobs"]["tokens"]
    toks = [int(t.split(":")[1]) for t in ids]
    stop_id = toks[3]
    k = toks.index(stop_id)
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0,
                             extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]})
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == k + 1
    assert r.choices[0].model_extra["stop_reason"] == stop_id


def test_sampling_fields_accepted(server):
    c = server.client()
    r = c.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0.7, top_p=0.9, presence_penalty=0.5,
        frequency_penalty=0.5, seed=3, logit_bias={"5": 2.0}, user="tester",
        extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1, "min_tokens": 2, "ignore_eos": True,
                    "skip_special_tokens": False, "prompt_logprobs": 1},
    )
    assert r.usage.completion_tokens == 5
    plp = r.choices[0].model_extra["prompt_logprobs"]
    assert plp[0] is None and len(plp) == r.usage.prompt_tokens
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_completion_tokens=3,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3


def test_unknown_fields_are_a_400_naming_them(server):
    """A field no table knows (a typo: max_token) would otherwise run as if it had not been sent: a 400 naming it, as
    OpenAI answers; the platform's harmless extras (metadata) pass with a log line."""
    r = server.post("/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "max_token": 1,
                                        "another": {"x": 1}})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "another" and "another" in err["message"] and "max_token" in err["message"]
    r = server.post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 2, "enable_thinking": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "enable_thinking", r.text
    r = server.post("/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "metadata": {"k": "v"}})
    assert r.status_code == 200, r.text
    assert "ignored" in server.log() and "metadata" in server.log()


def test_tokenize_detokenize_roundtrip(server):
    t = server.post("/tokenize", {"model": MODEL, "prompt": PROMPT, "return_token_strs": True}).json()
    assert t["count"] == len(t["tokens"]) == len(t["token_strs"]) and t["max_model_len"] == 2048
    assert server.post("/detokenize", {"model": MODEL, "tokens": t["tokens"]}).json()["prompt"] == PROMPT


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/detokenize", {"tokens": [1, 2], "skip_special_tokens": False}, "skip_special_tokens"),
    ("/tokenize", {"prompt": "x", "add_generation_prompt": True}, "add_generation_prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": "x"}], "mm_processor_kwargs": {"a": 1}},
     "mm_processor_kwargs"),
])
def test_tokenize_routes_refuse_fields_they_do_not_read(server, path, body, field):
    """A field /tokenize or /detokenize would not read is a 400 naming it, not a result computed without it
    (vLLM logs and ignores it)."""
    r = server.post(path, {"model": MODEL, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    assert server.post(path, {"model": MODEL, **{k: v for k, v in body.items() if k != field}}).status_code == 200


def test_metrics_names(server):
    greedy_text(server.client(), PROMPT, 4)
    names = {k.split("{", 1)[0] for k in server.metrics()}
    for name in ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prompt_tokens_total",
                 "generation_tokens_total", "request_success_total", "time_to_first_token_seconds_bucket",
                 "inter_token_latency_seconds_bucket", "e2e_request_latency_seconds_bucket",
                 "request_queue_time_seconds_bucket"]:
        assert "pagoda:" + name in names, name
    assert server.metric("pagoda:request_success_total", finished_reason="length") >= 1
    assert server.metric("pagoda:generation_tokens_total") >= 4
    assert server.metric("pagoda:time_to_first_token_seconds_count") >= 1
    assert 'model_name="tiny"' in server.get("/metrics").text


@pytest.mark.parametrize("stop", [None, ["zz-never-zz"]])
def test_stream_chunks_carry_every_token(server, stop):
    """Together the chunks carry every generated token and none is empty, also while text is held back
    for a stop string. (The server sends a chunk for every step that made a token, even one whose text
    is empty, as vLLM does; a slow reader can still get several tokens in one chunk.)"""
    c = server.client()
    n = 24
    for api in ("completions", "chat"):
        if api == "completions":
            stream = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=n, temperature=0, stream=True,
                                          stop=stop, extra_body={"ignore_eos": True, "return_token_ids": True})
            chunks = [ch.choices[0] for ch in stream if ch.choices]
        else:
            stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=n, temperature=0, stream=True, stop=stop,
                                               extra_body={"ignore_eos": True, "return_token_ids": True})
            chunks = [ch.choices[0] for ch in stream if ch.choices and ch.choices[0].delta.role is None]
        per_chunk = [(ch.model_extra or {}).get("token_ids") for ch in chunks]
        assert sum(len(t or []) for t in per_chunk) == n, (api, per_chunk)
        assert all(per_chunk), (api, per_chunk)  # no chunk without a token
