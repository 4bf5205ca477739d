"""HTTP semantics a client switching from vLLM relies on: completions' ``echo`` with ``max_tokens: 0`` and
``max_tokens: null``, ``stream_options``' defaults and keys, the ``X-Request-Id`` header as the request id, and
/v1/models' ``root`` (each against vLLM's behaviour; logprobs against HF)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from server_utils import MODEL, RemoteServer

PROMPT = "Paris is the capital of"


def sse_events(resp) -> list:
    return [json.loads(line[6:]) for line in resp.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


@pytest.fixture(scope="module")
def hf_prompt_logprobs(tiny_model_dir):
    """token ids -> HF's log-probability of each prompt token after the first (fp32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32).eval()

    def run(ids: list[int]) -> list[float]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    return run


# ------------------------------------------------------------------ echo with max_tokens 0
def test_echo_with_max_tokens_zero_scores_the_prompt(server, hf_prompt_logprobs):
    """OpenAI's and vLLM's way to score a text: the prompt comes back with its logprobs, nothing generated."""
    ids = server.post("/tokenize", {"prompt": PROMPT}).json()["tokens"]
    r = server.post("/v1/completions", {"model": MODEL, "prompt": PROMPT, "echo": True, "max_tokens": 0,
                                        "logprobs": 1, "return_token_ids": True})
    assert r.status_code == 200, r.text
    body = r.json()
    ch = body["choices"][0]
    assert ch["text"] == PROMPT and ch["finish_reason"] == "length" and ch["stop_reason"] is None
    assert ch["token_ids"] == [] and ch["prompt_token_ids"] == ids
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids),
                             "prompt_tokens_details": None}
    lp = ch["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == len(ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(hf_prompt_logprobs(ids), abs=2e-3)
    assert "".join(lp["tokens"]) == PROMPT and lp["text_offset"][0] == 0

    # streamed: the same prompt, logprobs and usage
    r = server.post("/v1/completions", {"model": MODEL, "prompt": PROMPT, "echo": True, "max_tokens": 0,
                                        "logprobs": 1, "stream": True, "stream_options": {"include_usage": True}})
    events = sse_events(r)
    choices = [c for e in events for c in e["choices"]]
    assert "".join(c["text"] for c in choices) == PROMPT
    assert [c["finish_reason"] for c in choices][-1] == "length"
    streamed = [x for c in choices if c["logprobs"] for x in c["logprobs"]["token_logprobs"]]
    assert streamed == lp["token_logprobs"]
    assert events[-1]["usage"]["completion_tokens"] == 0 and events[-1]["usage"]["prompt_tokens"] == len(ids)


def test_echo_with_max_tokens_zero_for_several_prompts_and_n(server):
    prompts = [PROMPT, "The quick brown fox"]
    r = server.post("/v1/completions", {"model": MODEL, "prompt": prompts, "echo": True, "max_tokens": 0, "n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert all(c["logprobs"] is None for c in body["choices"]) and body["usage"]["completion_tokens"] == 0


def test_max_tokens_zero_without_echo_stays_a_400(server):
    r = server.post("/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


# ------------------------------------------------------------------------- max_tokens null
def test_completion_max_tokens_null_may_use_the_rest_of_the_context(server):
    """vLLM: an explicit ``max_tokens: null`` is the room left in the context (absent: 16)."""
    max_len = server.get("/v1/models").json()["data"][0]["max_model_len"]
    prompt = [5] * (max_len - 40)
    base = {"model": MODEL, "prompt": prompt, "temperature": 0, "ignore_eos": True}
    r = server.post("/v1/completions", {**base, "max_tokens": None})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 40 and r.json()["choices"][0]["finish_reason"] == "length"
    assert server.post("/v1/completions", base).json()["usage"]["completion_tokens"] == 16


# --------------------------------------------------------------------------- stream_options
def _stream(server, path: str, options) -> list:
    body = {"model": MODEL, "max_tokens": 3, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": options}
    body.update({"prompt": PROMPT} if path == "/v1/completions" else
                {"messages": [{"role": "user", "content": "hi"}]})
    r = server.post(path, body)
    assert r.status_code == 200, r.text
    return sse_events(r)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_stream_options_include_usage_defaults_to_true(server, path):
    """vLLM's StreamOptions: include_usage is true unless set false, so continuous_usage_stats alone works."""
    events = _stream(server, path, {})
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    events = _stream(server, path, {"continuous_usage_stats": True})
    assert all(e["usage"] is not None for e in events)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    events = _stream(server, path, {"include_usage": False, "include_obfuscation": False})
    assert all(e["usage"] is None for e in events)


@pytest.mark.parametrize("options", [{"include_usag": True}, {"include_obfuscation": True}])
def test_stream_options_unknown_key_is_a_400(server, options):
    for path, body in (("/v1/completions", {"prompt": PROMPT}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        r = server.post(path, {"model": MODEL, **body, "max_tokens": 2, "stream": True, "stream_options": options})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "stream_options" and next(iter(options)) in err["message"]


# ---------------------------------------------------------------------------- X-Request-Id
def test_x_request_id_header_is_the_request_id(server):
    """vLLM's rule: the header, when sent, is the request's id (over the body's request_id)."""
    hdr = {"X-Request-Id": "trace-42"}
    r = server.post("/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 1}, headers=hdr)
    assert r.json()["id"] == "cmpl-trace-42"
    r = server.post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 1, "request_id": "body-id"}, headers={"X-Request-Id": "t2"})
    assert r.json()["id"] == "chatcmpl-t2"
    r = server.post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 1, "stream": True}, headers={"X-Request-Id": "t3"})
    assert {e["id"] for e in sse_events(r)} == {"chatcmpl-t3"}
    r = server.post("/invocations", {"model": MODEL, "prompt": PROMPT, "max_tokens": 1}, headers={"X-Request-Id": "t4"})
    assert r.json()["id"] == "cmpl-t4"
    r = server.post("/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "request_id": "own"})
    assert r.json()["id"] == "cmpl-own"


# ------------------------------------------------------------------------------- /v1/models
def test_models_root_is_the_hub_id_the_server_was_given(tiny_model_dir, tmp_path):
    """vLLM's ``root`` is ``--model`` as given: a hub id stays a hub id (``vllm bench serve`` loads the tokenizer
    from it), never the local cache folder it was resolved to."""
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snap)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    srv = RemoteServer("org/tiny", ["--download-dir", str(tmp_path / "hub"), "--served-model-name", "a", "b",
                                    "--kv-cache-memory-bytes", "16M"], env={"HF_HUB_OFFLINE": "1"})
    try:
        cards = srv.get("/v1/models").json()["data"]
    finally:
        srv.stop()
    assert [(c["id"], c["root"], c["max_model_len"]) for c in cards] == [("a", "org/tiny", 2048),
                                                                         ("b", "org/tiny", 2048)]
