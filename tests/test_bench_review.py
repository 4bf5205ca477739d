"""`pagoda bench` as a `vllm bench` user runs it: vLLM's metric formulas on known timings, vLLM's flag names and
result keys, and bad flags refused by name (never ignored, never a traceback)."""

from __future__ import annotations

import argparse
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import uvicorn
from test_bench_serve_timing import _app

from pagoda.benchmarks.serve import (
    RequestResult,
    add_bench_serve_args,
    arrival_gap,
    resolve_args,
    run_bench_serve,
    summarize,
)


def _serve_args(*argv: str) -> argparse.Namespace:
    return add_bench_serve_args(argparse.ArgumentParser()).parse_args(list(argv))


def _request(ttft: float, gaps: list[float], prompt_len: int) -> RequestResult:
    """A successful request whose tokens came one per chunk: the first at ``ttft``, then one after each gap."""
    return RequestResult(ok=True, prompt_len=prompt_len, output_tokens=1 + len(gaps), ttft=ttft,
                         latency=ttft + sum(gaps), itl=list(gaps), chunks=[(g, 1) for g in gaps])


def test_serve_metrics_are_vllms_formulas_on_known_timings():
    """summarize() against vLLM's calculate_metrics written out with numpy: throughputs over the completed
    requests, TPOT = (e2el - ttft) / (output tokens - 1), ITL the token gaps, E2EL, mean / median / population
    std / np.percentile, vLLM's key names (p99.5_..., not p99_5), and goodput (every SLO met, TPOT 0 for one token)."""
    reqs = [
        _request(0.10, [0.02, 0.03, 0.05], 10),
        _request(0.40, [0.01] * 7, 20),
        _request(0.05, [], 5),  # one token: no TPOT in the latencies, TPOT 0 for goodput (vLLM)
        _request(0.25, [0.04, 0.06], 7),
        RequestResult(ok=False, prompt_len=99, error="HTTP 500: boom"),  # failed: out of every figure
    ]
    duration = 2.0
    args = _serve_args("--metric-percentiles", "25,50,99.5", "--percentile-metrics", "ttft,tpot,itl,e2el",
                       "--goodput", "ttft:300", "tpot:40")
    s = summarize(args, reqs, duration)

    ok = reqs[:4]
    ttfts = np.array([r.ttft for r in ok])
    e2els = np.array([r.latency for r in ok])
    outs = np.array([r.output_tokens for r in ok])
    tpots = np.array([(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1])
    itls = np.array([g for r in ok for g in r.itl])
    assert s["completed"] == 4 and s["failed"] == 1
    assert s["total_input_tokens"] == 42 and s["total_output_tokens"] == int(outs.sum()) == 16
    assert s["duration"] == s["duration_s"] == duration
    assert s["request_throughput"] == pytest.approx(4 / duration)
    assert s["output_throughput"] == pytest.approx(16 / duration)
    assert s["total_token_throughput"] == pytest.approx((42 + 16) / duration)
    for name, xs in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        assert s[f"mean_{name}_ms"] == pytest.approx(1000 * np.mean(xs)), name
        assert s[f"median_{name}_ms"] == pytest.approx(1000 * np.median(xs)), name
        assert s[f"std_{name}_ms"] == pytest.approx(1000 * np.std(xs)), name
        for q, key in ((25, "p25"), (50, "p50"), (99.5, "p99.5")):
            assert s[f"{key}_{name}_ms"] == pytest.approx(1000 * np.percentile(xs, q)), (name, key)
    # goodput: ttft <= 300 ms and tpot <= 40 ms. #0: tpot 33.3 ms, good; #1: ttft 400 ms, not; #2: one token
    # (tpot 0), good; #3: tpot 50 ms, not.
    assert s["request_goodput"] == pytest.approx(2 / duration)
    assert summarize(_serve_args(), reqs, duration)["request_goodput"] is None  # no --goodput: None, as vLLM's


def test_serve_bad_flags_are_flag_errors(capsys):
    cases = [
        (["--burstiness", "0"], "argument --burstiness: must be positive (1 = Poisson), got 0"),
        (["--burstiness", "-1"], "argument --burstiness: must be positive"),
        (["--metric-percentiles", "150"], "argument --metric-percentiles: a percentile must be in [0, 100], got 150"),
        (["--metric-percentiles", "p99"], "argument --metric-percentiles: not a number: 'p99'"),
        (["--percentile-metrics", "ttft,foo"], "argument --percentile-metrics: unknown metric(s) foo: choose from "
                                                "ttft, tpot, itl, e2el"),
        (["--random-input-len", "0"], "argument --random-input-len: must be at least 1, got 0"),
        (["--input-len", "-2"], "argument --input-len: must be at least 1, got -2"),
        (["--goodput", "itl:5"], "argument --goodput: 'itl:5' is not KEY:VALUE with KEY one of ttft, tpot, e2el"),
        (["--goodput", "ttft:-1"], "argument --goodput: 'ttft:-1'"),
        (["--goodput", "ttft"], "argument --goodput: 'ttft'"),
        (["--backend", "tgi"], "argument --backend: invalid choice: 'tgi'"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            _serve_args(*argv)
        assert message in capsys.readouterr().err, argv
    args = _serve_args("--burstiness", "inf", "--goodput", "ttft:500", "e2el:2000", "--metric-percentiles", " 90, 99 ")
    assert args.burstiness == float("inf") and dict(args.goodput) == {"ttft": 500.0, "e2el": 2000.0}
    assert args.metric_percentiles == "90,99"


def test_serve_vllm_flags_resolve_or_are_refused_by_name():
    def resolved(*argv: str) -> argparse.Namespace:
        args = _serve_args(*argv)
        resolve_args(args)
        return args

    assert resolved().endpoint == "/v1/completions"
    assert resolved("--endpoint", "/v1/chat/completions").endpoint == "/v1/chat/completions"
    assert resolved("--backend", "openai-chat").endpoint == "/v1/chat/completions"
    for backend in ("vllm", "openai"):
        assert resolved("--backend", backend).endpoint == "/v1/completions"
    with pytest.raises(ValueError, match="--backend openai-chat sends to /v1/chat/completions, not --endpoint "
                                         "/v1/completions"):
        resolved("--backend", "openai-chat", "--endpoint", "/v1/completions")
    with pytest.raises(ValueError, match="--backend vllm sends to /v1/completions"):
        resolved("--backend", "vllm", "--endpoint", "/v1/chat/completions")
    with pytest.raises(ValueError, match="--dataset-path sg.json: pagoda bench serve reads no dataset file"):
        resolved("--dataset-name", "sharegpt", "--dataset-path", "sg.json")
    for dataset in ("sharegpt", "prefix_repetition"):  # a length the dataset would not use: refused, not ignored
        with pytest.raises(ValueError, match=f"--input-len shapes the random dataset only; --dataset-name {dataset}"):
            resolved("--dataset-name", dataset, "--input-len", "30")
    # vLLM's general lengths map onto the dataset flags
    a = resolved("--input-len", "30", "--output-len", "7")
    assert (a.random_input_len, a.random_output_len, a.prefix_repetition_output_len) == (30, 7, 7)


def test_sharegpt_output_len_replaces_the_datasets_in_serve_and_throughput():
    """vLLM: --output-len overrides the dataset's output lengths (bench serve and bench throughput alike)."""
    import asyncio

    from pagoda.benchmarks.datasets import workload_from_args
    from pagoda.benchmarks.serve import make_prompts

    class _Estimate:  # no tokenizer: lengths are only estimated, never a server round trip
        exact = False

        async def count(self, text: str) -> None:
            return None

    args = _serve_args("--dataset-name", "sharegpt", "--num-prompts", "5", "--output-len", "9")
    resolve_args(args)
    prompts = asyncio.run(make_prompts(args, _Estimate()))  # type: ignore[arg-type]
    assert [n_out for _, _, n_out in prompts] == [9] * 5
    base = dict(dataset="sharegpt", num_prompts=5, seed=0)
    plain = workload_from_args(argparse.Namespace(**base), 1000)
    fixed = workload_from_args(argparse.Namespace(**base, output_len=9), 1000)
    assert [r.prompt_token_ids for r in fixed] == [r.prompt_token_ids for r in plain]
    assert [r.output_len for r in fixed] == [9] * 5 and len({r.output_len for r in plain}) > 1


def test_throughput_random_only_flags_are_refused_with_another_dataset():
    from pagoda.benchmarks.datasets import workload_from_args

    base = dict(num_prompts=4, seed=0, prefix_repetition_prefix_len=8, prefix_repetition_suffix_len=4,
                prefix_repetition_num_prefixes=2, prefix_repetition_output_len=3)
    for dataset in ("sharegpt", "prefix_repetition"):
        for flag, extra in (("--input-len", dict(input_len=64)), ("--range-ratio", dict(range_ratio=0.5))):
            with pytest.raises(ValueError, match=f"{flag} shapes the random dataset only; --dataset {dataset}"):
                workload_from_args(argparse.Namespace(dataset=dataset, **base, **extra), 1000)
    rep = workload_from_args(argparse.Namespace(dataset="prefix_repetition", **base, output_len=6), 1000)
    assert [r.output_len for r in rep] == [6] * 4
    with pytest.raises(ValueError, match="--dataset-path x.json: pagoda's benchmarks read no dataset file"):
        workload_from_args(argparse.Namespace(dataset="sharegpt", dataset_path="x.json", **base), 1000)
    # the random dataset's defaults when no flag gives its lengths
    reqs = workload_from_args(argparse.Namespace(dataset="random", **base), 1000)
    assert {(len(r.prompt_token_ids), r.output_len) for r in reqs} == {(56, 128)}


def test_throughput_takes_vllms_flag_names(capsys):
    from pagoda.entrypoints.cli import build_parser

    args = build_parser().parse_args(["bench", "throughput", "--random-input-len", "12", "--random-output-len", "5",
                                      "--random-range-ratio", "0.5", "--backend", "vllm"])
    assert (args.input_len, args.output_len, args.range_ratio, args.backend) == (12, 5, 0.5, "vllm")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "throughput", "--random-output-len", "0"])
    assert "argument --random-output-len: must be at least 1, got 0" in capsys.readouterr().err


def test_arrival_gaps():
    """Gamma gaps of mean 1 / rate (Poisson at burstiness 1); burstiness inf: constant 1 / rate (vLLM)."""
    rng = random.Random(0)
    assert [arrival_gap(rng, 4.0, float("inf")) for _ in range(3)] == [0.25] * 3
    gaps = [arrival_gap(rng, 4.0, 0.5) for _ in range(20000)]
    assert np.mean(gaps) == pytest.approx(0.25, rel=0.05) and min(gaps) >= 0


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


def test_saved_result_has_vllms_keys_and_no_per_request_log_lines(fake_server, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    args = _serve_args("--base-url", fake_server, "--model", "empty", "--num-prompts", "3", "--random-input-len", "8",
                       "--output-len", "5", "--backend", "openai-chat", "--goodput", "ttft:60000", "e2el:60000",
                       "--request-rate", "200", "--burstiness", "inf", "--save-result", "--result-dir",
                       str(tmp_path), "--result-filename", "r.json")
    run_bench_serve(args)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["endpoint"] == "/v1/chat/completions" and saved["backend"] == "openai-chat"
    assert saved["model_id"] == saved["model"] == "empty" and saved["num_prompts"] == 3
    assert saved["duration"] == saved["duration_s"] > 0
    assert saved["total_output_tokens"] == 15 and saved["output_lens"] == [5, 5, 5]
    # every request met the (generous) objectives
    assert saved["request_goodput"] == pytest.approx(saved["request_throughput"])
    assert saved["goodput"] == {"ttft": 60000.0, "e2el": 60000.0}
    # per-request lists aligned with the requests, under vLLM's names
    for key in ("input_lens", "output_lens", "ttfts", "itls", "latencies", "generated_texts", "errors"):
        assert len(saved[key]) == 3, key
    assert saved["latencies"] == saved["e2els"] and saved["errors"] == ["", "", ""]
    for key in ("request_throughput", "output_throughput", "total_token_throughput", "mean_ttft_ms",
                "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "p99_e2el_ms"):
        assert isinstance(saved[key], float), key
    assert "Request goodput (req/s):" in capsys.readouterr().out
    assert not [r for r in caplog.records if r.name.startswith("httpx")]  # no INFO line per request


def test_latency_json_has_vllms_keys(tmp_path):
    from pagoda.benchmarks.latency import vllm_latency_keys

    e2e = [0.5, 0.2, 0.9, 0.4]
    keys = vllm_latency_keys(e2e)
    assert keys["avg_latency"] == pytest.approx(np.mean(e2e)) and keys["std_latency"] == pytest.approx(np.std(e2e))
    assert keys["latencies"] == e2e
    want = dict(zip(["10", "25", "50", "75", "90", "99"], np.percentile(e2e, [10, 25, 50, 75, 90, 99]), strict=True))
    assert keys["percentiles"] == pytest.approx(want)


def test_throughput_and_latency_json_carry_vllms_keys(tmp_path):
    from test_bench_smoke import _model

    from pagoda.entrypoints.cli import main

    m = str(_model(tmp_path))
    out = tmp_path / "tp.json"
    main(["--log-level", "WARNING", "bench", "throughput", "--model", m, "--load-format", "dummy", "--backend", "vllm",
          "--num-prompts", "3", "--random-input-len", "6", "--random-output-len", "4", "--max-model-len", "128",
          "--warmup", "0", "--output-json", str(out)])
    saved = json.loads(out.read_text())
    res = saved["results"][0]
    assert res["backend"] == "pagoda" and res["prompt_tokens"] == 18 and res["output_tokens"] == 12
    assert saved["num_requests"] == 3 and saved["total_num_tokens"] == 30
    assert saved["elapsed_time"] == res["seconds"] > 0
    assert saved["requests_per_second"] == res["requests_per_s"]
    assert saved["tokens_per_second"] == res["total_tokens_per_s"]
    lat = tmp_path / "lat.json"
    main(["--log-level", "WARNING", "bench", "latency", "--model", m, "--load-format", "dummy", "--batch-size", "2",
          "--input-len", "6", "--output-len", "3", "--num-iters", "2", "--num-iters-warmup", "0",
          "--max-model-len", "128", "--output-json", str(lat)])
    row = json.loads(lat.read_text())
    assert len(row["latencies"]) == 2 and row["avg_latency"] == pytest.approx(np.mean(row["latencies"]))
    assert set(row["percentiles"]) == {"10", "25", "50", "75", "90", "99"}
