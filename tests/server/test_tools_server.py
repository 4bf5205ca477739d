"""Tool calling and reasoning through the server and the official client.

* the default model (SmolLM2-135M-Instruct, which does not call tools by itself) behind
  ``--enable-auto-tool-choice --tool-call-parser hermes``: a required or named tool choice always parses
  to the tool's schema (constrained decoding), streamed deltas reassemble to the non-streamed call, tool
  results round-trip through the chat template, and bad tool definitions are 400s naming the field;
* the tiny model behind ``--reasoning-parser deepseek_r1``: its output (no ``</think>``) is all
  reasoning, streamed and not, and constrained output with a reasoning parser is refused (its ``</think>`` is
  not one token; tests/server/test_reasoning_structured_server.py covers a model where it is).
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from server_utils import MODEL, RemoteServer

DEFAULT = "SmolLM2-135M-Instruct"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit"], "additionalProperties": False}}}
NO_PARAMS = {"type": "function", "function": {"name": "get_time", "description": "The time now"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "get_time": {"type": "object"}}


@pytest.fixture(scope="module")
def tool_server():
    srv = RemoteServer(None, ["--max-model-len", "1024", "--kv-cache-memory-bytes", "256M",
                              "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                              "--trust-request-chat-template"], env={"OMP_NUM_THREADS": "2"})
    yield srv
    srv.stop()


def check_calls(calls, names):
    assert calls and all(c.type == "function" and c.id.startswith("chatcmpl-tool-") for c in calls)
    for c in calls:
        assert c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def reassemble(chunks):
    calls: dict[int, dict] = {}
    for ch in chunks:
        for d in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            if d.id is not None:
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
            calls[d.index]["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


@pytest.mark.default_model
def test_named_tool_call_always_parses_and_streams_the_same(tool_server):
    c = tool_server.client()
    choice = {"type": "function", "function": {"name": "get_weather"}}
    prompts = ["What is the weather in Paris?", "Weather for Tokyo in fahrenheit, 3 days", "hello", "{}"]
    for p in prompts:
        r = c.chat.completions.create(model=DEFAULT, messages=[{"role": "user", "content": p}], tools=[WEATHER],
                                      tool_choice=choice, max_tokens=80, temperature=0)
        m = r.choices[0].message
        assert len(m.tool_calls) == 1 and r.choices[0].finish_reason == "stop", r  # OpenAI's reason when forced
        check_calls(m.tool_calls, {"get_weather"})
        s = c.chat.completions.create(model=DEFAULT, messages=[{"role": "user", "content": p}], tools=[WEATHER],
                                      tool_choice=choice, max_tokens=80, temperature=0, stream=True)
        chunks = list(s)
        streamed = reassemble(chunks)
        assert [(x["name"], x["arguments"]) for x in streamed] == [("get_weather", m.tool_calls[0].function.arguments)]
        assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.default_model
def test_required_tool_calls_always_parse(tool_server):
    from concurrent.futures import ThreadPoolExecutor

    c = tool_server.client()

    def sampled(seed: int, p: str):
        return c.chat.completions.create(model=DEFAULT, messages=[{"role": "user", "content": p}],
                                         tools=[WEATHER, NO_PARAMS], tool_choice="required", max_tokens=120,
                                         temperature=0.8, seed=seed, parallel_tool_calls=False)

    # one call (parallel_tool_calls false) of bounded tools: the grammar leaves no way to run past max_tokens
    # (the four requests run at once, in one batch: a grammar per request)
    prompts = ["What is the weather in Paris?", "What time is it?", "Say hi", "Paris? Tokyo?"]
    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(pool.map(sampled, range(len(prompts)), prompts))
    for r in replies:
        assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message
        assert len(r.choices[0].message.tool_calls) == 1 and r.choices[0].message.content is None
        check_calls(r.choices[0].message.tool_calls, {"get_weather", "get_time"})
    one = {"model": DEFAULT, "messages": ASK, "tools": [WEATHER, NO_PARAMS], "tool_choice": "required",
           "max_tokens": 120, "temperature": 0, "parallel_tool_calls": False}
    r = c.chat.completions.create(**one)
    chunks = list(c.chat.completions.create(**one, stream=True))
    assert [(x["name"], x["arguments"]) for x in reassemble(chunks)] == [
        (t.function.name, t.function.arguments) for t in r.choices[0].message.tool_calls]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # parallel calls are unbounded: greedy, this model repeats calls until max_tokens, and the unfinished list
    # comes back as content with finish_reason "length" (never a half call)
    r = c.chat.completions.create(**{**one, "parallel_tool_calls": True, "max_tokens": 60})
    m = r.choices[0].message
    if r.choices[0].finish_reason == "length":
        assert not m.tool_calls and m.content.startswith('[{"name": ')
    else:
        check_calls(m.tool_calls, {"get_weather", "get_time"})


ROUND_TRIP_TEMPLATE = (
    "{% for t in tools or [] %}TOOL {{ t.function.name }}\n{% endfor %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.id }} {{ c.function.name }} city={{ c.function.arguments.city }}"
    "{% endfor %}{% if m.tool_call_id %} RESULT-FOR {{ m.tool_call_id }}{% endif %}\n{% endfor %}<assistant>")


@pytest.mark.default_model
def test_tool_results_round_trip_through_the_template(tool_server):
    c = tool_server.client()
    r = c.chat.completions.create(model=DEFAULT, messages=ASK, tools=[WEATHER],
                                  tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                  max_tokens=60, temperature=0)
    call = r.choices[0].message.tool_calls[0]
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
    r2 = c.chat.completions.create(model=DEFAULT, messages=messages, tools=[WEATHER], tool_choice="none",
                                   max_tokens=4, temperature=0,
                                   extra_body={"chat_template": ROUND_TRIP_TEMPLATE, "return_token_ids": True})
    prompt = tool_server.post("/detokenize", {"model": DEFAULT, "tokens": r2.prompt_token_ids}).json()["prompt"]
    city = json.loads(call.function.arguments)["city"]
    # (transformers renders with trim_blocks: the newline after a block tag goes)
    assert prompt == (f"TOOL get_weather\n<user>What is the weather in Paris?<assistant>CALL {call.id} get_weather "
                      f"city={city}<tool>18 C and sunny RESULT-FOR {call.id}<assistant>")  # arguments as an object
    # --exclude-tools-when-tool-choice-none is off: tool_choice none still shows the tools; /tokenize shows them too
    tok = {"model": DEFAULT, "messages": messages, "chat_template": ROUND_TRIP_TEMPLATE}
    with_tools = tool_server.post("/tokenize", {**tok, "tools": [WEATHER]}).json()["tokens"]
    assert with_tools == r2.prompt_token_ids
    assert len(tool_server.post("/tokenize", tok).json()["tokens"]) < len(with_tools)


@pytest.mark.default_model
def test_auto_parses_nothing_when_the_model_calls_nothing(tool_server):
    c = tool_server.client()
    r = c.chat.completions.create(model=DEFAULT, messages=[{"role": "user", "content": "What is the capital of "
                                                            "France? Answer in one word."}],
                                  tools=[WEATHER], max_tokens=16, temperature=0)
    m = r.choices[0].message
    assert "Paris" in m.content and not m.tool_calls and r.choices[0].finish_reason in ("stop", "length")


BAD_TOOLS = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": ["a"]}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"tools": []}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [{**WEATHER, "function": {**WEATHER["function"], "strict": True}}],
      "response_format": {"type": "json_object"}}, "tool_choice"),  # strict tools under auto are a constraint too
]


@pytest.mark.default_model
@pytest.mark.parametrize("extra,param", BAD_TOOLS, ids=[str(i) for i in range(len(BAD_TOOLS))])
def test_bad_tool_requests_are_400s_naming_the_field(tool_server, extra, param):
    r = tool_server.post("/v1/chat/completions", {"model": DEFAULT, "messages": ASK, "max_tokens": 2, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.default_model
def test_strict_tools_under_auto_are_served(tool_server):
    """``strict: true`` under auto runs with the hermes structural tag (tests/test_strict_tools_auto.py holds the
    grammar to the schemas); any call made is valid for its tool."""
    strict = {**WEATHER, "function": {**WEATHER["function"], "strict": True}}
    for stream in (False, True):
        r = tool_server.post("/v1/chat/completions", {"model": DEFAULT, "messages": ASK, "tools": [strict],
                                                      "max_tokens": 24, "temperature": 0, "stream": stream})
        assert r.status_code == 200, r.text
    c = tool_server.client()
    r = c.chat.completions.create(model=DEFAULT, messages=ASK, tools=[strict], max_tokens=40, temperature=0)
    if r.choices[0].message.tool_calls:
        check_calls(r.choices[0].message.tool_calls, {"get_weather"})


@pytest.mark.default_model
def test_a_tool_without_parameters_is_valid(tool_server):
    c = tool_server.client()
    r = c.chat.completions.create(model=DEFAULT, messages=ASK, tools=[NO_PARAMS],
                                  tool_choice={"type": "function", "function": {"name": "get_time"}},
                                  max_tokens=30, temperature=0)
    check_calls(r.choices[0].message.tool_calls, {"get_time"})
    r = c.chat.completions.create(model=DEFAULT, messages=ASK, tools=[NO_PARAMS], tool_choice="none", max_tokens=2)
    assert r.choices[0].message.tool_calls in (None, [])


BAD_DEFINITIONS = [  # OpenAI's 400s: each would otherwise change what is enforced, in silence
    ({"name": "f", "parameters": {"type": "object"}, "strict": "true"}, "strict"),  # a string: not enforced
    ({"name": "f", "parameters": {"type": "object"}, "strict": 1}, "strict"),
    ({"name": "f", "parameter": {"type": "object"}}, "parameter"),  # misspelt: the tool would take {}
    ({"name": "f", "parameters": {"type": "object"}, "arguments": {}}, "arguments"),
    ({"name": "f", "description": ["a"]}, "description"),
]


@pytest.mark.parametrize("choice", ["none", "required"])
@pytest.mark.parametrize("fn,word", BAD_DEFINITIONS, ids=[w for _, w in BAD_DEFINITIONS])
def test_a_bad_function_definition_is_a_400_naming_tools(server, fn, word, choice):
    r = server.post("/v1/chat/completions", {"model": MODEL, "messages": ASK, "max_tokens": 2, "tool_choice": choice,
                                             "tools": [{"type": "function", "function": fn}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "tools" and word in err["message"], err


def test_unknown_tool_keys_are_400s_and_null_is_unset(server):
    fn = {"name": "f", "parameters": {"type": "object"}}
    for tool in ({"type": "function", "function": fn, "strict": True},  # strict one level too high: not enforced
                 {"type": "function", "functions": fn}):
        r = server.post("/v1/chat/completions", {"model": MODEL, "messages": ASK, "max_tokens": 2, "tools": [tool],
                                                 "tool_choice": "none"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text
    ok = {"type": "function", "function": {**fn, "strict": None, "description": None}}  # null: OpenAI's unset
    r = server.post("/v1/chat/completions", {"model": MODEL, "messages": ASK, "max_tokens": 2, "tools": [ok],
                                             "tool_choice": "none"})
    assert r.status_code == 200, r.text


UNIQUE = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}  # refused: not enforceable
OK_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def test_a_bad_constraint_is_named_by_the_field_that_supplies_it(server):
    """A strict tool under tool_choice "none" is only shown: a bad response_format is response_format's error
    (it used to be named ``tools``); a tool choice that constrains makes the tools' schemas the constraint."""
    strict = {"type": "function", "function": {"name": "f", "parameters": OK_SCHEMA, "strict": True}}
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": UNIQUE}}
    for tools in ([strict], [{"type": "function", "function": {"name": "f", "parameters": OK_SCHEMA}}]):
        r = server.post("/v1/chat/completions", {"model": MODEL, "messages": ASK, "max_tokens": 2, "tools": tools,
                                                 "tool_choice": "none", "response_format": rf})
        assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
    bad_tool = {"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"xs": UNIQUE}, "required": ["xs"]}}}
    for choice in ("required", {"type": "function", "function": {"name": "f"}}):
        r = server.post("/v1/chat/completions", {"model": MODEL, "messages": ASK, "max_tokens": 2,
                                                 "tools": [bad_tool], "tool_choice": choice})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text


# ------------------------------------------------------------------------ reasoning (tiny model)
@pytest.fixture(scope="module")
def reasoning_server(tiny_model_dir):
    srv = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                             "--reasoning-parser", "deepseek_r1"])
    yield srv
    srv.stop()


def test_reasoning_split_streamed_and_not(reasoning_server, server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "temperature": 0}
    plain = server.client().chat.completions.create(**body).choices[0].message.content
    c = reasoning_server.client()
    m = c.chat.completions.create(**body).choices[0].message
    assert plain and "</think>" not in plain
    assert m.model_extra["reasoning"] == plain and m.content is None  # no </think>: all of it is reasoning
    assert m.model_extra["reasoning_content"] == plain  # older vLLM's name, the same text
    chunks = list(c.chat.completions.create(**body, stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == plain
    assert not "".join(d.content or "" for d in deltas)
    m = c.chat.completions.create(**body, extra_body={"include_reasoning": False}).choices[0].message
    assert m.model_extra["reasoning"] is None and m.content is None


def test_constrained_output_with_a_reasoning_parser_needs_a_one_token_end_tag(reasoning_server):
    for extra in ({"tools": [WEATHER], "tool_choice": "required"}, {"response_format": {"type": "json_object"}}):
        r = reasoning_server.post("/v1/chat/completions", {"model": MODEL, "messages": ASK, **extra})
        assert r.status_code == 400 and "--reasoning-parser" in r.json()["error"]["message"], r.text
    # /v1/completions is constrained from its first token (it never splits reasoning off): no end tag needed
    r = reasoning_server.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 8,
                                                  "guided_choice": ["yes", "no"]})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] in ("yes", "no"), r.text


def test_auto_tool_choice_without_the_flags_is_vllms_400(server):
    with pytest.raises(openai.BadRequestError, match="--enable-auto-tool-choice and --tool-call-parser"):
        server.client().chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                                                      tool_choice="auto", max_tokens=2)


# ------------------------------------------------------------------------ tools on /v1/responses (default model)
FLAT_WEATHER = {"type": "function", **WEATHER["function"], "strict": True}  # the Responses API's flat shape


def _response_events(stream):
    return [(e.type, e) for e in stream]


@pytest.mark.default_model
def test_responses_named_and_required_function_calls(tool_server):
    c = tool_server.client()
    # "required" with one call at most: parallel calls are unbounded, and greedy this model may repeat its call
    # until max_output_tokens (it does on an AVX2-only CPU; see test_required_tool_calls_always_parse)
    for choice in ({"type": "function", "name": "get_weather"}, "required"):
        one = {"parallel_tool_calls": False} if choice == "required" else {}
        r = c.responses.create(model=DEFAULT, input="What is the weather in Paris?", tools=[FLAT_WEATHER],
                               tool_choice=choice, max_output_tokens=80, temperature=0, **one)
        calls = [o for o in r.output if o.type == "function_call"]
        assert r.status == "completed" and len(calls) >= 1, r
        for fc in calls:
            assert fc.name == "get_weather" and fc.id.startswith("fc_") and fc.call_id and fc.status == "completed"
            jsonschema.validate(json.loads(fc.arguments), SCHEMAS["get_weather"])
        # streamed: OpenAI's events, and the same call
        events = _response_events(c.responses.create(
            model=DEFAULT, input="What is the weather in Paris?", tools=[FLAT_WEATHER], tool_choice=choice,
            max_output_tokens=80, temperature=0, stream=True, **one))
        kinds = [k for k, _ in events]
        assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
        assert kinds[-2:] == ["response.output_item.done", "response.completed"]
        added = [e.item for k, e in events if k == "response.output_item.added"]
        assert [a.type for a in added] == ["function_call"] * len(calls)
        args = "".join(e.delta for k, e in events if k == "response.function_call_arguments.delta")
        done = [e for k, e in events if k == "response.function_call_arguments.done"]
        assert "".join(d.arguments for d in done) == args == "".join(fc.arguments for fc in calls)
        final = events[-1][1].response
        assert [(o.name, o.arguments) for o in final.output] == [(fc.name, fc.arguments) for fc in calls]
        assert all(o.status == "completed" for o in final.output)


@pytest.mark.default_model
def test_responses_function_call_items_round_trip_like_chat(tool_server):
    c = tool_server.client()
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                             "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    chat = c.chat.completions.create(
        model=DEFAULT, tools=[WEATHER], tool_choice="none", max_tokens=1, temperature=0,
        messages=[*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}])
    items = [{"role": "user", "content": ASK[0]["content"]},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather",
              "arguments": call["function"]["arguments"]},
             {"type": "function_call_output", "call_id": "call_1", "output": "18 C and sunny"}]
    r = c.responses.create(model=DEFAULT, input=items, tools=[FLAT_WEATHER], tool_choice="none",
                           max_output_tokens=1, temperature=0, parallel_tool_calls=False)
    assert r.usage.input_tokens == chat.usage.prompt_tokens  # the same conversation reached the template
    assert (r.tool_choice, r.parallel_tool_calls, [t.name for t in r.tools]) == ("none", False, ["get_weather"])
    bare = c.responses.create(model=DEFAULT, input=items[:1], tools=[FLAT_WEATHER], tool_choice="none",
                              max_output_tokens=1, temperature=0)
    assert bare.usage.input_tokens < r.usage.input_tokens


@pytest.mark.parametrize("body,param", [
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools"),
    ({"tools": [WEATHER]}, "tools"),  # chat's nested shape
    ({"tools": [FLAT_WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"tools": [FLAT_WEATHER], "tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "name": "f", "paramters": {"type": "object"}}]}, "tools"),  # a typo: not dropped
    ({"tools": [{"type": "function", "name": "f", "strict": "true"}]}, "tools"),  # a string: not a boolean
])
def test_responses_bad_tools_are_400s(server, body, param):
    r = server.post("/v1/responses", {"model": MODEL, "input": "hi", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_responses_strict_must_be_a_boolean_named_in_the_flat_shape(server):
    r = server.post("/v1/responses", {"model": MODEL, "input": "hi", "tools": [
        {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": "true"}]})
    assert r.status_code == 400 and "tools[0].strict must be a boolean" in r.json()["error"]["message"], r.text
