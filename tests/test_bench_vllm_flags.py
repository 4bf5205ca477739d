"""Every flag of vLLM's `vllm bench serve` / `throughput` / `latency` is pagoda's (with vLLM's meaning) or refused by
name, never "unrecognized" or ignored; `bench latency`'s defaults are vLLM's; the serve flags pagoda honours reach
the requests and the saved result (a recording fake server)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from test_bench_serve_timing import _events

from pagoda.benchmarks.serve import add_bench_serve_args, resolve_args, run_bench_serve
from pagoda.entrypoints.cli import build_parser

# vLLM's flags (vllm/benchmarks/serve.py add_cli_args and datasets' add_dataset_parser; throughput.py, latency.py),
# each with a value a user would paste. The engine flags of throughput / latency are checked by the engine's tests.
VLLM_SERVE = {
    "--seed": "1", "--num-prompts": "5", "--dataset-name": "random", "--no-stream": None, "--dataset-path": "x.json",
    "--no-oversample": None, "--skip-chat-template": None, "--disable-shuffle": None, "--custom-output-len": "9",
    "--spec-bench-output-len": "9", "--spec-bench-category": "qa", "--sonnet-input-len": "9",
    "--sonnet-output-len": "9", "--sonnet-prefix-len": "9", "--sharegpt-output-len": "9",
    "--blazedit-min-distance": "0.1", "--blazedit-max-distance": "0.9", "--random-input-len": "9",
    "--random-output-len": "9", "--random-range-ratio": "0.1", "--random-prefix-len": "4", "--random-batch-size": "2",
    "--no-reranker": None, "--random-mm-base-items-per-request": "2", "--random-mm-num-mm-items-range-ratio": "0.5",
    "--random-mm-limit-mm-per-prompt": '{"image": 1}', "--random-mm-bucket-config": "{(1, 1, 1): 1.0}",
    "--hf-subset": "a", "--hf-split": "train", "--hf-name": "x/y", "--hf-output-len": "9",
    "--prefix-repetition-prefix-len": "9", "--prefix-repetition-suffix-len": "9",
    "--prefix-repetition-num-prefixes": "2", "--prefix-repetition-output-len": "9", "--label": "run",
    "--backend": "openai-chat", "--base-url": "http://h:1", "--host": "h", "--port": "1", "--endpoint":
    "/v1/completions", "--header": "x-a=1", "--max-concurrency": "4", "--model": "m", "--input-len": "9",
    "--output-len": "9", "--tokenizer": "t", "--tokenizer-mode": "mistral", "--use-beam-search": None,
    "--logprobs": "2", "--request-rate": "4", "--burstiness": "0.5", "--probe-request-rate": "1",
    "--disable-tqdm": None, "--num-warmups": "2", "--profile": None, "--save-result": None, "--save-detailed": None,
    "--append-result": None, "--metadata": "a=b", "--result-dir": "d", "--result-filename": "f.json",
    "--ignore-eos": None, "--self-timed": None, "--no-self-timed": None, "--percentile-metrics": "ttft",
    "--metric-percentiles": "99", "--goodput": "ttft:5", "--request-id-prefix": "p-", "--top-p": "0.9",
    "--top-k": "5", "--min-p": "0.1", "--temperature": "0.5", "--frequency-penalty": "0.1",
    "--presence-penalty": "0.1", "--repetition-penalty": "1.1", "--served-model-name": "s", "--lora-modules": "l",
    "--lora-assignment": "round-robin", "--ramp-up-strategy": "linear", "--ramp-up-start-rps": "1",
    "--ramp-up-end-rps": "2", "--ready-check-timeout-sec": "5", "--chat-template-kwargs": "{}", "--extra-body": "{}",
    "--skip-tokenizer-init": None, "--insecure": None, "--plot-timeline": None, "--timeline-itl-thresholds": "25,50",
    "--plot-dataset-stats": None, "--trust-remote-code": None,
}
VLLM_THROUGHPUT = {
    "--backend": "vllm", "--dataset-name": "random", "--input-len": "9", "--output-len": "9", "--n": "2",
    "--num-prompts": "5", "--hf-max-batch-size": "4", "--output-json": "o.json", "--async-engine": None,
    "--disable-frontend-multiprocessing": None, "--disable-detokenize": None, "--lora-path": "l", "--prefix-len": "4",
    "--random-prefix-len": "4", "--random-range-ratio": "0.1", "--hf-subset": "a", "--hf-split": "b",
    "--profile": None, "--prefix-repetition-prefix-len": "9", "--prefix-repetition-suffix-len": "9",
    "--prefix-repetition-num-prefixes": "2", "--prefix-repetition-output-len": "9", "--disable-tqdm": None,
}
VLLM_LATENCY = {
    "--input-len": "9", "--output-len": "9", "--batch-size": "2", "--n": "2", "--use-beam-search": None,
    "--num-iters-warmup": "1", "--num-iters": "2", "--profile": None, "--output-json": "o.json",
    "--disable-detokenize": None,
}


@functools.cache
def _parser() -> argparse.ArgumentParser:
    return build_parser()


def _parse(*argv: str) -> tuple[argparse.Namespace | None, str]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return _parser().parse_args(list(argv)), ""
    except SystemExit:
        return None, err.getvalue()


@pytest.mark.parametrize("command,flags", [("serve", VLLM_SERVE), ("throughput", VLLM_THROUGHPUT),
                                           ("latency", VLLM_LATENCY)])
def test_every_vllm_bench_flag_is_taken_or_refused_by_name(command, flags):
    taken, refused = [], []
    for flag, value in flags.items():
        args, err = _parse("bench", command, flag, *([] if value is None else [value]))
        assert "unrecognized arguments" not in err and "ambiguous option" not in err, (flag, err)
        if args is None:
            assert f"error: {flag} is a vLLM flag that pagoda does not support: " in err, (flag, err)
            refused.append(flag)
        else:
            taken.append(flag)
    # the flags users paste most are honoured, not refused
    common = {"serve": ["--header", "--served-model-name", "--top-p", "--top-k", "--random-prefix-len",
                        "--sharegpt-output-len", "--num-warmups", "--ready-check-timeout-sec", "--metadata",
                        "--append-result", "--disable-tqdm", "--logprobs", "--insecure"],
              "throughput": ["--hf-max-batch-size", "--disable-detokenize"],
              "latency": ["--n", "--disable-detokenize"]}[command]
    assert set(common) <= set(taken), set(common) - set(taken)


def test_refused_values_that_change_nothing_are_taken():
    for argv in (["throughput", "--n", "1"], ["throughput", "--prefix-len", "0"], ["serve", "--random-batch-size", "1"],
                 ["serve", "--tokenizer-mode", "auto"], ["serve", "--lora-assignment", "random"]):
        args, err = _parse("bench", *argv)
        assert args is not None, (argv, err)
    _, err = _parse("bench", "serve", "--tokenizer-mode", "mistral")
    assert "--tokenizer-mode is a vLLM flag that pagoda does not support: --tokenizer loads a Hugging Face " \
           "tokenizer (accepted value: auto, hf)." in err


def test_latency_defaults_are_vllms():
    args, _ = _parse("bench", "latency")
    assert args is not None
    assert (args.batch_size, args.input_len, args.output_len, args.n, args.num_iters_warmup, args.num_iters) == (
        [8], 32, 128, 1, 10, 30)
    assert args.enable_prefix_caching is False and args.disable_detokenize is False  # vLLM's set_defaults
    args, _ = _parse("bench", "latency", "--enable-prefix-caching")
    assert args is not None and args.enable_prefix_caching is True


def test_latency_n_runs_n_sequences_per_prompt(tmp_path):
    from test_bench_smoke import _model

    from pagoda.entrypoints.cli import main

    out = tmp_path / "lat.json"
    main(["--log-level", "WARNING", "bench", "latency", "--model", str(_model(tmp_path)), "--load-format", "dummy",
          "--batch-size", "2", "--n", "3", "--input-len", "5", "--output-len", "4", "--num-iters", "1",
          "--num-iters-warmup", "0", "--max-model-len", "64", "--output-json", str(out)])
    row = json.loads(out.read_text())
    assert row["n"] == 3 and row["output_tokens_per_s"] == pytest.approx(2 * 3 * 4 / row["e2e_s_median"])


# ------------------------------------------------------------------ bench serve: the honoured flags, end to end
def _recording_app(log: list[tuple[dict, dict]]) -> FastAPI:
    app = FastAPI()

    async def handle(request: Request, chat: bool) -> StreamingResponse:
        body = await request.json()
        log.append((dict(request.headers), body))
        return StreamingResponse(_events("empty", chat, int(body["max_tokens"]), True), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "org/listed-model", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        return await handle(request, chat=True)

    return app


@pytest.fixture(scope="module")
def recording_server() -> Iterator[tuple[str, list[tuple[dict, dict]]]]:
    log: list[tuple[dict, dict]] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_recording_app(log), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", log
    server.should_exit = True
    thread.join()


def _serve_args(*argv: str) -> argparse.Namespace:
    return add_bench_serve_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_serve_sends_vllms_request_flags(recording_server, tmp_path):
    url, log = recording_server
    log.clear()
    args = _serve_args("--base-url", url, "--num-prompts", "3", "--random-input-len", "6", "--random-output-len", "4",
                       "--header", "x-extra=1", "x-run = a=b", "--top-p", "0.9", "--top-k", "7", "--min-p", "0.05",
                       "--presence-penalty", "0.2", "--repetition-penalty", "1.1", "--logprobs", "2",
                       "--request-id-prefix", "run7-", "--num-warmups", "2", "--served-model-name", "alias",
                       "--metadata", "gpu=h100", "tp=2", "--save-result", "--result-dir", str(tmp_path))
    run_bench_serve(args)
    # the test request, 2 warm-ups, 3 timed requests
    assert len(log) == 6
    for headers, body in log:
        assert headers["x-extra"] == "1" and headers["x-run"] == "a=b"
        assert body["model"] == "alias"  # --served-model-name is the name sent
        assert (body["top_p"], body["top_k"], body["min_p"], body["presence_penalty"], body["repetition_penalty"],
                body["logprobs"]) == (0.9, 7, 0.05, 0.2, 1.1, 2)
        assert body["ignore_eos"] is True  # vLLM: the random dataset always runs to its output length
        assert "frequency_penalty" not in body  # a flag not given is not sent
    assert sorted(h["x-request-id"] for h, _ in log[3:]) == ["run7-0", "run7-1", "run7-2"]
    # vLLM's file name: LABEL (the backend) - RATE qps - the model id's last part - date
    (saved_path,) = tmp_path.iterdir()
    assert saved_path.name.startswith("openai-infqps-listed-model-") and saved_path.suffix == ".json"
    saved = json.loads(saved_path.read_text())
    assert saved["gpu"] == "h100" and saved["tp"] == "2" and saved["model_id"] == "org/listed-model"


def test_serve_lora_modules_name_each_requests_model(recording_server):
    """vLLM's ``--lora-modules``: the timed requests name the served adapters as their model, in turn with
    ``--lora-assignment round-robin``, drawn with ``--seed`` by default (the same draw every run)."""
    from pagoda.benchmarks.serve import request_model

    url, log = recording_server
    log.clear()
    base = ["--base-url", url, "--num-prompts", "6", "--random-input-len", "4", "--random-output-len", "2",
            "--request-id-prefix", "r-", "--lora-modules", "sql", "chat"]
    run_bench_serve(_serve_args(*base, "--lora-assignment", "round-robin"))
    by_index = {int(h["x-request-id"][2:]): b["model"] for h, b in log if "x-request-id" in h}
    assert by_index == {i: ("sql", "chat")[i % 2] for i in range(6)}
    args = _serve_args(*base)
    drawn = [request_model(args, "base", i) for i in range(64)]
    assert set(drawn) == {"sql", "chat"} and drawn == [request_model(_serve_args(*base), "x", i) for i in range(64)]
    assert request_model(_serve_args("--base-url", url), "base", 3) == "base"


def test_serve_chat_logprobs_random_prefix_and_append(recording_server, tmp_path):
    url, log = recording_server
    log.clear()
    argv = ["--base-url", url, "--backend", "openai-chat", "--num-prompts", "2", "--random-input-len", "5",
            "--random-output-len", "3", "--random-prefix-len", "4", "--logprobs", "1", "--no-ignore-eos",
            "--append-result", "--result-dir", str(tmp_path), "--result-filename", "runs.json"]
    run_bench_serve(_serve_args(*argv))
    run_bench_serve(_serve_args(*argv))
    bodies = [b for _, b in log]
    assert all(b["logprobs"] is True and b["top_logprobs"] == 1 and "ignore_eos" not in b for b in bodies)
    # one fixed prefix (4 estimated tokens: the fake server has no /tokenize) before every timed prompt
    timed = [b["messages"][0]["content"].split() for b in bodies[1:3]]
    assert timed[0][:3] == timed[1][:3] and timed[0][3:] != timed[1][3:]
    docs = (tmp_path / "runs.json").read_text().split("\n")
    assert len(docs) == 2 and all(json.loads(d)["num_prompts"] == 2 for d in docs)


def test_serve_dataset_only_flags_and_bad_pairs_are_refused():
    for argv, message in (
            (["--dataset-name", "sharegpt", "--random-prefix-len", "3"],
             "--random-prefix-len shapes the random dataset only; --dataset-name sharegpt"),
            (["--sharegpt-output-len", "3"], "--sharegpt-output-len shapes the sharegpt dataset only; --dataset-name "
                                             "random"),
            (["--header", "novalue"], "--header 'novalue': give KEY=VALUE"),
            (["--metadata", "=x"], "--metadata '=x': give KEY=VALUE"),
            (["--tokenizer", "t", "--skip-tokenizer-init"], "--skip-tokenizer-init loads no tokenizer")):
        with pytest.raises(ValueError, match=message):
            resolve_args(_serve_args(*argv))
    a = _serve_args("--dataset-name", "sharegpt", "--output-len", "7")
    resolve_args(a)
    assert a.sharegpt_output_len == 7 and a.ignore_eos is False  # vLLM sets ignore_eos for random only


def test_serve_ready_check_waits_for_the_server(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log: list[tuple[dict, dict]] = []
    server = uvicorn.Server(uvicorn.Config(_recording_app(log), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=lambda: (time.sleep(1.0), server.run()), daemon=True)
    thread.start()  # the server starts listening about a second after the benchmark
    try:
        res = run_bench_serve(_serve_args("--port", str(port), "--num-prompts", "2", "--random-input-len", "4",
                                          "--random-output-len", "2", "--ready-check-timeout-sec", "60"))
        assert res["completed"] == 2
    finally:
        server.should_exit = True
        thread.join()
