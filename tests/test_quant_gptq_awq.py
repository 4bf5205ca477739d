"""GPTQ and AWQ checkpoints: layouts, parity with the library's own dequantization, refusals, bad input.

Test data is written by the real tool: GPTQModel quantizes the tiny random Llama on the CPU
(``quant_checkpoints.py``, in a subprocess) in four GPTQ variants (4/8-bit, group 32 / whole input,
desc_act on/off, sym/asym; GPTQ v1 zero points) and two AWQ GEMM variants (group 32 and 64). The
reference is HF transformers (fp32) on a dense copy whose linear weights are the library's own
dequantization of the saved tensors. fp32 on both sides: greedy tokens equal by the top-5 rule
(a divergence only at a near-tie of the reference) and logprobs within ``ATOL`` of HF's.

The hand-computed layout tests need no library: they pin AutoAWQ's interleave and the GPTQ v1
zero-point offset to explicit words.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from engine_checks import PROMPTS, compare_top5, greedy, hf_greedy, our_top, top_ids
from engine_checks import assert_logprob_dict_close as close
from quant_checkpoints import VARIANTS as WRITTEN_VARIANTS

from pagoda.quantization import resolve_quantization
from pagoda.quantization.awq import AWQ_ORDER, AWQConfig, pack_awq, unpack_awq
from pagoda.quantization.gptq import GPTQConfig, pack_qzeros, v2_qzeros
from pagoda.quantization.packing import pack_int32, unpack_int32

ATOL = 1e-4  # fp32 logprobs: the same dequantized weights on both sides
NEAR_TIE = 1e-3
K = 5
N_TOKENS = 16
VARIANTS = list(WRITTEN_VARIANTS)  # every checkpoint GPTQModel writes (conftest gptq_checkpoints)


# ----------------------------------------------------------------------- layouts (no library needed)
def test_awq_interleave_hand_computed():
    """AutoAWQ packs output columns 0..7 of a word in fields [0, 2, 4, 6, 1, 3, 5, 7]: codes 1..8 give fields
    1,3,5,7,2,4,6,8 from the lowest nibble up, i.e. the word 0x86427531."""
    assert AWQ_ORDER == (0, 2, 4, 6, 1, 3, 5, 7)
    word = torch.tensor([[0x86427531 - 2**32]], dtype=torch.int32)
    assert unpack_awq(word).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert pack_awq(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])).tolist() == word.tolist()


def test_gptq_packing_hand_computed():
    """GPTQ qweight packs along the input dim, lowest bits first; v1 zero points store z-1 per field."""
    codes = torch.arange(8).view(8, 1)  # input rows 0..7 of one output column
    assert pack_int32(codes, 4, dim=0).tolist() == [[0x76543210]]
    assert unpack_int32(torch.tensor([[0x76543210]], dtype=torch.int32), 4, dim=0).view(-1).tolist() == list(range(8))
    eights = torch.full((1, 8), 8)  # 4-bit sym zero points
    assert pack_qzeros(eights, 4, "gptq").tolist() == [[0x77777777]]
    assert pack_qzeros(eights, 4, "gptq_v2").tolist() == [[0x88888888 - 2**32]]
    z = torch.tensor([[0, 15, 3, 0, 7, 1, 0, 9]])  # zeros of 0 borrow across fields in v1 words
    assert torch.equal(unpack_int32(v2_qzeros(pack_qzeros(z, 4, "gptq"), 4, "gptq"), 4, dim=1), z)
    z8 = torch.tensor([[0, 255, 128, 1]])
    assert torch.equal(unpack_int32(v2_qzeros(pack_qzeros(z8, 8, "gptq"), 8, "gptq"), 8, dim=1), z8)


# ----------------------------------------------------------------------- config refusals
@pytest.mark.parametrize("qcfg,match", [
    ({"bits": 3, "group_size": 128}, "bits=3"),
    ({"bits": 2}, "bits=2"),
    ({"bits": 4, "checkpoint_format": "marlin"}, "checkpoint_format='marlin'"),
    ({"bits": 4, "dynamic": {"-:.*down": {}}}, "dynamic"),
    ({"bits": 4, "lm_head": True}, "lm_head"),
    ({"bits": 4, "group_size": 0}, "group_size"),
    ({"bits": 4, "pack_dtype": "int16"}, "pack_dtype"),
])
def test_gptq_config_refusals(qcfg, match):
    with pytest.raises(ValueError, match=match):
        GPTQConfig.from_config({"quant_method": "gptq", **qcfg})


@pytest.mark.parametrize("qcfg,match", [
    ({"bits": 8}, "bits=8"),
    ({"bits": 4, "version": "gemv"}, "version='gemv'"),
    ({"bits": 4, "version": "exllama"}, "version='exllama'"),
    ({"bits": 4, "modules_to_not_convert": "down_proj"}, "modules_to_not_convert"),
])
def test_awq_config_refusals(qcfg, match):
    with pytest.raises(ValueError, match=match):
        AWQConfig.from_config({"quant_method": "awq", **qcfg})


def test_awq_modules_to_not_convert_routing():
    c = AWQConfig.from_config({"quant_method": "awq", "bits": 4, "group_size": 32, "version": "GEMM",
                               "modules_to_not_convert": ["layers.0.mlp", "k_proj"]})
    assert c.get_linear_method("model.layers.0.mlp.gate_up_proj", ("gate_proj", "up_proj")) is None
    assert c.get_linear_method("model.layers.1.mlp.gate_up_proj", ("gate_proj", "up_proj")) is not None
    assert c.get_linear_method("lm_head", ("lm_head",)) is None
    with pytest.raises(ValueError, match="only some of"):
        c.get_linear_method("model.layers.1.self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj"))


def test_forced_on_plain_checkpoint_is_dummy_only(tiny):
    """``--quantization gptq|awq`` on a plain checkpoint: defaults for dummy weights, an error for real ones."""
    hf = json.loads((tiny.path("llama") / "config.json").read_text())
    assert resolve_quantization(hf, "gptq", "dummy") == GPTQConfig(4, 128, False, True, "gptq", from_defaults=True)
    assert resolve_quantization(hf, "awq", "dummy").from_defaults
    for name in ("gptq", "awq"):
        with pytest.raises(ValueError, match=f"--quantization {name} needs a checkpoint quantized with {name}"):
            resolve_quantization(hf, name, "auto")


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_dummy_weights_run(tiny, method):
    """``--quantization`` forced on a plain config with dummy weights (the GPU benchmark's route), at a tiny size
    widened so the default group of 128 divides every input."""
    from pagoda import LLM

    llm = LLM(str(tiny.path("llama")), dtype="float32", load_format="dummy", quantization=method,
              hf_overrides={"hidden_size": 128, "head_dim": 32, "intermediate_size": 256}, max_model_len=64,
              num_gpu_blocks_override=8)
    out = llm.generate(PROMPTS[:2], greedy(max_tokens=4), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 4 for o in out)


# ----------------------------------------------------------------------- checkpoints by GPTQModel
@pytest.fixture(scope="module")
def qdir(gptq_checkpoints) -> Path:
    """Every variant quantized by GPTQModel, plus its dense reference (module docstring; tests/conftest.py)."""
    return gptq_checkpoints


_llms: dict[str, object] = {}


def _llm(path: Path):
    from pagoda import LLM

    if str(path) not in _llms:
        _llms[str(path)] = LLM(str(path), dtype="float32")
    return _llms[str(path)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_library_dequantization(qdir, variant):
    from transformers import AutoModelForCausalLM

    llm = _llm(qdir / variant)
    method = llm.llm_engine.cfg.hf_config["quantization_config"]["quant_method"]
    assert method == variant.split("-")[0]
    hf = AutoModelForCausalLM.from_pretrained(qdir / f"{variant}-dense", dtype=torch.float32).eval()
    prompts = PROMPTS[:4]
    outs = llm.generate(prompts, greedy(max_tokens=N_TOKENS, logprobs=K, prompt_logprobs=K), use_tqdm=False)
    full = 0
    for out in outs:
        ref = hf_greedy(hf, out.prompt_token_ids, N_TOKENS)
        comp = out.outputs[0]
        n = compare_top5(comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
                         [top_ids(r) for r in ref.step_logprobs], ref.step_logprobs, NEAR_TIE, what=variant)
        full += n == N_TOKENS
        for i in range(n):
            close(comp.logprobs[i], ref.step_logprobs[i], K, comp.token_ids[i], ATOL, f"{variant} step {i}")
        ids = out.prompt_token_ids
        for i in range(1, len(ids)):
            close(out.prompt_logprobs[i], ref.prompt_logprobs[i - 1], K, ids[i], ATOL, f"{variant} prompt {i}")
    assert full >= len(prompts) - 1


def test_checkpoints_cover_the_matrix(qdir):
    """The variants really are what their names say (act-order g_idx, bits, zero points, AWQ's zero_point)."""
    from safetensors import safe_open

    def tensor(variant: str, name: str) -> torch.Tensor:
        with safe_open(str(qdir / variant / "model.safetensors"), "pt") as f:
            return f.get_tensor(f"model.layers.0.{name}")

    g = tensor("gptq-b4-g32-desc-asym", "self_attn.q_proj.g_idx").long()
    assert not torch.equal(g, torch.arange(64) // 32)  # act-order: a real permutation
    assert tensor("gptq-b8-gall-sym", "self_attn.q_proj.qweight").shape == (64 // 4, 64)
    assert tensor("gptq-b8-gall-sym", "self_attn.q_proj.scales").shape == (1, 64)
    assert tensor("gptq-b4-g32-desc-asym", "mlp.down_proj.qzeros").shape == (4, 64 // 8)
    assert tensor("awq-g64", "mlp.down_proj.qweight").shape == (128, 64 // 8)
    assert tensor("awq-g64", "mlp.down_proj.scales").shape == (2, 64)


def test_awq_modules_to_not_convert_end_to_end(qdir, tmp_path):
    """A module AWQ left dense (``modules_to_not_convert``) loads as a plain weight."""
    from safetensors.torch import load_file, save_file

    src, dense = qdir / "awq-g32", qdir / "awq-g32-dense"
    dst = tmp_path / "awq-skip"
    shutil.copytree(src, dst)
    t = load_file(src / "model.safetensors")
    p = "model.layers.0.mlp.down_proj"
    for s in ("qweight", "qzeros", "scales"):
        del t[f"{p}.{s}"]
    t[f"{p}.weight"] = load_file(dense / "model.safetensors")[f"{p}.weight"]
    save_file(t, dst / "model.safetensors")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"]["modules_to_not_convert"] = [p]
    (dst / "config.json").write_text(json.dumps(cfg))
    ours = _llm(dst).generate(PROMPTS[:2], greedy(max_tokens=8), use_tqdm=False)
    base = _llm(src).generate(PROMPTS[:2], greedy(max_tokens=8), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in ours] == [o.outputs[0].token_ids for o in base]


# ----------------------------------------------------------------------- bad input
def _corrupt(src: Path, dst: Path, name: str, fn) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    t = load_file(src / "model.safetensors")
    t[name] = fn(t[name]).contiguous()
    save_file(t, dst / "model.safetensors")
    return dst


@pytest.mark.parametrize("variant,tensor,fn,match", [
    ("gptq-b4-g32-desc-asym", "model.layers.1.mlp.down_proj.qweight", lambda t: t[:-1], "shape mismatch for qweight"),
    ("gptq-b4-g32-desc-asym", "model.layers.0.self_attn.o_proj.scales", lambda t: t[:, :-8], "shape mismatch"),
    ("gptq-b4-g32-desc-asym", "model.layers.0.mlp.down_proj.g_idx", lambda t: t + 3, "g_idx: group index out of"),
    ("gptq-b4-g32-desc-asym", "model.layers.0.mlp.down_proj.g_idx", lambda t: torch.zeros_like(t),
     "g_idx: every group must have exactly 32"),
    ("awq-g32", "model.layers.0.mlp.up_proj.qzeros", lambda t: t[:1], "shape mismatch for qzeros"),
])
def test_bad_tensors_fail_at_start_up(qdir, tmp_path, variant, tensor, fn, match):
    from pagoda import LLM

    path = _corrupt(qdir / variant, tmp_path / "bad", tensor, fn)
    module = tensor.rsplit(".", 1)[0].rsplit(".", 1)[0]
    with pytest.raises(Exception, match=match) as e:
        LLM(str(path), dtype="float32")
    assert module in str(e.value)


def test_unsupported_bits_fail_at_start_up(qdir, tmp_path):
    from pagoda import LLM

    dst = tmp_path / "b3"
    shutil.copytree(qdir / "gptq-b8-g32-asym", dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"]["bits"] = 3
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bits=3 is not supported"):
        LLM(str(dst), dtype="float32")
