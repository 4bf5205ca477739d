"""Smoke runs of the offline benchmark commands (tiny dummy model), so they cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny_models import build_tokenizer

from pagoda.entrypoints.cli import main

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
    "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float32",
}


def _model(tmp_path: Path) -> Path:
    folder = tmp_path / "shape"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    build_tokenizer(folder)
    return folder


def test_bench_throughput_and_latency_smoke(tmp_path, capsys):
    m = str(_model(tmp_path))
    out = tmp_path / "tp.json"
    main(["--log-level", "WARNING", "bench", "throughput", "--model", m, "--load-format", "dummy",
          "--dataset", "sharegpt", "--num-prompts", "6", "--max-model-len", "1024", "--output-json", str(out)])
    res = json.loads(out.read_text())["results"][0]
    assert res["requests"] == 6 and res["output_tokens_per_s"] > 0
    lat = tmp_path / "lat.json"
    main(["--log-level", "WARNING", "bench", "latency", "--model", m, "--load-format", "dummy", "--batch-size", "1",
          "2", "--input-len", "20", "--output-len", "6", "--num-iters", "1", "--max-model-len", "256",
          "--output-json", str(lat)])
    rows = json.loads(lat.read_text())
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert all(r["decode_step_ms_median"] > 0 for r in rows)
    assert "decode step median" in capsys.readouterr().out


def test_bench_latency_output_len_1_is_a_prefill_only_run(tmp_path, capsys):
    """vLLM runs --output-len 1: the prefill gives the only token, there is no decode step to time."""
    m = str(_model(tmp_path))
    lat = tmp_path / "lat.json"
    main(["--log-level", "WARNING", "bench", "latency", "--model", m, "--load-format", "dummy", "--batch-size", "1",
          "--input-len", "8", "--output-len", "1", "--num-iters", "1", "--num-iters-warmup", "0",
          "--max-model-len", "256", "--output-json", str(lat)])
    res = json.loads(lat.read_text())
    assert res["output_len"] == 1 and res["e2e_s_median"] > 0 and res["prefill_s_median"] > 0
    assert res["decode_step_ms_median"] is None and res["decode_step_ms_p90"] is None
    out = capsys.readouterr().out
    assert "no decode step (output length 1" in out and "decode step median" not in out


def _flag_error(argv: list[str], capsys) -> str:
    """The parser's error for ``argv`` (exit status 2, before any model loads)."""
    from pagoda.entrypoints.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bench_length_and_count_flags_are_flag_errors(capsys):
    import argparse

    from pagoda.benchmarks.datasets import workload_from_args

    cases = [
        (["latency", "--batch-size", "0"], "bench latency: error: argument --batch-size: must be at least 1, got 0"),
        (["latency", "--batch-size", "2", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["latency", "--num-iters", "0"], "argument --num-iters: must be at least 1, got 0"),
        (["latency", "--num-iters-warmup", "-1"], "argument --num-iters-warmup: must be at least 0, got -1"),
        (["latency", "--output-len", "0"], "argument --output-len: must be at least 1, got 0"),
        (["latency", "--input-len", "0"], "argument --input-len: must be at least 1, got 0"),
        (["throughput", "--output-len", "0"], "bench throughput: error: argument --output-len: must be at least 1, "
                                              "got 0"),
        (["throughput", "--input-len", "0"], "argument --input-len: must be at least 1, got 0"),
        (["throughput", "--num-prompts", "0"], "argument --num-prompts: must be at least 1, got 0"),
        (["throughput", "--range-ratio", "2"], "argument --range-ratio: must be in [0, 1), got 2"),
        (["throughput", "--range-ratio", "1"], "argument --range-ratio: must be in [0, 1), got 1"),
        (["throughput", "--range-ratio", "-0.1"], "argument --range-ratio: must be in [0, 1), got -0.1"),
        (["throughput", "--output-len", "x"], "argument --output-len: not an integer: 'x'"),
    ]
    for argv, message in cases:
        assert message in _flag_error(["bench", *argv], capsys), argv
    # the request list's builder, used without the parser (benchmarks/gpu/hf_peer.py), refuses them too
    base = dict(dataset="random", num_prompts=2, input_len=8, output_len=4, range_ratio=0.0, seed=0)
    assert [len(r.prompt_token_ids) for r in workload_from_args(argparse.Namespace(**base), 1000)] == [8, 8]
    for bad, message in ((dict(range_ratio=2.0), "--range-ratio must be in"), (dict(output_len=0), "--output-len")):
        with pytest.raises(ValueError, match=message):
            workload_from_args(argparse.Namespace(**{**base, **bad}), 1000)


def test_bench_throughput_prefix_repetition_smoke(tmp_path, capsys):
    m = str(_model(tmp_path))
    out = tmp_path / "prefix.json"
    main(["--log-level", "WARNING", "bench", "throughput", "--model", m, "--load-format", "dummy",
          "--dataset-name", "prefix_repetition", "--num-prompts", "8", "--prefix-repetition-prefix-len", "48",
          "--prefix-repetition-suffix-len", "8", "--prefix-repetition-num-prefixes", "2",
          "--prefix-repetition-output-len", "4", "--max-num-seqs", "1", "--max-model-len", "256",
          "--compare-no-prefix-caching", "--prefix-ttft-probes", "1", "--output-json", str(out)])
    on, off = json.loads(out.read_text())["results"]
    assert on["requests"] == off["requests"] == 8 and on["prompt_tokens"] == 8 * 56
    # one request at a time, 2 prefixes of 4 requests: the 6 repeats hit their prefix's 3 full blocks
    assert abs(on["prefix_cache_hit_rate"] - 6 * 48 / (8 * 56)) < 1e-9
    assert off["prefix_cache_hit_rate"] == 0.0 and off["backend"] == "pagoda-no-prefix-caching"
    assert on["speedup_vs_no_prefix_caching"] > 0
    probe = on["prefix_ttft"]
    assert probe["cached_tokens"] == 48 and probe["ttft_uncached_ms_median"] > 0 and probe["ttft_cached_ms_median"] > 0
    text = capsys.readouterr().out
    assert "prefix caching on / off" in text and "[prefix TTFT]" in text and "prefix cache hit rate" in text


def load_script(relpath: str):
    """A script of the repository (``benchmarks/...``) loaded as a module, under a name of its own."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_smoke(monkeypatch, relpath: str, *args: str):
    """``main()`` of a repository script with ``argv = [its name, "--smoke", *args]`` (set before the script loads:
    the sweeps read ``--smoke`` at import); returns the loaded module."""
    monkeypatch.setattr(sys, "argv", [Path(relpath).name, "--smoke", *args])
    mod = load_script(relpath)
    mod.main()
    return mod


def test_hf_peer_runs_pagodas_exact_requests_and_is_credited_for_what_it_generates(tmp_path, capsys):
    from pagoda.benchmarks.datasets import load_requests, requests_digest

    m = str(_model(tmp_path))
    out, saved = tmp_path / "both.json", tmp_path / "reqs.json"
    dataset = ["--num-prompts", "5", "--input-len", "12", "--output-len", "6", "--range-ratio", "0.5", "--seed", "4"]
    main(["--log-level", "WARNING", "bench", "throughput", "--model", m, "--load-format", "dummy", *dataset,
          "--backend", "both", "--hf-batch-size", "2", "--max-model-len", "256", "--save-requests", str(saved),
          "--output-json", str(out)])
    pagoda_res, hf_res = json.loads(out.read_text())["results"]
    reqs = load_requests(saved)
    lens = [r.output_len for r in reqs]
    assert len(set(lens)) > 1  # variable output lengths, as pagoda runs them
    # the same request list on both sides, in the same run
    assert pagoda_res["requests_digest"] == hf_res["requests_digest"] == requests_digest(reqs)
    assert pagoda_res["output_tokens"] == pagoda_res["requested_output_tokens"] == sum(lens)
    # generate batches of 2 run to their longest request: HF is credited with every token it produced
    assert hf_res["requested_output_tokens"] == sum(lens)
    assert hf_res["output_tokens"] == sum(len(lens[i:i + 2]) * max(lens[i:i + 2]) for i in range(0, 5, 2))
    assert "pagoda / hf output throughput (same requests, same run)" in capsys.readouterr().out

    # the stand-alone peer (benchmarks/gpu/hf_peer.py): the same list from the same flags, or from the file
    peer = load_script("benchmarks/gpu/hf_peer.py")
    from_flags = peer.main(["--model", m, "--device", "cpu", "--dtype", "float32", *dataset])
    from_file = peer.main(["--model", m, "--device", "cpu", "--dtype", "float32", "--requests", str(saved)])
    for res in (from_flags, from_file):
        assert res["requests_digest"] == pagoda_res["requests_digest"]
        # continuous batching honours each request's own length: exactly what pagoda generated
        assert res["output_tokens"] == res["requested_output_tokens"] == sum(lens)


def test_structured_host_overhead_smoke(tmp_path):
    """benchmarks/structured_host_overhead.py: the unconstrained and the long-schema arm, two measured steps each."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import structured_host_overhead as bench

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(bench.TINY_CONFIG))
    tok = tmp_path / "tok"
    tok.mkdir()
    build_tokenizer(tok)
    model = bench.shape_model(str(cfg), str(tok))
    for schema in (None, bench.LONG_SCHEMA):
        parts = bench.run_once(model, 2, 2, schema)
        assert set(bench.PARTS) <= set(parts) and parts["total host"] > 0
        assert (parts["fill"] > 0) is (schema is not None)


def test_int4_gemv_sweep_smoke_writes_a_table_the_tools_read_back(tmp_path):
    """``benchmarks/gpu/int4_gemv_sweep.py --smoke --json`` (CPU, Triton's interpreter) runs every arm (PDL and
    the dense path included), and its JSON gives back the tables it printed."""
    import os
    import subprocess

    out = tmp_path / "w4.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "benchmarks/gpu/int4_gemv_sweep.py", "--smoke", "--json", str(out), "--ms", "1", "16", "64"]
    run = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert all(arm in run.stdout for arm in (" deq ", "pdl=True")) and "WRONG" not in run.stdout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
    from int4_gemv_sweep import int4_table_from_json, short, table_text, w4_table_from_json

    table = w4_table_from_json(str(out))
    assert set(table) == {"small", "large"}
    assert table_text(table) in run.stdout
    for key, rule in int4_table_from_json(str(out)).items():  # (timings are fake here: any dot launch may win)
        assert rule.kind in ("dot", "deq") and f"    {key}: {short(rule)}," in run.stdout


def test_int_weight_sweep_smoke_runs_every_part():
    """``benchmarks/gpu/int_weight_sweep.py --smoke`` (CPU, Triton's interpreter): the W4A16 and W8A16 passes and
    the fused-MoE pass run to their CHOOSE blocks (the MoE pass once broke when its GEMM took launch arguments)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "benchmarks/gpu/int_weight_sweep.py", "--smoke"],
                         cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "WRONG" not in run.stdout
    for block in ("INT4_TABLE: dict", "U8_TABLE: dict", "MOE_TABLE: dict", "===== END CHOOSE ====="):
        assert block in run.stdout, block


def test_int_weight_bench_smoke_prints_every_step_line():
    """``benchmarks/gpu/int_weight_bench.py --smoke`` (CPU, Triton's interpreter) runs and prints the bf16, W4A16
    and W8A16 step lines at M = 1 and 64."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "benchmarks/gpu/int_weight_bench.py", "--smoke"],
                         cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    for m in (1, 64):
        for kind in ("bf16", "w4a16", "w8a16"):
            assert f"M={m} step linears {kind}" in run.stdout, (m, kind)
