"""``pagoda run-batch`` (vLLM's batch runner, OpenAI's Batch API file format): each line's result equals what the
offline engine gives for the same request, in the input's order; a request's own fault is its line's error while
the others run; a malformed file is refused, naming its lines, before anything loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pooling_models import build_pooling_model

from pagoda.entrypoints.run_batch import BatchFileError, read_batch_file

CHAT = [{"role": "user", "content": "The quick brown"}]


def _line(custom_id: str, url: str, body: dict) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def _run(model: Path, lines: list[str], tmp_path: Path, *extra: str,
         max_model_len: int = 128) -> tuple[subprocess.CompletedProcess, Path]:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pagoda.entrypoints.cli", "--log-level", "WARNING", "run-batch",
                           "-i", str(src), "-o", str(out), "--model", str(model), "--dtype", "float32",
                           "--max-model-len", str(max_model_len), *extra],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, out


def test_results_equal_the_offline_engine_in_input_order(tiny, tmp_path):
    from pagoda import SamplingParams

    model = tiny.path("llama")
    lines = [
        _line("chat", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 8, "temperature": 0}),
        _line("cmpl", "/v1/completions", {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}),
        _line("stream", "/v1/chat/completions", {"messages": CHAT, "stream": True}),
        _line("typo", "/v1/chat/completions", {"messages": CHAT, "max_tokenz": 3}),
        _line("long", "/v1/completions", {"prompt": "hi", "max_tokens": 4000}),
        _line("embed", "/v1/embeddings", {"input": "hi"}),
        _line("cmpl2", "/v1/completions", {"prompt": "Large language models", "max_tokens": 6, "temperature": 0}),
    ]
    proc, out = _run(model, lines, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == ["chat", "cmpl", "stream", "typo", "long", "embed", "cmpl2"]
    assert len({r["id"] for r in rows}) == len(rows)
    by = {r["custom_id"]: r for r in rows}

    llm = tiny.llm("llama", max_model_len=128)
    greedy = SamplingParams(temperature=0, max_tokens=8)
    want_chat = llm.chat(CHAT, greedy, use_tqdm=False)[0].outputs[0]
    body = by["chat"]["response"]["body"]
    assert by["chat"]["response"]["status_code"] == 200 and by["chat"]["error"] is None
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == want_chat.text
    assert body["usage"]["completion_tokens"] == len(want_chat.token_ids)
    for cid, prompt, n in (("cmpl", "The quick brown fox", 8), ("cmpl2", "Large language models", 6)):
        want = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=n), use_tqdm=False)[0].outputs[0]
        body = by[cid]["response"]["body"]
        assert body["choices"][0]["text"] == want.text and body["choices"][0]["finish_reason"] == "length", cid

    def error_of(cid: str) -> tuple[int, dict]:
        r = by[cid]
        assert r["response"]["body"] is None
        return r["response"]["status_code"], r["error"]["error"]

    assert error_of("stream")[0] == 400 and error_of("stream")[1]["param"] == "stream"
    status, err = error_of("typo")
    assert status == 400 and "max_tokenz" in err["message"]
    status, err = error_of("long")
    assert status == 400 and "maximum context length is 128" in err["message"]
    status, err = error_of("embed")
    assert status == 400 and "pooling" in err["message"]


def test_embeddings_equal_the_offline_engine(tmp_path):
    model = build_pooling_model(tmp_path / "bert", "bert")
    inputs = ["hello world", "the capital of France"]
    proc, out = _run(model, [_line(f"e{i}", "/v1/embeddings", {"input": t}) for i, t in enumerate(inputs)],
                     tmp_path, "--runner", "pooling", max_model_len=64)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    from pagoda import LLM

    llm = LLM(str(model), runner="pooling", dtype="float32", max_model_len=64)
    try:
        want = [o.outputs.embedding for o in llm.embed(inputs, use_tqdm=False)]
    finally:
        llm.shutdown()
    for row, emb in zip(rows, want, strict=True):
        got = row["response"]["body"]["data"][0]["embedding"]
        assert got == pytest.approx(list(emb), abs=1e-5)


@pytest.mark.parametrize("bad, fault", [
    ("not json", "line 2: not valid JSON"),
    (json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}),
     "custom_id 'a' repeats line 1's"),
    (json.dumps({"custom_id": "b", "method": "GET", "url": "/v1/completions", "body": {}}), "method must be"),
    (json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/images", "body": {}}), "url '/v1/images' is not"),
    (json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": "x"}), "body must be"),
    (json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {}, "x": 1}),
     "unknown field(s) x"),
])
def test_a_malformed_file_is_refused_naming_the_line(tmp_path, bad, fault):
    src = tmp_path / "in.jsonl"
    src.write_text(_line("a", "/v1/completions", {"prompt": "hi"}) + "\n" + bad + "\n")
    with pytest.raises(BatchFileError, match="line 2") as e:
        read_batch_file(str(src))
    assert fault in str(e.value)


def test_the_cli_refuses_a_malformed_file_before_loading_the_model(tmp_path):
    """A model that does not exist is never looked at: the file's fault comes first, the output is not written."""
    proc, out = _run(tmp_path / "no-such-model", ["{"], tmp_path)
    assert proc.returncode != 0
    assert "line 1: not valid JSON" in proc.stderr and "no-such-model" not in proc.stderr
    assert not out.exists()
