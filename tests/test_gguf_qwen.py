"""Qwen-family GGUF files (llama.cpp's ``qwen3``, ``qwen2moe``, ``qwen3moe``) kept quantized, MoE experts included.

Each tiny model is written the way llama.cpp's converter lays it out (no q/k row interleaving for Qwen; experts
stacked ``[E, out, in]`` in ``ffn_{gate,up,down}_exps``; the router ``ffn_gate_inp`` and the shared-expert gate
``ffn_gate_inp_shexp`` (``[H]``) in F32), then run quantized against its dequantized conversion (transformers' GGUF
reader, ``gguf.dequantize``) in float32: same greedy tokens, logprobs within 2e-4. ``qwen3moe`` uses the real
Q4_K_M pattern for experts (gate/up Q4_K, down Q6_K: random blocks with small scales, as ``gguf.quants`` cannot
write K-quants); ``qwen2moe`` quantizes the HF weights with ``gguf.quants`` (experts Q4_0 / Q5_1 / Q8_0) and has a
shared expert and q/k/v biases; ``qwen3`` is dense with q/k norms and a head_dim transformers' GGUF config reader
does not read (``model_files._complete_gguf_config``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_checks import greedy
from test_model_files import SPECIALS, _vocab

from pagoda.quantization.gguf_blocks import FORMATS

gguf = pytest.importorskip("gguf")

HIDDEN, INTER = 256, 256  # K-quant blocks need rows of 256 inputs
CASES = {
    # name: (HF config class, gguf arch, config fields, expert types gate/up/down, other matrices' type)
    "qwen3moe": ("Qwen3MoeConfig", gguf.MODEL_ARCH.QWEN3MOE,
                 {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": INTER, "head_dim": 32,
                  "norm_topk_prob": True}, ("Q4_K", "Q4_K", "Q6_K"), "Q8_0"),
    "qwen2moe": ("Qwen2MoeConfig", gguf.MODEL_ARCH.QWEN2MOE,
                 {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                  "shared_expert_intermediate_size": 96}, ("Q4_0", "Q4_0", "Q5_1"), "Q4_1"),
    "qwen3": ("Qwen3Config", gguf.MODEL_ARCH.QWEN3, {"head_dim": 48}, None, "Q5_0"),
}


def _k_blocks(type_name: str, rows: int, in_f: int, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant rows whose super-block scales keep weights within about ±0.4."""
    fmt = FORMATS[type_name]
    raw = rng.integers(0, 256, size=(rows, in_f // fmt.block, fmt.type_size), dtype=np.uint8)
    scale = {"Q4_K": 4e-4, "Q6_K": 1e-4}[type_name]
    for pos in ([208] if type_name == "Q6_K" else [0, 2]):
        raw[..., pos:pos + 2] = (rng.uniform(0.5, 1.0, size=raw.shape[:2]) * scale).astype(np.float16)[..., None].view(
            np.uint8)
    return raw.reshape(rows, -1)


def _write(path: Path, case: str) -> Path:
    import transformers

    cls_name, arch, fields, expert_types, other = CASES[case]
    cfg = getattr(transformers, cls_name)(
        vocab_size=len(_vocab()), hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=0, pad_token_id=0, **fields)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # weights large enough that every layer moves the logits
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.3)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]) if hasattr(cfg, "rope_parameters")
                         else float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(1e-6)
    if "head_dim" in fields:
        w.add_key_length(fields["head_dim"])
        w.add_value_length(fields["head_dim"])
    if expert_types:
        w.add_expert_count(fields["num_experts"])
        w.add_expert_used_count(fields["num_experts_per_tok"])
        w.add_expert_feed_forward_length(fields["moe_intermediate_size"])
        if "shared_expert_intermediate_size" in fields:
            w.add_expert_shared_feed_forward_length(fields["shared_expert_intermediate_size"])
    tokens = _vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(["h e", "l l"])
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)

    def put(name: str, array: np.ndarray, type_name: str | None) -> None:
        if type_name is None or array.ndim == 1:
            w.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        elif type_name.endswith("_K"):
            raw = _k_blocks(type_name, int(np.prod(array.shape[:-1])), array.shape[-1], rng)
            w.add_tensor(name, raw.reshape(*array.shape[:-1], -1), raw_dtype=gguf.GGMLQuantizationType[type_name])
        else:
            qtype = gguf.GGMLQuantizationType[type_name]
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(array), qtype), raw_dtype=qtype)

    names = gguf.get_tensor_name_map(arch, 2)
    for name, array in sd.items():
        base, suffix = name.rsplit(".", 1)
        if ".mlp.experts." in name:  # transformers 5 fuses experts: gate_up_proj [E, 2I, H], down_proj [E, H, I]
            layer = name.split(".")[2]
            assert expert_types is not None
            if name.endswith("gate_up_proj"):
                gate, up = np.split(array, 2, axis=1)
                put(f"blk.{layer}.ffn_gate_exps.weight", gate, expert_types[0])
                put(f"blk.{layer}.ffn_up_exps.weight", up, expert_types[1])
            else:
                put(f"blk.{layer}.ffn_down_exps.weight", array, expert_types[2])
            continue
        gname = names.get_name(base)
        assert gname is not None, name
        if base.endswith("shared_expert_gate"):
            array = array.reshape(-1)  # llama.cpp keeps it as [H]
        dense = base.endswith(".mlp.gate") or "norm" in base
        put(f"{gname}.{suffix}", array, None if dense else other)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_qwen_gguf_runs_quantized_like_its_dequantized_conversion(tmp_path, tmp_cache, case):
    from pagoda import LLM
    from pagoda.layers.fused_moe import FusedMoE

    path = _write(tmp_path / f"{case}.gguf", case)
    kw = dict(device="cpu", dtype="float32", max_model_len=128, kv_cache_memory_bytes=1 << 20, enforce_eager=True)
    quant_llm = LLM(model=str(path), **kw)
    model = quant_llm.llm_engine.core.runner.model
    assert quant_llm.llm_engine.cfg.hf_config["quantization_config"]["quant_method"] == "gguf"
    dense = [n for n, p in model.named_parameters() if p.dim() == 2 and ".mlp.gate." not in n
             and "shared_expert_gate" not in n]
    assert not dense, f"matrices left dense: {dense}"
    moes = [m for m in model.modules() if isinstance(m, FusedMoE)]
    assert len(moes) == (0 if CASES[case][3] is None else 2)
    for moe in moes:  # on the CPU each expert keeps its IntWeight (the stacked forms are tested on the GPU)
        assert moe.quant is not None
        w13, w2 = moe.quant.weight("w13"), moe.quant.weight("w2")
        forms = {(w.bits, w.group_size) for parts in w13.parts for w in parts}, {
            (w.bits, w.group_size) for parts in w2.parts for w in parts}
        if case == "qwen3moe":  # Q4_K: 4-bit codes, groups of 32; Q6_K: 6-bit codes, groups of 16
            assert forms == ({(4, 32)}, {(6, 16)})
        else:  # Q4_0 gate/up; Q5_1 down
            assert forms == ({(4, 32)}, {(5, 32)})

    _assert_matches_dequantized(quant_llm, path, kw)


def _assert_matches_dequantized(quant_llm, path: Path, kw: dict) -> None:
    """Greedy tokens and logprobs of ``quant_llm`` (the GGUF run quantized) against its dequantized conversion."""
    from pagoda import LLM
    from pagoda.models.model_files import has_weights, resolve_model

    prompts = [[1, 40, 60, 70, 80, 90, 100, 120], [5, 6, 7, 8, 9]]
    sp = greedy(max_tokens=10, logprobs=5)
    quant = quant_llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    del quant_llm
    folder = resolve_model(str(path))
    assert not has_weights(folder), "the quantized run needs no dequantized copy of the weights"
    ref = LLM(model=str(path), load_format="safetensors", **kw).generate(
        [{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    assert has_weights(folder)  # written by the dequantized run, once
    # The same weights in float32: same tokens; logprobs differ only by summation order (the quantized CPU kernels
    # against a dense matmul, logits of a few units here): measured at most 1.04e-4 (qwen2moe), bound 2e-4.
    for q, d in zip(quant, ref, strict=True):
        assert q.outputs[0].token_ids == d.outputs[0].token_ids
        for lq, ld in zip(q.outputs[0].logprobs, d.outputs[0].logprobs, strict=True):
            for tok, entry in ld.items():
                assert lq[tok].logprob == pytest.approx(entry.logprob, abs=2e-4)


def test_f16_experts_run_the_dequantized_conversion(tmp_path, tmp_cache, monkeypatch):
    """Experts stored F16/F32 in a GGUF cannot take the quantized experts' stacked forms: the default load runs the
    dequantized conversion, and ``--quantization gguf`` is refused naming the experts' type."""
    from pagoda.config import EngineArgs

    monkeypatch.setitem(CASES, "qwen2moe", (*CASES["qwen2moe"][:3], (None, None, None), "Q4_1"))
    path = _write(tmp_path / "f32-experts.gguf", "qwen2moe")
    cfg = EngineArgs(model=str(path), device="cpu").create_config()
    assert "quantization_config" not in cfg.hf_config
    with pytest.raises(ValueError, match=r"--quantization gguf: the experts of f32-experts\.gguf are F32, not "
                                         r"quantized"):
        EngineArgs(model=str(path), device="cpu", quantization="gguf").create_config()


@pytest.mark.parametrize("stacked", [False, True], ids=["cpu-form", "stacked"])
def test_gate_and_up_of_different_bit_widths(tmp_path, tmp_cache, monkeypatch, stacked):
    """Q4_0 gate and Q8_0 up: the CPU form keeps each expert's own IntWeight; the stacked form (CUDA's) stores
    the layer's gate/up codes one per byte. Both run like the dequantized conversion."""
    from pagoda import LLM
    from pagoda.layers.fused_moe import FusedMoE
    from pagoda.layers.fused_moe.quantized import MODE_INT8, QuantizedExperts

    monkeypatch.setattr(QuantizedExperts, "cpu_per_expert", not stacked)
    monkeypatch.setitem(CASES, "qwen2moe", (*CASES["qwen2moe"][:3], ("Q4_0", "Q8_0", "Q4_0"), "Q4_1"))
    path = _write(tmp_path / "mixed.gguf", "qwen2moe")
    kw = dict(device="cpu", dtype="float32", max_model_len=128, kv_cache_memory_bytes=1 << 20, enforce_eager=True)
    llm = LLM(model=str(path), **kw)
    if stacked:
        moe = next(m for m in llm.llm_engine.core.runner.model.modules() if isinstance(m, FusedMoE))
        assert moe.quant is not None and moe.quant.weight("w13").mode == MODE_INT8
    _assert_matches_dequantized(llm, path, kw)


def test_stacked_gate_and_up_of_different_group_sizes_are_refused(tmp_path, tmp_cache, monkeypatch):
    from pagoda.config import EngineArgs
    from pagoda.layers.fused_moe.quantized import QuantizedExperts
    from pagoda.models.loader import load_model

    monkeypatch.setattr(QuantizedExperts, "cpu_per_expert", False)
    monkeypatch.setitem(CASES, "qwen3moe", (*CASES["qwen3moe"][:3], ("Q4_K", "Q6_K", "Q6_K"), "Q8_0"))
    path = _write(tmp_path / "mixed.gguf", "qwen3moe")
    want = (r"experts\.0\.up_proj: quantized as 5-8-bit codes, groups of 16, other experts of this layer \(or its "
            r"gate projection\) as 4-bit codes, groups of 32; pagoda needs one scale layout")
    with pytest.raises(ValueError, match=want):
        load_model(EngineArgs(model=str(path), device="cpu").create_config())
