"""/v1/responses input and fields as a vLLM user sends them, each checked against the same request on
/v1/chat/completions (the route's reference: both render the chat template and sample with chat's rules).

* text parts of a message are joined as chat joins its text parts (vLLM's rule), not glued together;
* an input ending with a cut-off assistant message (``status`` ``in_progress`` / ``incomplete``) is continued, as
  vLLM does (chat's ``continue_final_message``); a cut-off reasoning item there is a 400 naming ``input``;
* ``text`` without ``format`` is plain text (OpenAI's default), not a 400;
* an item or content part pagoda does not read is a 400 naming it; null keys (an SDK object dumped whole) pass;
* vLLM's extra fields of the route (``seed``, ``top_k``, ``stop``, ...) are honoured as chat honours them.
"""

from __future__ import annotations

import openai
import pytest
from server_utils import MODEL

USER = {"role": "user", "content": "Tell me about the sea."}


def test_responses_text_parts_join_as_chat_parts(server):
    client = server.client()
    parts = ["First line.", "Second line."]
    r = client.responses.create(model=MODEL, max_output_tokens=5, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": t} for t in parts]}])
    chat = client.chat.completions.create(model=MODEL, max_tokens=5, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": t} for t in parts]}])
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.output_text == chat.choices[0].message.content
    # and so as the joined string (newlines, as vLLM joins parts)
    joined = client.chat.completions.create(model=MODEL, max_tokens=5, temperature=0, messages=[
        {"role": "user", "content": "\n".join(parts)}])
    assert joined.usage.prompt_tokens == r.usage.input_tokens


@pytest.mark.parametrize("status", ["incomplete", "in_progress"])
def test_responses_continue_a_cut_off_assistant_message(server, status):
    client = server.client()
    partial = {"type": "message", "role": "assistant", "status": status,
               "content": [{"type": "output_text", "text": "The sea is"}]}
    r = client.responses.create(model=MODEL, input=[USER, partial], max_output_tokens=6, temperature=0)
    chat = client.chat.completions.create(
        model=MODEL, max_tokens=6, temperature=0,
        messages=[USER, {"role": "assistant", "content": "The sea is"}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False})
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.output_text == chat.choices[0].message.content


def test_responses_completed_assistant_message_gets_a_new_turn(server):
    client = server.client()
    done = {"type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "The sea is"}]}
    r = client.responses.create(model=MODEL, input=[USER, done], max_output_tokens=6, temperature=0)
    chat = client.chat.completions.create(model=MODEL, max_tokens=6, temperature=0,
                                          messages=[USER, {"role": "assistant", "content": "The sea is"}])
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.output_text == chat.choices[0].message.content


def test_responses_cut_off_reasoning_item_last_is_400(server):
    r = server.post("/v1/responses", {"model": MODEL, "input": [
        USER, {"type": "reasoning", "id": "rs_1", "summary": [], "status": "incomplete"}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input" and "reasoning" in err["message"] and "incomplete" in err["message"]


@pytest.mark.parametrize("text", [{"verbosity": "medium"}, {}, {"format": None}])
def test_responses_text_without_format_is_plain_text(server, text):
    client = server.client()
    r = client.responses.create(model=MODEL, input="hi", max_output_tokens=4, temperature=0, text=text)
    plain = client.responses.create(model=MODEL, input="hi", max_output_tokens=4, temperature=0)
    assert r.output_text == plain.output_text and r.text.format.type == "text"
    bad = server.post("/v1/responses", {"model": MODEL, "input": "hi", "text": {"verbosity": "low"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "text", bad.text
    assert "verbosity" in bad.json()["error"]["message"]


@pytest.mark.parametrize("item,named", [
    ({"type": "item_reference", "id": "msg_1"}, "'item_reference'"),
    ({"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}, "'input_image'"),
    ({"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}, "'input_file'"),
    ({"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "x"}]},
     "'input_image'"),
])
def test_responses_unread_items_and_parts_are_named(server, item, named):
    r = server.post("/v1/responses", {"model": MODEL, "input": [USER, item]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input" and named in err["message"] and "item 1" in err["message"], err
    assert "union" not in err["message"]  # one reason, not every union member's


def test_responses_output_sent_back_whole_with_nulls(server):
    """``[o.model_dump() for o in resp.output]`` sends the SDK's unset fields as nulls: they ask for nothing."""
    client = server.client()
    first = client.responses.create(model=MODEL, input=[USER], max_output_tokens=3, temperature=0)
    follow = {"role": "user", "content": "And then?"}
    whole = [USER, *(o.model_dump() for o in first.output), follow]
    assert any(v is None for v in whole[1].values())
    lean = [USER, *(o.model_dump(exclude_none=True) for o in first.output), follow]
    a = client.responses.create(model=MODEL, input=whole, max_output_tokens=4, temperature=0)
    b = client.responses.create(model=MODEL, input=lean, max_output_tokens=4, temperature=0)
    assert a.output_text == b.output_text and a.usage.input_tokens == b.usage.input_tokens


def test_responses_vllm_sampling_extras_as_chat(server):
    client = server.client()
    chat = client.chat.completions.create(model=MODEL, messages=[USER], max_tokens=8, seed=7)
    for stream in (False, True):
        if stream:
            events = list(client.responses.create(model=MODEL, input=[USER], max_output_tokens=8, stream=True,
                                                  extra_body={"seed": 7}))
            text = events[-1].response.output_text
        else:
            text = client.responses.create(model=MODEL, input=[USER], max_output_tokens=8,
                                           extra_body={"seed": 7}).output_text
        assert text == chat.choices[0].message.content
    greedy = client.chat.completions.create(model=MODEL, messages=[USER], max_tokens=8, temperature=0)
    g = greedy.choices[0].message.content
    r = client.responses.create(model=MODEL, input=[USER], max_output_tokens=8, extra_body={"top_k": 1})
    assert r.output_text == g
    stop = g[2:4]
    assert stop
    kw = {"stop": [stop], "include_stop_str_in_output": True, "repetition_penalty": 1.3, "ignore_eos": True,
          "skip_special_tokens": False, "logit_bias": {"5": 2.0}, "cache_salt": "s1"}
    r = client.responses.create(model=MODEL, input=[USER], max_output_tokens=8, temperature=0, extra_body=kw)
    c = client.chat.completions.create(model=MODEL, messages=[USER], max_tokens=8, temperature=0, extra_body=kw)
    assert r.output_text == c.choices[0].message.content
    assert r.usage.output_tokens == c.usage.completion_tokens
    assert (r.status == "completed") == (c.choices[0].finish_reason == "stop")


@pytest.mark.parametrize("field,value", [("priority", 1), ("cache_salt", ""), ("repetition_penalty", -1.0),
                                         ("top_k", -5), ("seed", "x")])
def test_responses_vllm_extras_bad_values_are_400s(server, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().responses.create(model=MODEL, input="hi", max_output_tokens=2, extra_body={field: value})
    assert e.value.body["param"] == field and field in e.value.body["message"], e.value.body
    assert "validation error for" not in e.value.body["message"]


def test_responses_stream_options_without_obfuscation_is_neutral(server):
    """OpenAI's Responses ``stream_options`` holds only ``include_obfuscation``: false (or {}) asks for nothing
    (no padding is ever sent), as chat takes it; true is a 400 naming ``stream_options``."""
    client = server.client()
    for opts in ({"include_obfuscation": False}, {}):
        events = list(client.responses.create(model=MODEL, input="hi", max_output_tokens=3, temperature=0,
                                              stream=True, stream_options=opts))
        assert events[-1].type == "response.completed"
        assert all(getattr(e, "obfuscation", None) is None for e in events)
    bad = server.post("/v1/responses", {"model": MODEL, "input": "hi", "stream": True,
                                        "stream_options": {"include_obfuscation": True}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream_options", bad.text
