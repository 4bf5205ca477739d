"""GPTQ / AWQ checkpoints as vLLM users bring them: vLLM's kernel names for the method, the config kept only in
``quantize_config.json`` / ``quant_config.json``, and GPTQ-for-LLaMa's all-zero biases.

- ``--quantization gptq_marlin`` / ``gptq_bitblas`` / ``awq_marlin`` / ``cpu_awq`` (vLLM's kernels for a ``gptq`` /
  ``awq`` checkpoint) were refused as invalid choices; they run the same layout with pagoda's kernels, and one that
  reads another layout than the checkpoint's is an error naming both (as in vLLM).
- Old AutoGPTQ / AutoAWQ repos keep their config in ``quantize_config.json`` / ``quant_config.json`` only; pagoda
  loaded them as plain models and failed on ``g_idx`` / ``qweight`` having no place.
- GPTQ-for-LLaMa writes a zero ``bias`` for every linear, biased or not; pagoda refused them (vLLM skips them).

The reference is HF transformers (fp32) on a dense copy whose weights are the checkpoint's dequantization.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from engine_checks import greedy, hf_greedy
from test_quant_review_configs import _partial_gptq

from pagoda.quantization import resolve_quantization

PROMPTS = ["The quick brown fox", "Paris is the capital of"]
ALL_LINEARS = ("proj",)
GROUP = 32


def _llm(path: Path, **kw):
    from pagoda import LLM

    return LLM(str(path), dtype="float32", max_model_len=64, num_gpu_blocks_override=8, **kw)


def _outputs(llm) -> list[tuple[list[int], list[float]]]:
    outs = llm.generate(PROMPTS, greedy(6, logprobs=1), use_tqdm=False)
    return [(o.outputs[0].token_ids, [d[t].logprob for d, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids,
                                                                        strict=True)]) for o in outs]


def _assert_matches_hf(llm, ref: Path) -> None:
    """Greedy tokens and prompt logprobs equal HF's on the dequantized weights (fp32 both sides)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32).eval()
    for out in llm.generate(PROMPTS, greedy(6, prompt_logprobs=0), use_tqdm=False):
        want = hf_greedy(model, out.prompt_token_ids, 6)
        assert out.outputs[0].token_ids == want.tokens
        for i, d in enumerate(out.prompt_logprobs[1:]):
            for tid, lp in d.items():
                assert abs(lp.logprob - float(want.prompt_logprobs[i, tid])) < 1e-4


def _edit_config(folder: Path, fn) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def gptq(tiny, tmp_path_factory) -> tuple[Path, Path]:
    """Every linear GPTQ (4-bit, group 32, asym, v1 zero points), and its dense reference."""
    root = tmp_path_factory.mktemp("gptq_leftovers")
    path, ref = _partial_gptq(tiny.path("llama"), root / "gptq", ALL_LINEARS)
    _edit_config(path, lambda c: c["quantization_config"].pop("modules_in_block_to_quantize"))
    return path, ref


def _awq(base: Path, dst: Path) -> tuple[Path, Path]:
    """The tiny Llama with every linear AWQ (AutoAWQ GEMM, group 32) of random codes and zeros, and its dense
    reference ``W = scales * (q - z)``."""
    from safetensors.torch import load_file, save_file

    from pagoda.quantization.awq import pack_awq

    ref = dst.with_name(dst.name + "-dense")
    shutil.copytree(base, dst)
    shutil.copytree(base, ref)
    g = torch.Generator().manual_seed(2)
    out, dense = {}, {}
    for k, w in load_file(base / "model.safetensors").items():
        dense[k] = out[k] = w
        if not k.endswith("proj.weight"):
            continue
        p = k[: -len(".weight")]
        n, kin = w.shape
        codes = torch.randint(0, 16, (kin, n), generator=g)
        zeros = torch.randint(0, 16, (kin // GROUP, n), generator=g)
        scales = (torch.rand(kin // GROUP, n, generator=g) * 0.02 + 0.01).half()
        del out[k]
        out |= {f"{p}.qweight": pack_awq(codes), f"{p}.qzeros": pack_awq(zeros), f"{p}.scales": scales}
        group = torch.arange(kin) // GROUP
        dense[k] = (scales.float()[group] * (codes - zeros[group]).float()).t().contiguous()
    (dst / "model.safetensors").unlink()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    save_file(dense, ref / "model.safetensors", metadata={"format": "pt"})
    _edit_config(dst, lambda c: c.update(quantization_config={"quant_method": "awq", "bits": 4, "group_size": GROUP,
                                                              "zero_point": True, "version": "gemm"}))
    return dst, ref


@pytest.fixture(scope="module")
def awq(tiny, tmp_path_factory) -> tuple[Path, Path]:
    return _awq(tiny.path("llama"), tmp_path_factory.mktemp("awq_leftovers") / "awq")


def _side_file(src: Path, dst: Path, name: str, qcfg: dict | None = None) -> Path:
    """``src`` with config.json's quantization_config moved to ``name`` (``qcfg`` instead when given)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    moved = cfg.pop("quantization_config")
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / name).write_text(json.dumps(moved if qcfg is None else qcfg))
    return dst


# ----------------------------------------------------------------------- vLLM's kernel names
@pytest.mark.parametrize("name", ["gptq_marlin", "gptq_bitblas"])
def test_vllm_gptq_kernel_names_run_the_gptq_checkpoint(gptq, name):
    path, ref = gptq
    llm = _llm(path, quantization=name)
    assert _outputs(llm) == _outputs(_llm(path))
    _assert_matches_hf(llm, ref)


@pytest.mark.parametrize("name", ["awq_marlin", "cpu_awq"])
def test_vllm_awq_kernel_names_run_the_awq_checkpoint(awq, name):
    path, ref = awq
    llm = _llm(path, quantization=name)
    assert _outputs(llm) == _outputs(_llm(path))
    _assert_matches_hf(llm, ref)


@pytest.mark.parametrize("ckpt,name,found", [("gptq", "awq_marlin", "gptq"), ("gptq", "cpu_awq", "gptq"),
                                              ("awq", "gptq_marlin", "awq"), ("awq", "gptq_bitblas", "awq")])
def test_a_kernel_name_of_another_layout_is_refused_naming_both(request, ckpt, name, found):
    """vLLM: 'Quantization method specified in the model config (gptq) does not match ... (awq_marlin)'."""
    path, _ = request.getfixturevalue(ckpt)
    with pytest.raises(ValueError, match=rf"quantized with '{found}' but --quantization '{name}' was given "
                                         rf"\(which reads \w+ checkpoints\); drop --quantization or pass "
                                         rf"--quantization {found}"):
        _llm(path, quantization=name)


def test_kernel_names_on_a_plain_checkpoint_follow_their_method(tiny):
    """Forced on a plain checkpoint: the method's defaults for dummy weights, an error naming the flag otherwise."""
    hf = json.loads((tiny.path("llama") / "config.json").read_text())
    assert resolve_quantization(hf, "gptq_marlin", "dummy") == resolve_quantization(hf, "gptq", "dummy")
    assert resolve_quantization(hf, "awq_marlin", "dummy") == resolve_quantization(hf, "awq", "dummy")
    with pytest.raises(ValueError, match="--quantization gptq_marlin needs a checkpoint quantized with gptq"):
        resolve_quantization(hf, "gptq_marlin", "auto")


def test_cli_takes_vllm_kernel_names_and_refuses_other_methods(capsys):
    from pagoda.arg_utils import add_dataclass_args
    from pagoda.config import EngineArgs

    parser = __import__("argparse").ArgumentParser()
    add_dataclass_args(parser, EngineArgs)
    for name in ("gptq_marlin", "gptq_bitblas", "awq_marlin", "cpu_awq"):
        assert parser.parse_args(["-q", name]).quantization == name
    for name in ("gptq_marlin_24", "fbgemm_fp8", "ptpc_fp8", "bitsandbytes", "marlin"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--quantization", name])
        assert f"invalid choice: '{name}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Quantization method 'ptpc_fp8' is not supported; supported: fp8, "):
        resolve_quantization({}, "ptpc_fp8", "auto")


# ----------------------------------------------------------------------- quantize_config.json / quant_config.json
def test_autogptq_quantize_config_json_is_read(gptq, tmp_path):
    """AutoGPTQ's quantize_config.json (with its quant_method): loads by itself, as with the config in config.json."""
    path, ref = gptq
    qcfg = {**json.loads((path / "config.json").read_text())["quantization_config"], "damp_percent": 0.01,
            "true_sequential": True, "static_groups": False, "model_name_or_path": None,
            "model_file_base_name": "model", "checkpoint_format": "gptq"}
    side = _side_file(path, tmp_path / "side", "quantize_config.json", qcfg)
    llm = _llm(side)
    assert _outputs(llm) == _outputs(_llm(path))
    _assert_matches_hf(llm, ref)
    assert _outputs(_llm(side, quantization="gptq_marlin")) == _outputs(llm)


def test_quantize_config_json_without_quant_method_needs_the_flag(gptq, tmp_path):
    """An early AutoGPTQ file names no method: the error names the file and the flag; with it, the checkpoint runs."""
    path, _ = gptq
    qcfg = {k: v for k, v in json.loads((path / "config.json").read_text())["quantization_config"].items()
            if k != "quant_method"}
    side = _side_file(path, tmp_path / "old", "quantize_config.json", qcfg)
    with pytest.raises(ValueError, match=r"quantize_config\.json \(the checkpoint's quantization config; config\.json "
                                         r"has none\) does not name its quant_method: pass --quantization gptq"):
        _llm(side)
    assert _outputs(_llm(side, quantization="gptq")) == _outputs(_llm(path))


def test_autoawq_quant_config_json_is_read(awq, tmp_path):
    """AutoAWQ's own quant_config.json (w_bit, q_group_size, version GEMM; no quant_method) with -q awq, as vLLM."""
    path, ref = awq
    side = _side_file(path, tmp_path / "autoawq", "quant_config.json",
                      {"zero_point": True, "q_group_size": GROUP, "w_bit": 4, "version": "GEMM"})
    with pytest.raises(ValueError, match=r"quant_config\.json .* does not name its quant_method"):
        _llm(side)
    llm = _llm(side, quantization="awq")
    assert _outputs(llm) == _outputs(_llm(path))
    _assert_matches_hf(llm, ref)


def test_quant_config_file_disagreeing_with_the_flag_is_refused(gptq, tmp_path):
    path, _ = gptq
    side = _side_file(path, tmp_path / "side", "quantize_config.json")
    with pytest.raises(ValueError, match=r"quantized with 'gptq' but --quantization 'awq' was given"):
        _llm(side, quantization="awq")


def test_quant_config_file_problems_name_the_file(gptq, tmp_path):
    path, _ = gptq
    both = _side_file(path, tmp_path / "both", "quantize_config.json")
    (both / "quant_config.json").write_text((both / "quantize_config.json").read_text())
    with pytest.raises(ValueError, match=r"several quantization config files \(quantize_config\.json, "
                                         r"quant_config\.json\)"):
        _llm(both)
    other = _side_file(path, tmp_path / "other", "quantize_config.json", {"quant_method": "bitblas", "bits": 4})
    with pytest.raises(ValueError, match=r"quantize_config\.json's quant_method 'bitblas' is not supported"):
        _llm(other)
    broken = _side_file(path, tmp_path / "broken", "quantize_config.json")
    (broken / "quantize_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"quantize_config\.json must hold a JSON object"):
        _llm(broken)


def test_config_json_wins_over_a_side_file(gptq, tmp_path):
    """A repo with both (later AutoGPTQ writes both, the same): config.json's quantization_config is the one read."""
    path, _ = gptq
    dst = tmp_path / "both"
    shutil.copytree(path, dst)
    (dst / "quantize_config.json").write_text(json.dumps({"quant_method": "gptq", "bits": 8, "group_size": 128}))
    assert _outputs(_llm(dst)) == _outputs(_llm(path))


def test_autogptq_marlin_format_flag_is_refused():
    from pagoda.quantization.gptq import GPTQConfig

    with pytest.raises(ValueError, match=r"is_marlin_format=True \(AutoGPTQ's Marlin layout\) is not supported"):
        GPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "is_marlin_format": True})
    assert GPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "is_marlin_format": False}).bits == 4


# ----------------------------------------------------------------------- GPTQ-for-LLaMa zero biases
def _with_biases(src: Path, dst: Path, value=None) -> Path:
    """``src`` with a zero fp16 ``bias`` beside every linear (GPTQ-for-LLaMa's way); ``value(name, bias)`` edits
    them."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = load_file(src / "model.safetensors")
    for k in list(sd):
        if k.endswith((".qweight", "proj.weight")):
            p = k.rpartition(".")[0]
            n = sd[f"{p}.scales"].shape[1] if k.endswith(".qweight") else sd[k].shape[0]
            bias = torch.zeros(n, dtype=torch.float16)
            sd[f"{p}.bias"] = value(p, bias) if value is not None else bias
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_gptq_for_llama_zero_biases_are_skipped(gptq, tmp_path):
    path, ref = gptq
    llm = _llm(_with_biases(path, tmp_path / "zero_bias"))
    assert _outputs(llm) == _outputs(_llm(path))
    _assert_matches_hf(llm, ref)


def test_zero_bias_on_a_plain_checkpoint_is_skipped_too(tiny, tmp_path):
    plain = tiny.path("llama")
    assert _outputs(_llm(_with_biases(plain, tmp_path / "plain_zero_bias"))) == _outputs(_llm(plain))


@pytest.mark.parametrize("bad", [1e-3, float("nan")])
def test_nonzero_bias_on_a_bias_free_layer_is_still_an_error(gptq, tmp_path, bad):
    path, _ = gptq
    target = "model.layers.1.mlp.down_proj"

    def one_nonzero(p: str, bias: torch.Tensor) -> torch.Tensor:
        if p == target:
            bias[3] = bad
        return bias

    dst = _with_biases(path, tmp_path / "nonzero_bias", one_nonzero)
    with pytest.raises(ValueError, match=rf"Checkpoint tensor '{target}\.bias' has no place in LlamaForCausalLM "
                                         r"\(a nonzero bias"):
        _llm(dst)


# ----------------------------------------------------------------------- compressed-tensors' compression_config
def test_older_compressed_tensors_compression_config_is_read(tiny, tmp_path):
    """Older compressed-tensors checkpoints keep their config under config.json's ``compression_config`` (vLLM reads
    it); pagoda loaded them as plain models and failed on ``weight_scale`` having no place."""
    from ct_models import build_ct_checkpoint

    path = build_ct_checkpoint(tiny.path("llama"), tmp_path / "w4a16", "w4a16")
    old = tmp_path / "w4a16-compression-config"
    shutil.copytree(path, old)
    _edit_config(old, lambda c: c.update(compression_config=c.pop("quantization_config")))
    assert _outputs(_llm(old)) == _outputs(_llm(path))
