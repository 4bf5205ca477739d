"""`pagoda bench serve` timing against a fake OpenAI server whose tokens decode to empty strings.

The regression: chunks that carried tokens but no text were not counted, so TTFT read 0.00 ms
and the inter-token latencies spanned many tokens. Here an in-process SSE server streams
tokens with empty text, after a known delay before the first one; the assertions are causal
(a token cannot arrive before the server sent it) or exact identities of the accounting, never
wall-clock limits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from pagoda.benchmarks.serve import RequestResult, add_bench_serve_args, run_bench_serve
from pagoda.benchmarks.stream_load import burst_chunks, load_figures
from pagoda.benchmarks.stream_timing import TokenTimeline, UsageCursor, chunk_tokens

FIRST_DELAY = 0.05  # seconds the server waits before the first token
GAP = 0.005  # seconds between token chunks


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _events(mode: str, chat: bool, n: int, continuous: bool) -> AsyncIterator[str]:
    """The chunks of one request. ``mode`` (the request's model name) picks the server's behaviour:
    empty: one chunk per token, empty text; pairs: two tokens per chunk; bundled: every token in one
    final chunk (as a server that holds back empty text); silent: no token at all."""
    def choice(text: str, finish: str | None) -> dict:
        if chat:
            return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        return {"index": 0, "text": text, "finish_reason": finish}

    def chunk(ch: dict, done_tokens: int) -> str:
        obj: dict = {"id": "x", "object": "chunk", "choices": [ch]}
        if continuous:
            obj["usage"] = {"prompt_tokens": 3, "completion_tokens": done_tokens, "total_tokens": 3 + done_tokens}
        return _sse(obj)

    if chat:  # the role announcement comes at once, before any token
        yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}, 0)
    await asyncio.sleep(FIRST_DELAY)
    produced = 0 if mode == "silent" else n
    if mode in ("bundled", "silent"):
        yield chunk(choice("", "length" if produced else "stop"), produced)
    else:
        step = 2 if mode == "pairs" else 1
        for done in range(step, n + step, step):
            done = min(done, n)
            yield chunk(choice("", "length" if done == n else None), done)
            await asyncio.sleep(GAP)
    usage = {"prompt_tokens": 3, "completion_tokens": produced, "total_tokens": 3 + produced}
    yield _sse({"id": "x", "object": "chunk", "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _app() -> FastAPI:
    app = FastAPI()

    async def handle(request: Request, chat: bool) -> StreamingResponse:
        body = await request.json()
        opts = body.get("stream_options") or {}
        mode = body["model"]
        continuous = bool(opts.get("continuous_usage_stats")) and mode != "nousage"
        mode = "empty" if mode == "nousage" else mode
        return StreamingResponse(_events(mode, chat, int(body["max_tokens"]), continuous),
                                 media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        return await handle(request, chat=True)

    return app


@pytest.fixture(scope="module")
def fake_server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join()


def _run(url: str, tmp_path, mode: str, *extra: str) -> dict:
    p = add_bench_serve_args(argparse.ArgumentParser())
    args = p.parse_args(["--base-url", url, "--model", mode, "--num-prompts", "3", "--random-input-len", "8",
                         "--random-output-len", "5", "--max-concurrency", "3", "--save-result", "--result-dir",
                         str(tmp_path), "--result-filename", "r.json", *extra])
    res = run_bench_serve(args)
    assert json.loads((tmp_path / "r.json").read_text())["completed"] == res["completed"]
    return res


def _latency_rows(out: str) -> list[str]:
    return [line.rsplit(None, 1)[-1] for line in out.splitlines() if "(ms):" in line]


@pytest.mark.parametrize("mode", ["empty", "nousage"])
@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_tokens_with_empty_text_are_timed_per_token(fake_server, tmp_path, capsys, mode, endpoint):
    res = _run(fake_server, tmp_path, mode, "--endpoint", endpoint)
    assert res["completed"] == 3 and res["total_output_tokens"] == 15
    assert res["requests_without_tokens"] == 0 and res["requests_in_one_chunk"] == 0
    for ttft, itl, e2el, tpot in zip(res["ttfts"], res["itls"], res["e2els"], res["tpots"], strict=True):
        # the server sent nothing that carries a token before FIRST_DELAY (the chat role chunk carries none)
        assert ttft >= FIRST_DELAY
        assert len(itl) == 4  # one gap per token after the first
        assert sum(itl) == pytest.approx(e2el - ttft, abs=1e-9)
        assert tpot == pytest.approx((e2el - ttft) / 4) and tpot == pytest.approx(sum(itl) / len(itl))
    assert res["median_ttft_ms"] >= 1000 * FIRST_DELAY
    rows = _latency_rows(capsys.readouterr().out)
    assert rows and all(r != "n/a" and float(r) > 0 for r in rows)


def test_chunk_of_several_tokens_adds_one_gap_per_token(fake_server, tmp_path, capsys):
    res = _run(fake_server, tmp_path, "pairs")
    # chunks of 2, 2, 1 tokens: 2 chunks after the first per request, one of them of several tokens
    assert res["token_chunks"] == 6 and res["multi_token_chunks"] == 3
    assert 0 <= res["burst_chunks"] <= res["token_chunks"]
    assert res["itl_p99_over_p50"] == pytest.approx(res["itl_p99_ms"] / res["itl_p50_ms"])
    assert res["ttft_p50_ms"] == pytest.approx(res["median_ttft_ms"])
    # no server pid: no CPU figures, printed as n/a
    assert res["server_pid"] is None and res["api_server_cpu_ms_per_output_token"] is None
    assert res["client_cpu_share"] >= 0
    out = capsys.readouterr().out
    assert "Streaming under load" in out and "API server CPU ms per output token:                      n/a" in out
    assert res["total_output_tokens"] == 15
    for ttft, itl, e2el in zip(res["ttfts"], res["itls"], res["e2els"], strict=True):
        # chunks of 2, 2, 1 tokens: the first chunk's second token has no gap; then 2 + 1 gaps
        assert ttft >= FIRST_DELAY and len(itl) == 3 and itl[0] == itl[1]
        assert sum(itl) == pytest.approx(e2el - ttft, abs=1e-9)


def test_tokens_in_one_chunk_have_no_tpot_and_none_prints_zero(fake_server, tmp_path, capsys):
    res = _run(fake_server, tmp_path, "bundled")
    assert res["completed"] == 3 and res["total_output_tokens"] == 15
    assert all(t >= FIRST_DELAY for t in res["ttfts"]) and res["requests_in_one_chunk"] == 3
    assert res["median_tpot_ms"] is None and res["median_itl_ms"] is None and all(not x for x in res["itls"])
    out = capsys.readouterr().out
    assert "Requests with all tokens in 1 chunk (no TPOT):" in out
    rows = _latency_rows(out)
    assert "n/a" in rows and all(r == "n/a" or float(r) > 0 for r in rows)


def test_request_without_tokens_is_left_out_of_latencies(fake_server, tmp_path, capsys):
    res = _run(fake_server, tmp_path, "silent")
    assert res["completed"] == 3 and res["requests_without_tokens"] == 3 and res["total_output_tokens"] == 0
    assert res["ttfts"] == [None] * 3 and res["median_ttft_ms"] is None and res["median_e2el_ms"] is None
    out = capsys.readouterr().out
    assert "Requests with no token (no latencies):" in out
    assert all(r == "n/a" for r in _latency_rows(out))


def test_chunk_token_counting_rules():
    cur = UsageCursor()
    role = {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
    assert chunk_tokens(role, True, cur) == 0  # the role announcement carries no token
    assert chunk_tokens({"choices": [{"delta": {"content": ""}}]}, True, cur) == 1  # vLLM's rule: a chunk a token
    lp = {"choices": [{"text": "ab", "logprobs": {"tokens": ["a", "b"]}}]}
    assert chunk_tokens(lp, False, UsageCursor()) == 2
    cur = UsageCursor()
    assert chunk_tokens({"choices": [{"text": ""}], "usage": {"completion_tokens": 3}}, False, cur) == 3
    assert chunk_tokens({"choices": [{"text": "x"}], "usage": {"completion_tokens": 4}}, False, cur) == 1
    assert chunk_tokens({"choices": [], "usage": {"completion_tokens": 4}}, False, cur) == 0  # the final report
    tl = TokenTimeline(start=10.0)
    tl.add(10.5, 0)
    assert tl.ttft is None and tl.latency is None
    tl.add(11.0, 1)
    tl.add(11.6, 3)
    assert tl.ttft == 1.0 and tl.latency == pytest.approx(1.6) and tl.itl == pytest.approx([0.2, 0.2, 0.2])


def test_burst_chunks_are_measured_against_each_requests_tpot():
    tl = TokenTimeline(start=0.0)
    for now, k in ((1.0, 1), (1.1, 1), (1.101, 1), (1.2, 1), (1.201, 2), (1.3, 0)):
        tl.add(now, k)
    assert [g for g, _ in tl.chunks] == pytest.approx([0.1, 0.001, 0.099, 0.001])
    assert [k for _, k in tl.chunks] == [1, 1, 1, 2]
    r = RequestResult(ok=True, output_tokens=6, ttft=tl.ttft, latency=tl.latency, itl=tl.itl, chunks=tl.chunks)
    assert r.tpot == pytest.approx(0.201 / 5)
    # gaps below 0.25 x 40.2 ms: the two 1-ms gaps; a slower request's gaps are not bursts at its own pace
    assert burst_chunks(tl.chunks, r.tpot, 0.25) == 2 and burst_chunks(tl.chunks, None, 0.25) == 0
    slow = RequestResult(ok=True, output_tokens=3, ttft=1.0, latency=3.0, itl=[1.0, 1.0], chunks=[(1.0, 1), (1.0, 1)])
    fig = load_figures([r, slow, RequestResult(ok=False)], r.itl + slow.itl, 0.25)
    assert fig["token_chunks"] == 6 and fig["burst_chunks"] == 2 and fig["burst_chunk_share"] == pytest.approx(2 / 6)
    assert fig["multi_token_chunks"] == 1 and fig["ttft_p50_ms"] == pytest.approx(1000.0)


def test_serve_cmd_starts_measures_and_stops_the_server(tmp_path, capsys):
    """--serve-cmd: the bench starts the (fake) server, reads its CPU time, and stops it afterwards; the fake
    has no engine-core child, so that figure is n/a."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    here = str(Path(__file__).resolve().parent)
    code = (f"import sys; sys.path.insert(0, {here!r}); import uvicorn, test_bench_serve_timing as t; "
            f"uvicorn.run(t._app(), host='127.0.0.1', port={port}, log_level='error')")
    res = _run(f"http://127.0.0.1:{port}", tmp_path, "empty", "--serve-cmd", shlex.join([sys.executable, "-c", code]),
               "--serve-log", str(tmp_path / "serve.log"))
    pid = res["server_pid"]
    assert pid and not Path(f"/proc/{pid}").exists()  # stopped and reaped
    assert res["completed"] == 3 and res["api_server_cpu_s"] >= 0 and res["engine_core_cpu_s"] is None
    assert res["api_server_cpu_ms_per_output_token"] == pytest.approx(1000 * res["api_server_cpu_s"] / 15)
    assert f"pid {pid}" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="exited with 3"):
        _run("http://127.0.0.1:9", tmp_path, "empty", "--serve-cmd", shlex.join([sys.executable, "-c", "exit(3)"]))


def test_serve_cmd_refuses_a_port_already_listening(tmp_path):
    """A server left on the port (an earlier run's) would answer the health check and be measured: refused before
    the command starts (its marker file is never written)."""
    marker = tmp_path / "started"
    cmd = shlex.join([sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ValueError, match="already listens"):
            _run(f"http://127.0.0.1:{port}", tmp_path, "empty", "--serve-cmd", cmd)
    assert not marker.exists()


def test_sharegpt_lengths_are_bench_throughputs():
    from pagoda.benchmarks.datasets import workload_from_args
    from pagoda.benchmarks.serve import _sharegpt_lengths

    args = add_bench_serve_args(argparse.ArgumentParser()).parse_args(
        ["--dataset-name", "sharegpt", "--num-prompts", "40", "--seed", "5"])
    offline = workload_from_args(argparse.Namespace(dataset="sharegpt", num_prompts=40, seed=5), 128256)
    assert _sharegpt_lengths(args) == [(len(r.prompt_token_ids), r.output_len) for r in offline]
