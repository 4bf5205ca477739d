"""Corrupt quantized checkpoints fail at start-up with a ``ValueError`` naming the tensor (or the file), never a
crash or a silently wrong answer: NaN / inf / zero scales, tensors of the wrong dtype, truncated or corrupt
safetensors files and indexes, malformed compressed-tensors / FP8 ``quantization_config`` values, GGUF files with
an unknown type id, rows that are not whole blocks, a NaN block scale or a zero alignment. Through ``LLM(...)``
and through ``pagoda serve`` (exit status 1, the message on stderr, no traceback).

Before these checks a NaN scale loaded and every answer was token 0; a bf16 weight in an FP8 checkpoint, an
unsigned int8 weight or a float ``qweight`` was converted on copy and gave wrong tokens; a truncated file or an
unknown GGUF type was a library error naming neither the file nor the tensor.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pagoda.quantization.awq import AWQConfig
from pagoda.quantization.compressed_tensors import CompressedTensorsConfig
from pagoda.quantization.fp8 import Fp8Config
from pagoda.quantization.gptq import GPTQConfig, pack_qzeros
from pagoda.quantization.packing import pack_int32

DOWN = "model.layers.0.mlp.down_proj"
BITS, GROUP = 4, 32


def _gptq(base: Path, dst: Path) -> Path:
    """The tiny Llama as a GPTQ checkpoint (4-bit, group 32, symmetric, trivial g_idx) of random valid codes."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, dst)
    out = {}
    g = torch.Generator().manual_seed(0)
    for k, w in load_file(base / "model.safetensors").items():
        if not k.endswith("proj.weight"):
            out[k] = w
            continue
        p = k[: -len(".weight")]
        n, kin = w.shape
        groups = kin // GROUP
        out[f"{p}.qweight"] = pack_int32(torch.randint(0, 2**BITS, (kin, n), generator=g), BITS, dim=0)
        out[f"{p}.qzeros"] = pack_qzeros(torch.full((groups, n), 2 ** (BITS - 1)), BITS, "gptq")
        out[f"{p}.scales"] = (torch.rand(groups, n, generator=g) * 0.01 + 0.005).half()
        out[f"{p}.g_idx"] = (torch.arange(kin) // GROUP).int()
    (dst / "model.safetensors").unlink()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": BITS, "group_size": GROUP, "desc_act": False,
                                  "sym": True}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def ckpts(tiny, tmp_path_factory) -> dict[str, Path]:
    """The hand-packed GPTQ checkpoint and compressed-tensors ones written by the library (tests/ct_models.py)."""
    from ct_models import build_ct_checkpoint

    root = tmp_path_factory.mktemp("badq")
    out = {"gptq": _gptq(tiny.path("llama"), root / "gptq")}
    for scheme in ("w4a16", "fp8-static", "w8a8-int"):
        out[scheme] = build_ct_checkpoint(tiny.path("llama"), root / scheme, scheme)
    return out


def _variant(src: Path, dst: Path, tensor: str | None = None, fn=None, raw=None) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if tensor is not None:
        t = load_file(src / "model.safetensors")
        t[tensor] = fn(t[tensor]).contiguous()
        save_file(t, dst / "model.safetensors", metadata={"format": "pt"})
    if raw is not None:
        raw(dst / "model.safetensors")
    return dst


def _load(path: Path):
    from pagoda import LLM

    return LLM(str(path), dtype="float32", max_model_len=64, num_gpu_blocks_override=8)


def _nan_row(t: torch.Tensor) -> torch.Tensor:
    return t.index_fill(0, torch.tensor([0]), float("nan"))


BAD_TENSORS = [
    ("gptq", f"{DOWN}.scales", _nan_row, "holds NaN or infinite values"),
    ("gptq", f"{DOWN}.scales", lambda t: t * float("inf"), "holds NaN or infinite values"),
    ("gptq", f"{DOWN}.scales", lambda t: (t * 1000).int(), "quantization scale stored as torch.int32"),
    ("gptq", f"{DOWN}.qweight", lambda t: t.float(), "dtype torch.float32 where the model holds torch.int32"),
    ("gptq", f"{DOWN}.g_idx", lambda t: t.float(), "dtype torch.float32 where the model holds torch.int32"),
    ("w4a16", f"{DOWN}.weight_scale", _nan_row, "holds NaN or infinite values"),
    ("w4a16", f"{DOWN}.weight_packed", lambda t: t.float(), "dtype torch.float32 where the model holds torch.int32"),
    ("fp8-static", f"{DOWN}.weight_scale", lambda t: t * float("nan"), "holds NaN or infinite values"),
    ("fp8-static", f"{DOWN}.input_scale", lambda t: t * float("inf"), "holds NaN or infinite values"),
    ("fp8-static", f"{DOWN}.input_scale", lambda t: t * 0, "must be a positive finite scale, got 0.0"),
    ("fp8-static", f"{DOWN}.weight", lambda t: t.to(torch.bfloat16),
     "dtype torch.bfloat16 where the model holds torch.float8_e4m3fn"),
    ("fp8-static", f"{DOWN}.weight", lambda t: t.to(torch.float8_e5m2),
     "dtype torch.float8_e5m2 where the model holds torch.float8_e4m3fn"),
    ("w8a8-int", f"{DOWN}.weight", lambda t: t.view(torch.uint8), "dtype torch.uint8 where the model holds torch.int8"),
    ("w8a8-int", f"{DOWN}.weight_scale", _nan_row, "holds NaN or infinite values"),
]


@pytest.mark.parametrize("ckpt,tensor,fn,match", BAD_TENSORS,
                         ids=[f"{c}-{t.rsplit('.', 1)[1]}-{i}" for i, (c, t, _, _) in enumerate(BAD_TENSORS)])
def test_corrupt_tensor_fails_at_start_up_naming_it(ckpts, tmp_path, ckpt, tensor, fn, match):
    path = _variant(ckpts[ckpt], tmp_path / "bad", tensor, fn)
    with pytest.raises(ValueError, match=match) as e:
        _load(path)
    assert f"Checkpoint tensor {tensor!r}" in str(e.value)


def test_int64_codes_still_load_as_int32(ckpts, tmp_path):
    """Integer widths that hold the values convert exactly (an int64 g_idx or qweight is not refused)."""
    path = _variant(ckpts["gptq"], tmp_path / "wide", f"{DOWN}.g_idx", lambda t: t.long())
    llm = _load(path)
    ref = _load(ckpts["gptq"])
    sp = {"temperature": 0.0, "max_tokens": 4}
    from pagoda import SamplingParams

    ours = llm.generate("hello world", SamplingParams(**sp), use_tqdm=False)[0].outputs[0].token_ids
    assert ours == ref.generate("hello world", SamplingParams(**sp), use_tqdm=False)[0].outputs[0].token_ids


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-1000])


def _garble_header(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[10:20] = b"zzzzzzzzzz"
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("raw", [_truncate, _garble_header], ids=["truncated", "header"])
def test_corrupt_safetensors_file_names_the_file(ckpts, tmp_path, raw):
    path = _variant(ckpts["gptq"], tmp_path / "bad", raw=raw)
    with pytest.raises(ValueError, match="is not a readable safetensors file") as e:
        _load(path)
    assert str(path / "model.safetensors") in str(e.value) and "truncated or corrupt" in str(e.value)


def test_index_naming_a_missing_shard_or_malformed(ckpts, tmp_path):
    path = _variant(ckpts["gptq"], tmp_path / "idx")
    index = path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {f"{DOWN}.qweight": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ValueError, match=r"names weight file\(s\) missing .*model-00002-of-00002.safetensors"):
        _load(path)
    index.write_text("{not json")
    with pytest.raises(ValueError, match="is not a safetensors index") as e:
        _load(path)
    assert str(index) in str(e.value)


# ----------------------------------------------------------------------- quantization_config values
def _ct_cfg(edit) -> dict:
    q = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
         "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
             "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32,
             "dynamic": False, "actorder": None}}}, "ignore": ["lm_head"]}
    edit(q)
    return q


def _w(**kw):
    return lambda q: q["config_groups"]["group_0"]["weights"].update(**kw)


@pytest.mark.parametrize("edit,match", [
    (_w(group_size=-1), r"weights.group_size=-1 must be a positive integer"),
    (_w(group_size="32"), r"weights.group_size='32' must be a positive integer"),
    (_w(num_bits="four"), r"weights.num_bits='four' must be an integer"),
    (_w(symmetric="false"), r"weights.symmetric='false' must be a boolean"),
    (_w(dynamic="local"), r"weights.dynamic='local' must be a boolean"),
    (lambda q: q["config_groups"]["group_0"].update(weights="int4"), r"group_0.weights must be an object"),
    (lambda q: q.update(config_groups=[1]), r"config_groups must be an object of named groups"),
    (lambda q: q.update(ignore="lm_head"), r"quantization_config.ignore must be a list of module names"),
    (lambda q: q["config_groups"]["group_0"].update(targets="Linear"), r"group_0.targets must be a list"),
])
def test_malformed_compressed_tensors_config_names_the_field(edit, match):
    with pytest.raises(ValueError, match=match):
        CompressedTensorsConfig.from_config(_ct_cfg(edit))


def test_compressed_tensors_actorder_bool_reads_as_the_library_does():
    """compressed-tensors reads ``actorder: true`` as ``group`` (and false as none)."""
    on = CompressedTensorsConfig.from_config(_ct_cfg(_w(actorder=True)))
    off = CompressedTensorsConfig.from_config(_ct_cfg(_w(actorder=False)))
    assert on.schemes[0].weights.actorder == "group" and off.schemes[0].weights.actorder is None


@pytest.mark.parametrize("qcfg,match", [
    ({"weight_block_size": 128}, "weight_block_size=128 must be two positive integers"),
    ({"weight_block_size": [0, 0]}, r"weight_block_size=\[0, 0\] must be two positive integers"),
    ({"weight_block_size": [128, "128"]}, "must be two positive integers"),
    ({"ignored_layers": "lm_head"}, "ignored_layers must be a list of module names"),
])
def test_malformed_fp8_config_names_the_field(qcfg, match):
    with pytest.raises(ValueError, match=match):
        Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "dynamic", **qcfg})


@pytest.mark.parametrize("cls,qcfg,match", [
    (GPTQConfig, {"quant_method": "gptq", "bits": 4.0}, "bits=4.0 is not supported"),
    (GPTQConfig, {"quant_method": "gptq", "bits": 4, "group_size": True}, "group_size=True must be -1 or a positive"),
    (AWQConfig, {"quant_method": "awq", "bits": 4.0}, "bits=4.0 is not supported"),
    (AWQConfig, {"quant_method": "awq", "bits": 4, "group_size": True}, "group_size=True must be -1 or a positive"),
])
def test_gptq_awq_numbers_of_the_wrong_type_are_refused(cls, qcfg, match):
    """A float bit width passed ``bits in (4, 8)`` and crashed in the packing arithmetic; ``true`` was group 1."""
    with pytest.raises(ValueError, match=match):
        cls.from_config(qcfg)


# ----------------------------------------------------------------------- GGUF
def _tensor_info_at(data: bytes, name: str) -> tuple[int, int]:
    """(position after the tensor's name in the header, its number of dims)."""
    i = data.index(name.encode())
    while struct.unpack_from("<Q", data, i - 8)[0] != len(name):
        i = data.index(name.encode(), i + 1)
    p = i + len(name)
    return p, struct.unpack_from("<I", data, p)[0]


def _set_type(data: bytes, name: str, type_id: int) -> bytes:
    b = bytearray(data)
    p, nd = _tensor_info_at(data, name)
    struct.pack_into("<I", b, p + 4 + 8 * nd, type_id)
    return bytes(b)


def _nan_first_block_scale(path: Path, data: bytes, name: str) -> bytes:
    from pagoda.quantization.gguf_header import read_gguf_header

    t = next(t for t in read_gguf_header(path).tensors if t.name == name)
    b = bytearray(data)
    b[t.offset:t.offset + 2] = np.array([np.nan], np.float16).tobytes()  # the first block's f16 scale d
    return bytes(b)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    pytest.importorskip("gguf")
    from test_gguf import _tiny_quantized_gguf

    return _tiny_quantized_gguf(tmp_path_factory.mktemp("badgguf") / "tiny.gguf", True)


@pytest.mark.parametrize("case,match", [
    ("type99", r"tensor 'blk\.0\.ffn_down\.weight' has ggml type id 99, which is not a GGUF type"),
    ("iq2_rows", r"tensor 'blk\.0\.ffn_down\.weight' has rows of 128 values, not whole IQ2_XXS blocks of 256"),
    ("nan_q8", r"GGUF tensor 'blk\.0\.ffn_down\.weight': Q8_0 data holds a NaN or infinite block scale"),
    ("nan_q4_fused", r"GGUF tensor 'blk\.0\.attn_q\.weight': Q4_0 data holds a NaN or infinite block scale"),
    ("nan_embedding", r"GGUF tensor 'token_embd\.weight': Q8_0 data holds a NaN or infinite block scale"),
])
def test_bad_gguf_fails_at_start_up_naming_the_tensor(tiny_gguf, tmp_path, monkeypatch, case, match):
    from pagoda import LLM

    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    data = tiny_gguf.read_bytes()
    edits = {
        "type99": lambda: _set_type(data, "blk.0.ffn_down.weight", 99),
        "iq2_rows": lambda: _set_type(data, "blk.0.ffn_down.weight", 16),  # IQ2_XXS: blocks of 256
        "nan_q8": lambda: _nan_first_block_scale(tiny_gguf, data, "blk.0.ffn_down.weight"),
        "nan_q4_fused": lambda: _nan_first_block_scale(tiny_gguf, data, "blk.0.attn_q.weight"),
        "nan_embedding": lambda: _nan_first_block_scale(tiny_gguf, data, "token_embd.weight"),
    }
    bad = tmp_path / f"{case}.gguf"
    bad.write_bytes(edits[case]())
    with pytest.raises(ValueError, match=match):
        LLM(str(bad), dtype="float32", max_model_len=64, num_gpu_blocks_override=8)


def test_gguf_zero_alignment_is_refused(tmp_path):
    from pagoda.quantization.gguf_header import read_gguf_header

    key = b"general.alignment"
    data = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<II", 4, 0))  # value type u32, value 0
    path = tmp_path / "align0.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"general.alignment is 0, not a positive integer"):
        read_gguf_header(path)


# ----------------------------------------------------------------------- the CLI
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_exits_with_one_line_naming_the_tensor(ckpts, tmp_path):
    """``pagoda serve`` on a checkpoint with a NaN scale: exit status 1, the tensor named, no traceback."""
    path = _variant(ckpts["gptq"], tmp_path / "nan", f"{DOWN}.scales", _nan_row)
    proc = subprocess.run([sys.executable, "-m", "pagoda.entrypoints.cli", "serve", str(path), "--port",
                           str(_free_port()), "--dtype", "float32", "--max-model-len", "64"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"'{DOWN}.scales' holds NaN or infinite values" in last, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
