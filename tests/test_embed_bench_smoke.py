"""Smoke run of ``benchmarks/embed_bench.py gpu`` on the CPU (``--smoke --device cpu``: each shape cut to 2
layers of width 64, same architectures and code path), so the GPU mode cannot rot; and its HF peer is
constructed on the requested device without host random init."""

from __future__ import annotations

import json

import pytest
import torch
from test_bench_smoke import load_script


@pytest.fixture
def no_minilm(monkeypatch):
    """The GPU machine has no internet: the GPU mode must never fetch all-MiniLM-L6-v2."""
    import pooling_models

    def no_download():
        raise AssertionError("the GPU mode must not fetch all-MiniLM-L6-v2")

    monkeypatch.setattr(pooling_models, "minilm_path", no_download)


@pytest.mark.parametrize("shape", ["bert-large", "llama-8b"])
def test_embed_bench_gpu_mode_runs_on_cpu(shape, capsys, no_minilm):
    bench = load_script("benchmarks/embed_bench.py")
    bench.main(["gpu", "--shape", shape, "--smoke", "--device", "cpu"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    phases = [x["phase"] for x in lines if "phase" in x]
    assert phases == ["imports", "model_folder", "hf_build", "hf_warmup", "hf_run", "pagoda_startup",
                      "pagoda_warmup", "pagoda_run"]
    info = next(x for x in lines if "pagoda_arch" in x)
    assert info["prompts"] == 16 and info["max_len"] == 48 and info["pooling"] == ("CLS" if shape == "bert-large"
                                                                                     else "LAST")
    summary = lines[-1]
    assert summary["tokens"] == info["tokens"] and summary["hf_tok_per_s"] > 0 and summary["pagoda_tok_per_s"] > 0


def test_gpu_mode_builds_the_hf_peer_on_the_device_and_needs_no_download(no_minilm):
    bench = load_script("benchmarks/embed_bench.py")
    arch, hf_cls, _, fields = bench.gpu_shape("llama-8b")
    assert (arch, hf_cls, fields["hidden_size"], fields["num_hidden_layers"]) == ("LlamaForCausalLM", "LlamaModel",
                                                                                 4096, 32)
    model = bench.build_hf_model(hf_cls, fields, "meta")  # the full 8B shape: no host memory, no host init
    params = list(model.parameters())
    assert {p.device.type for p in params} == {"meta"} and {p.dtype for p in params} == {torch.bfloat16}
    assert sum(p.numel() for p in params) > 7e9
    folder = bench.shape_folder(arch, bench.gpu_shape("llama-8b", smoke=True)[3])
    assert json.loads((folder / "config.json").read_text())["architectures"] == [arch]
    assert (folder / "tokenizer.json").exists()
