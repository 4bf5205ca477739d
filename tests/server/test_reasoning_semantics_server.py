"""Reasoning output and the chat template through the server and the official client, on the scripted thinking
model (tests/reasoning_model.py: any token -> ``<think>}{]</think>]</think>]...``) behind
``--reasoning-parser qwen3``.

* A prompt that already closed the thinking (``enable_thinking: false``, or a tool loop whose earlier assistant
  turn left ``</think>`` as the prompt's last reasoning tag) and an output that opens ``<think>`` anyway: the new
  thinking is ``reasoning``, streamed exactly as returned (it used to stream as ``content`` first).
* An assistant message's ``reasoning`` (vLLM's current name, the one the answers carry) reaches the chat
  template as ``reasoning_content`` too, as vLLM passes it, so templates that read that name (Qwen3's) keep the
  thinking a client sends back.
"""

from __future__ import annotations

import httpx
import pytest
from reasoning_model import REASONING, build_thinking_model
from server_utils import MODEL, RemoteServer


@pytest.fixture(scope="module")
def think_server(tmp_path_factory):
    path = build_thinking_model(tmp_path_factory.mktemp("thinking") / "model")
    srv = RemoteServer(str(path), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "32M",
                                   "--reasoning-parser", "qwen3", "--trust-request-chat-template"])
    yield srv
    srv.stop()


def _streamed(chunks) -> tuple[str, str]:
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    return ("".join((d.model_extra or {}).get("reasoning") or "" for d in deltas),
            "".join(d.content or "" for d in deltas))


TOOL_LOOP = [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": "<think>Ask the tool.</think>Checking."},
             {"role": "user", "content": "The tool says 18 C."}]


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "Where?"}], "extra_body": {"chat_template_kwargs": {
        "enable_thinking": False}}},
    {"messages": TOOL_LOOP},
], ids=["enable_thinking_false", "earlier_turn_closed"])
def test_new_thinking_after_a_closed_prompt_streams_as_returned(think_server, body):
    c = think_server.client()
    req = {"model": MODEL, "max_tokens": 6, "temperature": 0, **body}
    m = c.chat.completions.create(**req).choices[0].message
    assert (m.model_extra["reasoning"], m.content) == (REASONING, "]")
    assert m.model_extra["reasoning_content"] == REASONING
    assert _streamed(c.chat.completions.create(**req, stream=True)) == (REASONING, "]")
    cut = c.chat.completions.create(**{**req, "max_tokens": 3})  # cut inside the new thinking
    assert (cut.choices[0].message.model_extra["reasoning"], cut.choices[0].message.content) == ("}{", None)
    assert cut.choices[0].finish_reason == "length"


READS_REASONING = ("{% for m in messages %}[{{ m.role }}|{{ m.content }}|{{ m.reasoning_content or '' }}]"
                   "{% endfor %}")


def test_reasoning_sent_back_reaches_the_template(think_server):
    c = think_server.client()

    def prompt_ids(assistant: dict) -> list[int]:
        r = c.chat.completions.create(
            model=MODEL, max_tokens=1, temperature=0,
            messages=[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", **assistant},
                      {"role": "user", "content": "Q2"}],
            extra_body={"chat_template": READS_REASONING, "return_token_ids": True})
        return r.model_extra["prompt_token_ids"]

    tok_said = httpx.post(think_server.url + "/tokenize", json={
        "model": MODEL, "prompt": "[assistant|A|Think hard.]", "add_special_tokens": False}).json()["tokens"]
    with_reasoning = prompt_ids({"reasoning": "Think hard."})
    assert with_reasoning == prompt_ids({"reasoning_content": "Think hard."})
    assert with_reasoning != prompt_ids({})
    assert any(with_reasoning[i:i + len(tok_said)] == tok_said for i in range(len(with_reasoning)))
