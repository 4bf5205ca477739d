"""The server asks the engine for only the final output of an unstreamed request (``output_kind`` FINAL_ONLY, as
vLLM's ``to_sampling_params``), and for every step's output of a streamed one; the answers are the same either way."""

from __future__ import annotations

import json
import time

import pytest

from pagoda.sampling_params import RequestOutputKind


@pytest.fixture(scope="module")
def app_client(tiny_model_dir):
    """An in-process app on the tiny model (its lifespan starts the engine) and the params each request queued."""
    from fastapi.testclient import TestClient

    from pagoda.engine.async_llm import AsyncLLM
    from pagoda.entrypoints.cli import build_parser
    from pagoda.entrypoints.openai.api_server import build_app

    seen: list = []
    original = AsyncLLM.add_request

    def recording(self, request_id, prompt, params=None, *args, **kwargs):
        seen.append(params)
        return original(self, request_id, prompt, params, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setattr(AsyncLLM, "add_request", recording)
        args = build_parser().parse_args(["serve", str(tiny_model_dir), "--kv-cache-memory-bytes", "32M"])
        with TestClient(build_app(args)) as client:
            deadline = time.monotonic() + 300  # the engine loads in the background (a generous cap, not a figure)
            while client.get("/health").status_code != 200:
                assert time.monotonic() < deadline, "the in-process server never became ready"
                time.sleep(0.2)
            yield client, seen


def _sse_texts(body: str, key) -> str:
    out = []
    for line in body.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(key(json.loads(line[6:])))
    return "".join(t for t in out if t)


CASES = [
    ("/v1/completions", {"prompt": "The sky is", "max_tokens": 12, "temperature": 0, "ignore_eos": True},
     lambda r: r["choices"][0]["text"],
     lambda c: c["choices"][0]["text"] if c.get("choices") else ""),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "temperature": 0,
                              "ignore_eos": True},
     lambda r: r["choices"][0]["message"]["content"],
     lambda c: (c["choices"][0]["delta"].get("content") or "") if c.get("choices") else ""),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 12, "temperature": 0},
     lambda r: r["output"][0]["content"][0]["text"],
     lambda c: c.get("delta", "") if c.get("type") == "response.output_text.delta" else ""),
]


@pytest.mark.parametrize("route,body,full_text,chunk_text", CASES, ids=[c[0] for c in CASES])
def test_unstreamed_requests_ask_for_the_final_output_only(app_client, route, body, full_text, chunk_text):
    client, seen = app_client
    seen.clear()
    r = client.post(route, json=body)
    assert r.status_code == 200, r.text
    assert [p.output_kind for p in seen] == [RequestOutputKind.FINAL_ONLY]
    text = full_text(r.json())
    seen.clear()
    s = client.post(route, json={**body, "stream": True})
    assert s.status_code == 200, s.text
    assert [p.output_kind for p in seen] == [RequestOutputKind.CUMULATIVE]
    assert _sse_texts(s.text, chunk_text) == text
    assert text
