"""Smoke runs of CPU benchmark scripts (so they cannot rot): ``benchmarks/cpu_head_bench.py`` on a
small head, ``benchmarks/cpu_floor_ratio.py`` on a tiny 4-bit GGUF model and ``benchmarks/spec_decode_cpu_bench.py
--structured`` on the tiny model; they print what they measure and the
head bench checks the kernel against float64 and rows alone against rows in a batch."""

from __future__ import annotations

import pytest
from test_bench_smoke import load_script
from test_cpu_decoder_stack import ALL_4BIT
from test_gguf import _tiny_quantized_gguf

from pagoda.layers import cpu_head_dot, cpu_head_q8


@pytest.mark.skipif(not (cpu_head_dot.available() and cpu_head_q8.available()),
                    reason="no bf16-dot or Q8_0 LM head here (needs AVX512-BF16 and VNNI)")
def test_cpu_head_bench_smoke(capsys):
    load_script("benchmarks/cpu_head_bench.py").main(["--rows", "1", "9", "--reps", "2", "--vocab", "300",
                                                      "--hidden", "64"])
    out = capsys.readouterr().out
    assert out.count("rows alone bitwise True") == 4 and "oneDNN+refine" in out  # 2 kernels at 2 row counts


@pytest.mark.skipif(not cpu_head_dot.available(), reason="the floor counts the CPU's bf16-dot head (AVX512-BF16)")
def test_cpu_floor_ratio_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", True, ALL_4BIT)
    bench = load_script("benchmarks/cpu_floor_ratio.py")
    ratio = bench.main(["--model", str(path), "--rounds", "1", "--max-tokens", "6", "--bandwidth-mib", "16"])
    out = capsys.readouterr().out
    assert ratio > 0 and "read bandwidth" in out and "decode step median" in out
    assert ("Q8_0 LM head" if cpu_head_q8.available() else "bf16 LM head") in out  # the tied Q8_0 table's head


def test_spec_decode_bench_structured_smoke(tiny):
    """The JSON workload of ``benchmarks/spec_decode_cpu_bench.py --structured`` on the tiny model: constrained
    answers, the same with and without speculation, and verify steps ran."""
    res = load_script("benchmarks/spec_decode_cpu_bench.py").main([
        "--model", str(tiny.path("llama")), "--dtype", "float32", "--structured", "--reps", "1", "--num-prompts", "2",
        "--max-tokens", "24", "--max-model-len", "512"])
    assert res["identical"] and res["invalid_answers"] == [] and res["verify_steps"] > 0
    assert res["workload"] == "input_grounded_json.jsonl"
