"""quantization_config keys the writers really emit: each one that changes the math is honoured or refused at
start-up naming it, and the ones that do not change it are accepted.

- GPTQ / AWQ: GPTQModel writes ``rotation`` (QuaRot / SpinQuant: its runtime applies an online Hadamard transform
  to ``down_proj``'s input) and ``activation`` (W4A FP8 / NVFP4 activations) when used, and ``dynamic``,
  ``lm_head``, ``pack_dtype``, ``desc_act`` and its layout in ``format`` / ``checkpoint_format`` / ``version`` for
  AWQ too. Before, GPTQ ran a rotated checkpoint without the rotation, and AWQ read a ``format: gemv`` checkpoint
  (no ``version`` key) as GEMM, ignoring the others: silently wrong answers.
- GPTQ without ``g_idx`` tensors (desc_act false): transformers and vLLM load it with the trivial group map; pagoda
  refused it as missing weights. With act-order the map is required.
- FP8: transformers' ``FineGrainedFP8Config`` writes ``dequantize``, ``scale_fmt``, ``expert_dtype`` and
  ``modules_to_convert``; pagoda refused any such checkpoint as having unknown keys. ``scale_fmt: ue8m0`` weight
  scales stored as ``float8_e8m0fnu`` load exactly.
- Block FP8 whose fused shards are not whole ``block_n`` rows (vLLM refuses these too): the error names the layer,
  its shard sizes and the block, instead of a packing factor.
- GGUF: a tensor type pagoda does not keep quantized names ``--load-format safetensors``, which runs the file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from engine_checks import greedy
from test_bad_quantized_checkpoints import _gptq
from test_quant_fp8 import _write_fp8_checkpoint

from pagoda.quantization.awq import AWQConfig
from pagoda.quantization.fp8 import Fp8Config
from pagoda.quantization.gptq import GPTQConfig

PROMPTS = ["The quick brown fox", "Paris is the capital of"]


def _llm(path: Path, **kw):
    from pagoda import LLM

    return LLM(str(path), dtype="float32", max_model_len=64, num_gpu_blocks_override=8, **kw)


def _outputs(llm) -> list[tuple[list[int], list[float]]]:
    outs = llm.generate(PROMPTS, greedy(6, logprobs=1), use_tqdm=False)
    return [(o.outputs[0].token_ids, [d[t].logprob for d, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids,
                                                                        strict=True)]) for o in outs]


def _with_qcfg(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ----------------------------------------------------------------------- the method
@pytest.mark.parametrize("requested", [None, "bitsandbytes"])
def test_checkpoint_method_pagoda_lacks_names_config_json(requested):
    """A checkpoint of another method (bitsandbytes, Meta's fbgemm_fp8, modelopt...): the error says the method came
    from config.json, not from a flag the user did not pass."""
    from pagoda.quantization import resolve_quantization

    with pytest.raises(ValueError, match=r"config\.json's quantization_config\.quant_method 'bitsandbytes' is not "
                                         r"supported by pagoda \(supported: fp8, "):
        resolve_quantization({"quantization_config": {"quant_method": "bitsandbytes"}}, requested)


# ----------------------------------------------------------------------- GPTQ / AWQ keys
GPTQMODEL_KEYS = [  # (key, value, what the error says)
    ("rotation", "hadamard", r"rotation='hadamard' \(an online Hadamard rotation"),
    ("rotation", "random", r"rotation='random'"),
    ("activation", "w4afp8", r"activation='w4afp8' \(quantized activations"),
    ("activation", {"mode": "w4a_nvfp4"}, r"activation=\{'mode': 'w4a_nvfp4'\}"),
    ("dynamic", {"-:.*down_proj": {}}, r"dynamic \(per-module overrides\)"),
    ("lm_head", True, r"lm_head=true"),
    ("lm_head", "yes", r"lm_head must be true or false"),
    ("pack_dtype", "int16", r"pack_dtype='int16'"),
]


@pytest.mark.parametrize("method,cls,base", [("GPTQ", GPTQConfig, {"bits": 4, "group_size": 32}),
                                             ("AWQ", AWQConfig, {"bits": 4, "group_size": 32, "version": "gemm"})])
@pytest.mark.parametrize("key,value,match", GPTQMODEL_KEYS, ids=[f"{k}-{i}" for i, (k, _, _) in
                                                                 enumerate(GPTQMODEL_KEYS)])
def test_gptqmodel_keys_that_change_the_math_are_refused(method, cls, base, key, value, match):
    with pytest.raises(ValueError, match=rf"{method} quantization_config\.{match}"):
        cls.from_config({"quant_method": method.lower(), **base, key: value})


@pytest.mark.parametrize("qcfg,match", [
    ({"format": "gemv"}, "format='gemv'"),  # GPTQModel's AWQ layouts: all three keys carry them
    ({"checkpoint_format": "gemv_fast"}, "checkpoint_format='gemv_fast'"),
    ({"version": "gemm", "format": "llm-awq"}, "format='llm-awq'"),
    ({"version": "gemm", "backend": "llm-awq"}, r"backend='llm-awq' \(its packing\)"),
    ({"version": "gemm", "desc_act": True}, r"desc_act=True \(act-order\)"),
])
def test_awq_layouts_other_than_gemm_are_refused(qcfg, match):
    with pytest.raises(ValueError, match=match):
        AWQConfig.from_config({"quant_method": "awq", "bits": 4, "group_size": 32, **qcfg})


def test_configs_as_the_writers_emit_them_are_accepted():
    """GPTQModel's keys at their unused values (it drops ``None`` ones), transformers' / AutoAWQ's spellings."""
    shared = {"dynamic": {}, "lm_head": False, "pack_dtype": "int32", "meta": {"quantizer": ["gptqmodel:7.7.0"]},
              "desc_act": False}
    gptq = GPTQConfig.from_config({"quant_method": "gptq", "method": "gptq", "bits": 4, "group_size": 32, "sym": True,
                                   "format": "gptq", "checkpoint_format": "gptq", "true_sequential": True,
                                   "static_groups": False, "damp_percent": 0.05, **shared})
    assert (gptq.bits, gptq.group_size, gptq.checkpoint_format) == (4, 32, "gptq")
    awq = AWQConfig.from_config({"quant_method": "awq", "method": "awq", "bits": 4, "group_size": 64,
                                 "format": "gemm", "checkpoint_format": "gemm", "version": "gemm",
                                 "zero_point": False, **shared})
    assert awq.group_size == 64
    assert AWQConfig.from_config({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "GEMM",
                                  "zero_point": True, "backend": "autoawq", "modules_to_not_convert": None})


def test_rotated_gptq_checkpoint_fails_at_start_up(tiny, tmp_path):
    src = _gptq(tiny.path("llama"), tmp_path / "gptq")
    path = _with_qcfg(src, tmp_path / "rotated", rotation="hadamard")
    with pytest.raises(ValueError, match=r"GPTQ quantization_config\.rotation='hadamard'"):
        _llm(path)


# ----------------------------------------------------------------------- GPTQ without g_idx
def _drop_g_idx(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = {k: v for k, v in load_file(src / "model.safetensors").items() if not k.endswith(".g_idx")}
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_gptq_without_g_idx_runs_with_the_trivial_groups(tiny, tmp_path):
    """The hand-packed checkpoint's g_idx is the trivial map, so dropping it changes nothing; with desc_act true
    the map is the checkpoint's act-order and its absence is an error naming the tensor."""
    src = _gptq(tiny.path("llama"), tmp_path / "gptq")
    ref = _outputs(_llm(src))
    bare = _drop_g_idx(src, tmp_path / "no_g_idx")
    assert _outputs(_llm(bare)) == ref
    act_order = _with_qcfg(bare, tmp_path / "desc_act", desc_act=True)
    with pytest.raises(ValueError, match=r"lacks weights: \['layers\.0\..*\.g_idx'"):
        _llm(act_order)


# ----------------------------------------------------------------------- GPTQ modules_in_block_to_quantize
def _partial_gptq(base: Path, dst: Path, quantized: tuple[str, ...]) -> tuple[Path, Path]:
    """The tiny Llama with only the linears whose name contains one of ``quantized`` as GPTQ (4-bit, group 32,
    asym, v1 zero points), and its dense reference: the same model with those weights dequantized."""
    from safetensors.torch import load_file, save_file

    from pagoda.quantization.gptq import pack_qzeros
    from pagoda.quantization.packing import pack_int32

    ref = dst.with_name(dst.name + "-dense")
    shutil.copytree(base, dst)
    shutil.copytree(base, ref)
    g = torch.Generator().manual_seed(1)
    out, dense = {}, {}
    for k, w in load_file(base / "model.safetensors").items():
        dense[k] = out[k] = w
        if not (k.endswith("proj.weight") and any(m in k for m in quantized)):
            continue
        p = k[: -len(".weight")]
        n, kin = w.shape
        codes = torch.randint(0, 16, (kin, n), generator=g)
        zeros = torch.randint(0, 16, (kin // 32, n), generator=g)
        scales = (torch.rand(kin // 32, n, generator=g) * 0.02 + 0.01).half()
        del out[k]
        out |= {f"{p}.qweight": pack_int32(codes, 4, dim=0), f"{p}.qzeros": pack_qzeros(zeros, 4, "gptq"),
                f"{p}.scales": scales, f"{p}.g_idx": (torch.arange(kin) // 32).int()}
        group = torch.arange(kin) // 32
        dense[k] = (scales.float()[group] * (codes - zeros[group]).float()).t().contiguous()
    (dst / "model.safetensors").unlink()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    save_file(dense, ref / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False,
                                  "sym": False, "modules_in_block_to_quantize": [["mlp.gate_proj", "mlp.up_proj"],
                                                                                 ["mlp.down_proj"]]}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, ref


def test_gptq_modules_in_block_to_quantize_leaves_the_others_dense(tiny, tmp_path):
    """Only the MLP is GPTQ (transformers' and vLLM's reading); attention loads dense. Prompt logprobs equal HF's
    on the dequantized weights."""
    from engine_checks import hf_greedy
    from transformers import AutoModelForCausalLM

    path, ref = _partial_gptq(tiny.path("llama"), tmp_path / "mlp_only", ("mlp.",))
    llm = _llm(path)
    qkv = next(m for n, m in llm.llm_engine.core.runner.model.named_modules() if n.endswith("0.self_attn.qkv_proj"))
    assert hasattr(qkv, "weight") and not hasattr(qkv, "int_weight")
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32).eval()
    outs = llm.generate(PROMPTS, greedy(6, prompt_logprobs=0), use_tqdm=False)
    for out in outs:
        want = hf_greedy(model, out.prompt_token_ids, 6)
        assert out.outputs[0].token_ids == want.tokens
        for i, d in enumerate(out.prompt_logprobs[1:]):
            for tid, lp in d.items():
                assert abs(lp.logprob - float(want.prompt_logprobs[i, tid])) < 1e-4


def test_gptq_modules_in_block_to_quantize_splitting_a_fused_layer_is_refused():
    c = GPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "group_size": 32,
                                "modules_in_block_to_quantize": [["self_attn.q_proj"], ["mlp.down_proj"]]})
    assert c.get_linear_method("model.layers.0.mlp.down_proj") is not None
    assert c.get_linear_method("model.layers.0.mlp.gate_up_proj", ("gate_proj", "up_proj")) is None
    with pytest.raises(ValueError, match=r"GPTQ modules_in_block_to_quantize covers only some of"):
        c.get_linear_method("model.layers.0.self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj"))
    with pytest.raises(ValueError, match=r"modules_in_block_to_quantize must be lists of module names"):
        GPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "modules_in_block_to_quantize": "mlp"})


# ----------------------------------------------------------------------- FP8
def _hf_fp8_qcfg(**changes) -> dict:
    from transformers import FineGrainedFP8Config

    return {**json.loads(FineGrainedFP8Config(weight_block_size=(32, 32)).to_json_string()), **changes}


def test_transformers_fine_grained_fp8_config_loads(tiny, tmp_path):
    """A block-FP8 checkpoint whose config transformers wrote (every FineGrainedFP8Config key) runs exactly as the
    same checkpoint with vLLM's minimal config; ``scale_fmt: ue8m0`` scales stored as float8_e8m0fnu too."""
    from safetensors.torch import load_file, save_file

    qcfg = _hf_fp8_qcfg()
    assert {"dequantize", "scale_fmt", "expert_dtype", "modules_to_convert"} <= set(qcfg)
    plain = _write_fp8_checkpoint(tiny.path("llama"), tmp_path / "plain", False, False, block=32)
    sd = load_file(plain / "model.safetensors")
    for k in [k for k in sd if k.endswith("weight_scale_inv")]:  # power-of-two scales: exact in e8m0
        w = sd[k[: -len("_scale_inv")]].float() * sd[k].repeat_interleave(32, 0).repeat_interleave(32, 1)
        sd[k] = torch.exp2(torch.ceil(torch.log2(sd[k])))
        full = sd[k].repeat_interleave(32, 0).repeat_interleave(32, 1)
        sd[k[: -len("_scale_inv")]] = (w / full).clamp(-448, 448).to(torch.float8_e4m3fn)
    save_file(sd, plain / "model.safetensors")
    ref = _outputs(_llm(plain))
    hf = _with_qcfg(plain, tmp_path / "hf", **qcfg)
    assert _outputs(_llm(hf)) == ref
    e8m0 = _with_qcfg(plain, tmp_path / "e8m0", **_hf_fp8_qcfg(scale_fmt="ue8m0"))
    sd = {k: v.to(torch.float8_e8m0fnu) if k.endswith("weight_scale_inv") else v for k, v in sd.items()}
    save_file(sd, e8m0 / "model.safetensors")
    assert _outputs(_llm(e8m0)) == ref


@pytest.mark.parametrize("key,value", [("dequantize", True), ("expert_dtype", "fp4"),
                                       ("modules_to_convert", ["model.embed_tokens"]), ("scale_fmt", "e5m2")])
def test_fine_grained_fp8_values_pagoda_does_not_run_are_refused(key, value):
    with pytest.raises(ValueError, match=re.escape(f"fp8 quantization_config {key}={value!r} is not supported")):
        Fp8Config.from_config(_hf_fp8_qcfg(**{key: value}))


def test_block_fp8_shards_not_whole_blocks_name_the_layer(tiny, tmp_path):
    """q/k/v of the tiny model are 64/32/32 rows: blocks of 64 rows do not start at k's and v's first rows."""
    path = _write_fp8_checkpoint(tiny.path("llama"), tmp_path / "b64", False, False, block=32)
    path = _with_qcfg(path, tmp_path / "b64x32", weight_block_size=[64, 32])
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.qkv_proj: fp8 weight_block_size \[64, 32\] "
                                         r"needs the output sizes of the modules fused into this layer, \[64, 32, "
                                         r"32\], to be multiples of block_n 64"):
        _llm(path)


# ----------------------------------------------------------------------- GGUF
def test_gguf_type_not_kept_quantized_names_the_way_to_run_it(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from test_gguf import LAYER_TYPES, _tiny_quantized_gguf

    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    path = _tiny_quantized_gguf(tmp_path / "iq4.gguf", True, {**LAYER_TYPES, "ffn_down": "IQ4_NL"})
    with pytest.raises(ValueError, match=r"'blk\.0\.ffn_down\.weight' .* has type IQ4_NL, .*; --load-format "
                                         r"safetensors runs the file's dequantized conversion"):
        _llm(path)
    assert len(_outputs(_llm(path, load_format="safetensors"))[0][0]) == 6


def _tensor_offset_field(data: bytes, name: str) -> int:
    """Where tensor ``name``'s u64 data offset sits in the header."""
    from test_bad_quantized_checkpoints import _tensor_info_at

    p, nd = _tensor_info_at(data, name)
    return p + 4 + 8 * nd + 4


@pytest.mark.parametrize("case", ["misaligned", "overlapping"])
def test_gguf_tensor_offsets_off_the_layout_fail_naming_the_tensor(tmp_path, monkeypatch, case):
    """A corrupt data offset read another tensor's bytes (or bytes across blocks) as this tensor's weights."""
    import struct

    pytest.importorskip("gguf")
    from test_gguf import _tiny_quantized_gguf

    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    data = bytearray(_tiny_quantized_gguf(tmp_path / "tiny.gguf", True).read_bytes())
    at = _tensor_offset_field(bytes(data), "blk.0.ffn_down.weight")
    if case == "misaligned":
        struct.pack_into("<Q", data, at, struct.unpack_from("<Q", data, at)[0] + 2)
        match = r"tensor 'blk\.0\.ffn_down\.weight' starts at data offset \d+, not a multiple of general\.alignment 32"
    else:  # blk.0.ffn_down takes blk.1.ffn_down's bytes (same type and shape)
        other = _tensor_offset_field(bytes(data), "blk.1.ffn_down.weight")
        struct.pack_into("<Q", data, at, struct.unpack_from("<Q", data, other)[0])
        # each tensor's data must start where the previous one's ends (llama.cpp's rule), which refuses an overlap
        match = r"tensor 'blk\.0\.ffn_down\.weight' has data offset \d+, expected \d+"
    bad = tmp_path / f"{case}.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=match):
        _llm(bad)
