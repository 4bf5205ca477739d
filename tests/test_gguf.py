"""GGUF weights kept quantized: block formats against ``gguf.dequantize``, a tiny quantized Llama written with
``gguf``'s own quantizers run quantized against its dequantized conversion, bad files, and the real default model.

K-quants cannot be written by ``gguf.quants``: their blocks are built byte-wise here (any bytes are a valid block
once the f16 super-scales are finite) and checked against ``gguf.dequantize``; the real default model (Q4_1,
Q8_0) is checked by the ``default_model`` tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_checks import compare_top5, greedy, our_top
from test_model_files import SPECIALS, _llama_cpp_permute, _vocab

from pagoda.quantization.gguf_blocks import FORMATS, decode_blocks, q8_0_codes

gguf = pytest.importorskip("gguf")


def _dequant(type_name: str, raw: np.ndarray, in_f: int) -> torch.Tensor:
    codes, scales, offsets, fmt = decode_blocks(type_name, torch.from_numpy(raw), in_f)
    assert codes.dtype == torch.uint8 and int(codes.max()) < 2**fmt.bits
    q = codes.view(codes.shape[0], -1, fmt.group).float()
    return (q * scales.unsqueeze(-1) + offsets.unsqueeze(-1)).reshape(codes.shape[0], in_f)


def _random_blocks(type_name: str, rows: int, in_f: int, seed: int = 0) -> np.ndarray:
    """Random bytes with finite f16 scales (at the positions ggml keeps them) in every block."""
    fmt = FORMATS[type_name]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, in_f // fmt.block, fmt.type_size), dtype=np.uint8)
    f16_at = {"Q6_K": [208]}.get(type_name, [0, 2] if type_name.endswith(("_1", "_K")) else [0])
    for pos in f16_at:
        raw[..., pos:pos + 2] = rng.uniform(-0.1, 0.1, size=raw.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("type_name", sorted(FORMATS))
def test_blocks_match_gguf_dequantize(type_name):
    qtype = gguf.GGMLQuantizationType[type_name]
    raw = _random_blocks(type_name, rows=6, in_f=512)
    ref = torch.from_numpy(gguf.dequantize(raw, qtype).astype(np.float32))
    assert torch.equal(_dequant(type_name, raw, 512), ref)


def test_q8_0_codes_are_the_files_signed_codes_and_scales():
    """``q8_0_codes`` (the CPU's Q8_0 LM head reads them) gives ``gguf.dequantize``'s values as codes * scales."""
    raw = _random_blocks("Q8_0", rows=5, in_f=256)
    codes, scales = q8_0_codes(torch.from_numpy(raw), 256)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32 and tuple(scales.shape) == (5, 8)
    ref = torch.from_numpy(gguf.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).astype(np.float32))
    assert torch.equal((codes.float().view(5, 8, 32) * scales.unsqueeze(-1)).view(5, 256), ref)
    with pytest.raises(ValueError, match="does not hold rows of 128 weights"):
        q8_0_codes(torch.from_numpy(raw), 128)


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantizer_output_round_trips(type_name):
    """Blocks written by gguf's own quantizer decode to what gguf.dequantize gives (and near the input)."""
    qtype = gguf.GGMLQuantizationType[type_name]
    w = np.random.default_rng(1).normal(size=(8, 96)).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)
    ours = _dequant(type_name, raw, 96)
    assert torch.equal(ours, torch.from_numpy(gguf.dequantize(raw, qtype).astype(np.float32)))
    assert (ours - torch.from_numpy(w)).abs().max() < (0.02 if type_name == "Q8_0" else 0.4)


def test_unsupported_type_and_bad_size():
    with pytest.raises(ValueError, match="GGUF type Q2_K is not supported"):
        decode_blocks("Q2_K", torch.zeros(1, 84, dtype=torch.uint8), 256)
    with pytest.raises(ValueError, match="does not hold rows of 64"):
        decode_blocks("Q4_1", torch.zeros(2, 39, dtype=torch.uint8), 64)


# ------------------------------------------------------------------------------------------
# a tiny Llama written as a quantized GGUF, run quantized vs its dequantized conversion
# ------------------------------------------------------------------------------------------

LAYER_TYPES = {  # one type per tensor kind, so the model mixes them (fused qkv gets Q4_0/Q5_0/Q8_0 shards)
    "attn_q": "Q4_0", "attn_k": "Q5_0", "attn_v": "Q8_0", "attn_output": "Q5_1",
    "ffn_gate": "Q4_1", "ffn_up": "Q4_1", "ffn_down": "Q8_0", "token_embd": "Q8_0", "output": "Q4_0",
}


def _tiny_quantized_gguf(path: Path, tie: bool, types: dict[str, str] = LAYER_TYPES, context: int = 128) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(_vocab()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
                      rms_norm_eps=1e-6, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.3)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(context)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_dimension_count(32)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(cfg.vocab_size)
    tokens = _vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(["h e", "l l"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    for name, tensor in model.state_dict().items():
        if tie and name == "lm_head.weight":
            continue
        base, suffix = name.rsplit(".", 1)
        gname = names.get_name(base)
        array = tensor.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            array = _llama_cpp_permute(array, 2)
        elif name.endswith("k_proj.weight"):
            array = _llama_cpp_permute(array, 1)
        kind = gname.split(".")[-1]
        if array.ndim == 2 and types.get(kind) == "IQ4_NL":  # a type pagoda refuses; gguf reads it
            raw = np.zeros((array.shape[0], array.shape[1] // 32, 18), dtype=np.uint8)
            raw[..., 0:2] = np.array([0.01], dtype=np.float16).view(np.uint8)
            iq4 = gguf.GGMLQuantizationType.IQ4_NL
            w.add_tensor(f"{gname}.{suffix}", raw.reshape(array.shape[0], -1), raw_dtype=iq4)
        elif array.ndim == 2 and kind in types:
            qtype = gguf.GGMLQuantizationType[types[kind]]
            w.add_tensor(f"{gname}.{suffix}", gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(f"{gname}.{suffix}", np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))


def _config(path: Path, **kw):
    from pagoda.config import EngineArgs

    return EngineArgs(model=str(path), device="cpu", **kw).create_config()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_tiny_gguf_runs_quantized_like_its_dequantized_conversion(tmp_path, tmp_cache, tie):
    from pagoda import LLM
    from pagoda.layers.quantized_embedding import QuantizedEmbedding
    from pagoda.models.loader import load_model

    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", tie)
    cfg = _config(path, dtype="float32")
    assert cfg.hf_config["quantization_config"] == {"quant_method": "gguf", "gguf_file": str(path.resolve())}
    model = load_model(cfg)
    qkv = model.layers[0].self_attn.qkv_proj.int_weight  # Q4_0 + Q5_0 + Q8_0 shards: widest codes
    assert (qkv.bits, qkv.group_size) == (8, 32)
    assert model.layers[0].mlp.gate_up_proj.int_weight.bits == 4
    assert isinstance(model.embed_tokens, QuantizedEmbedding) and model.embed_tokens.int_weight.bits == 8
    if not tie:
        assert model.lm_head.int_weight.bits == 4
    assert not [n for n, p in model.named_parameters() if p.dim() == 2], "a matrix stayed dense"

    prompts = [[1, 40, 60, 70, 80, 90, 100], [5, 6, 7, 8]]
    sp = greedy(max_tokens=12, logprobs=5)
    kw = dict(device="cpu", dtype="float32", max_model_len=128, kv_cache_memory_bytes=1 << 20, enforce_eager=True)
    quant = LLM(model=str(path), **kw).generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    dense = LLM(model=str(path), load_format="safetensors", **kw).generate(
        [{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    for q, d in zip(quant, dense, strict=True):  # the same weights in float32: same tokens, same logprobs
        assert q.outputs[0].token_ids == d.outputs[0].token_ids
        for lq, ld in zip(q.outputs[0].logprobs, d.outputs[0].logprobs, strict=True):
            for tok, entry in ld.items():
                assert lq[tok].logprob == pytest.approx(entry.logprob, abs=1e-4)


def test_tied_8bit_table_is_kept_dense_in_bf16_on_the_cpu(tmp_path, tmp_cache):
    """A tied Q8_0 embedding in bf16 on the CPU is stored dense (quantization/gguf.py, ``_dense_table``): exactly
    the dequantized conversion's table, used for lookups and (oneDNN-prepacked) as the LM head of larger batches. A
    few rows' head reads the table's Q8_0 codes where that kernel runs (tests/test_cpu_head_q8.py), else the same
    heads as the conversion's."""
    from pagoda.layers import cpu_head_q8
    from pagoda.models.loader import load_model

    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", True)
    quant = load_model(_config(path, dtype="bfloat16"))
    dense = load_model(_config(path, dtype="bfloat16", load_format="safetensors"))
    assert not hasattr(quant.embed_tokens, "int_weight") and quant.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(quant.embed_tokens.weight, dense.embed_tokens.weight)
    h = torch.randn(12, quant.embed_tokens.in_features).to(torch.bfloat16)
    assert torch.equal(quant.compute_logits_raw(h), dense.compute_logits_raw(h))  # above 8 rows: the bf16 table
    if cpu_head_q8.available():
        assert dense._lm_q8 is None and torch.equal(quant.compute_logits(h[:3]), quant._lm_q8.head(h[:3]))
    else:
        torch.testing.assert_close(quant.compute_logits(h[:3]), dense.compute_logits(h[:3]), rtol=0, atol=0)
    assert quant.layers[0].mlp.gate_up_proj.int_weight.bits == 4  # the other matrices stay quantized


def test_dequantized_mode_and_flag_conflicts(tmp_path, tmp_cache):
    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", True)
    assert "quantization_config" not in _config(path, load_format="safetensors").hf_config
    assert "quantization_config" not in _config(path, load_format="dummy").hf_config
    assert _config(path, quantization="gguf").hf_config["quantization_config"]["quant_method"] == "gguf"
    with pytest.raises(ValueError, match="--quantization gguf contradicts --load-format safetensors"):
        _config(path, load_format="safetensors", quantization="gguf")


def test_bad_gguf_files_fail_at_start_up_naming_the_tensor(tmp_path, tmp_cache):
    from pagoda.models.loader import load_model

    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", True)
    with pytest.raises(ValueError, match=r"'blk\.0\.ffn_gate\.weight' has shape \[128, 64\] but the model's config "
                                         r"needs \[96, 64\]"):
        load_model(_config(path, hf_overrides={"intermediate_size": 96}))
    iq4 = _tiny_quantized_gguf(tmp_path / "iq4.gguf", True, {**LAYER_TYPES, "ffn_down": "IQ4_NL"})
    with pytest.raises(ValueError, match=r"GGUF tensor 'blk\.0\.ffn_down\.weight' .* has type IQ4_NL, which pagoda "
                                         r"does not support"):
        load_model(_config(iq4))


def test_truncated_gguf_fails_naming_the_file(tmp_path, tmp_cache):
    from pagoda.models.loader import load_model

    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", True)
    cfg = _config(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        load_model(cfg)


def test_truncated_gguf_given_as_the_model_fails_naming_the_file(tmp_path, tmp_cache):
    """A truncated file named as the model (converted on first use): the error names the file and the tensor past
    its end, before transformers' reader runs (it raised a bare numpy reshape error)."""
    from pagoda.models.model_files import resolve_model

    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"GGUF file {re.escape(str(path))}: tensor '.*' lies past the end of the "
                                         r"file \(truncated or corrupt\?\)"):
        resolve_model(path)


def _assert_header_matches_gguf_reader(path: Path) -> None:
    """pagoda.quantization.gguf_header reads what gguf.GGUFReader reads: every tensor's name, type, dims and bytes,
    every scalar / string field's value, every array's length (and its items when asked for)."""
    from pagoda.quantization.gguf_header import read_gguf_header

    reader = gguf.GGUFReader(str(path))
    arrays = [k for k, f in reader.fields.items() if f.types and f.types[0] == gguf.GGUFValueType.ARRAY]
    head = read_gguf_header(path, keep_arrays=arrays[:2])
    assert [t.name for t in head.tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(head.tensors, reader.tensors, strict=True):
        assert (ours.type_name, list(ours.dims)) == (theirs.tensor_type.name, theirs.shape.tolist()), ours.name
        assert np.array_equal(head.data(ours), np.asarray(theirs.data).view(np.uint8).reshape(-1)), ours.name
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's own header pseudo-fields
            continue
        if key in arrays:
            assert head.array_lengths[key] == len(f.contents()), key
            if key in arrays[:2]:
                assert head.metadata[key] == f.contents(), key
        else:
            assert head.metadata[key] == f.contents(), key


def test_header_reader_matches_gguf_reader(tmp_path):
    _assert_header_matches_gguf_reader(_tiny_quantized_gguf(tmp_path / "tiny.gguf", False))


def test_header_reader_refuses_what_it_cannot_read(tmp_path):
    from pagoda.quantization.gguf_header import read_gguf_header

    path = _tiny_quantized_gguf(tmp_path / "tiny.gguf", True)
    data = path.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUB" + data[4:])
    with pytest.raises(ValueError, match="is not a GGUF file"):
        read_gguf_header(bad)
    bad.write_bytes(data[:4] + (3).to_bytes(4, "big") + data[8:])
    with pytest.raises(ValueError, match="big-endian"):
        read_gguf_header(bad)
    bad.write_bytes(data[:200])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_gguf_header(bad)


# ------------------------------------------------------------------------------------------
# the real default model (Q4_1 with Q8_0 embeddings tied to the LM head)
# ------------------------------------------------------------------------------------------


@pytest.mark.default_model
def test_default_model_runs_quantized_and_matches_dequantized():
    from pagoda import LLM
    from pagoda.models.model_files import ensure_default_model, gguf_source
    from pagoda.quantization.gguf_file import iter_gguf_tensors

    folder = ensure_default_model(progress=False)
    src = gguf_source(folder)
    assert src is not None and src.is_file()
    _assert_header_matches_gguf_reader(src)
    # q/k rows un-permuted exactly as transformers' dequantizing conversion did
    from safetensors import safe_open

    from pagoda.quantization.gguf import _dense

    want = {"model.layers.0.self_attn.q_proj.qweight", "model.layers.0.self_attn.k_proj.qweight",
            "model.embed_tokens.qweight"}
    import json

    hf_config = json.loads((folder / "config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for name, t in iter_gguf_tensors(src, hf_config):
            key = name.replace(".weight", ".qweight") if len(t.shape) == 2 else name
            if key in want:
                assert torch.equal(_dense(t, torch.device("cpu")), f.get_tensor(name)), name

    kw = dict(max_model_len=512, kv_cache_memory_bytes=64 << 20)
    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
    sp = greedy(max_tokens=16, logprobs=5)
    quant = LLM(**kw)
    assert quant.llm_engine.cfg.hf_config["quantization_config"]["quant_method"] == "gguf"
    q_out = quant.generate(prompts, sp, use_tqdm=False)
    del quant
    d_out = LLM(load_format="safetensors", **kw).generate(prompts, sp, use_tqdm=False)
    compared = 0
    for q, d in zip(q_out, d_out, strict=True):
        qc, dc = q.outputs[0], d.outputs[0]
        compared += compare_top5(qc.token_ids, dc.token_ids, [our_top(x) for x in qc.logprobs],
                                 [our_top(x) for x in dc.logprobs], what=q.prompt)
    assert compared >= 12
    assert "Paris" in q_out[0].outputs[0].text


GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # pinned by the stub package


@pytest.mark.default_model
def test_real_q4_k_m_file_blocks_match_gguf_dequantize():
    """Gemma-3-270M Q4_K_M (from PyPI's chunk packages): the first tensors of each type (Q8_0, Q5_0, Q4_K, Q6_K)
    decode exactly as gguf.dequantize."""
    from gemma_gguf import gemma_gguf, sha256_of

    path = gemma_gguf()  # fetched once into pagoda's cache dir (tests/test_gemma3_real.py reads it too)
    assert sha256_of(path) == GEMMA_SHA256
    from pagoda.quantization.gguf_header import read_gguf_header

    head = read_gguf_header(path)  # the tensor table without gguf.GGUFReader's ~25 s over the tokenizer's strings
    seen: dict[str, int] = {}
    for t in head.tensors:
        name, in_f = t.type_name, t.dims[0]
        rows = t.nbytes // (in_f // FORMATS[name].block * FORMATS[name].type_size) if name in FORMATS else 0
        if name not in FORMATS or seen.get(name, 0) >= 2 or rows > 4096:
            continue
        seen[name] = seen.get(name, 0) + 1
        raw = np.array(head.data(t)).reshape(rows, -1)
        ref = torch.from_numpy(gguf.dequantize(raw, gguf.GGMLQuantizationType[name]).astype(np.float32))
        assert torch.equal(_dequant(name, raw, in_f), ref), t.name
    assert set(seen) == {"Q8_0", "Q5_0", "Q4_K", "Q6_K"}
