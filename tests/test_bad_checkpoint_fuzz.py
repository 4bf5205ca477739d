"""Seeded fuzzing of checkpoint loading: corrupt GGUF and safetensors files fail at start-up with a ``ValueError``
naming the file (and the tensor or metadata key), or load exactly what the original holds; never a crash, a hang, an
opaque ``IndexError`` / ``struct.error`` / ``ZeroDivisionError``, or other bytes read as weights.

The header-level fuzz (:func:`fuzz_headers`) runs in a child process, so a segfault or a hang (bounded at 60 s) fails
the test instead of killing pytest. A few mutants of each kind go through ``LLM(...)`` too.

Bugs these found (each has a test below): a GGUF tensor whose type id was changed to a smaller type (F16 -> Q4_1)
loaded the F16 bytes as Q4_1 blocks and generated other tokens; corrupt GGUF metadata (``head_count_kv`` 0, a
``bos_token_id`` past the vocabulary, ``block_count`` 2**31) was a ``ZeroDivisionError`` / ``IndexError`` from
transformers or a hang building two billion layers; a flipped metadata byte was an ``OSError`` calling the .gguf "not a
valid JSON file"; a zero dimension crashed in ``Tensor.view``; an FP8-typed scale was a ``NotImplementedError``.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")

SEED = 20240611
GGUF_TYPES = {"attn_q": "F16", "attn_k": "Q5_0", "attn_v": "Q8_0", "attn_output": "Q5_1", "ffn_gate": "Q4_1",
              "ffn_up": "Q4_0", "ffn_down": "Q8_0", "token_embd": "Q8_0", "output": "Q4_0"}
"""Every block type pagoda reads for the small model plus a dense F16 matrix (whose type can shrink)."""


# ----------------------------------------------------------------------- GGUF header layout
def gguf_layout(data: bytes) -> dict:
    """Positions of the metadata values and tensor-table fields of a (valid) GGUF file."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip(vtype: int, p: int) -> int:
        if vtype in sizes:
            return p + sizes[vtype]
        if vtype == 8:
            return p + 8 + struct.unpack_from("<Q", data, p)[0]
        itype, count = struct.unpack_from("<IQ", data, p)
        p += 12
        for _ in range(count):
            p = skip(itype, p)
        return p

    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos, kv, tensors = 24, {}, []
    for _ in range(n_kv):
        n = struct.unpack_from("<Q", data, pos)[0]
        key = data[pos + 8:pos + 8 + n].decode()
        vtype = struct.unpack_from("<I", data, pos + 8 + n)[0]
        kv[key] = (vtype, pos + 12 + n)
        pos = skip(vtype, pos + 12 + n)
    table = pos
    for _ in range(n_tensors):
        n = struct.unpack_from("<Q", data, pos)[0]
        name_at = pos + 8
        pos += 8 + n
        nd = struct.unpack_from("<I", data, pos)[0]
        dims = struct.unpack_from(f"<{nd}Q", data, pos + 4)
        t = {"name": data[name_at:name_at + n].decode(), "ndpos": pos, "nd": nd, "dims": dims, "dpos": pos + 4,
             "tpos": pos + 4 + 8 * nd, "opos": pos + 8 + 8 * nd}
        t["off"] = struct.unpack_from("<Q", data, t["opos"])[0]
        tensors.append(t)
        pos += 16 + 8 * nd
    return {"kv": kv, "tensors": tensors, "table": table, "end": pos}


def gguf_mutants(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """``n`` seeded mutants of ``data`` of every kind: truncation, byte flips in the metadata / tensor table, type
    ids (unknown and valid), dims, number of dims, offsets, metadata counts."""
    lay = gguf_layout(data)
    ts = lay["tensors"]
    out = []
    for i in range(n):
        b = bytearray(data)
        kind = ["truncate", "flip-kv", "flip-table", "type", "dim", "ndims", "offset", "count"][i % 8]
        t = rng.choice(ts)
        if kind == "truncate":
            b = b[:rng.randrange(len(b))]
        elif kind in ("flip-kv", "flip-table"):
            lo, hi = (4, lay["table"]) if kind == "flip-kv" else (lay["table"], lay["end"])
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        elif kind == "type":
            struct.pack_into("<I", b, t["tpos"], rng.choice([0, 1, 2, 3, 6, 7, 8, 12, 14, 20, 30, 99, 2**31]))
        elif kind == "dim":
            k = rng.randrange(t["nd"])
            value = rng.choice([0, 1, 32, t["dims"][k] * 2, t["dims"][k] // 2, 2**40, 2**64 - 1])
            struct.pack_into("<Q", b, t["dpos"] + 8 * k, value)
        elif kind == "ndims":
            struct.pack_into("<I", b, t["ndpos"], rng.choice([0, 1, 3, 5, 2**31]))
        elif kind == "offset":
            struct.pack_into("<Q", b, t["opos"], rng.choice([rng.choice(ts)["off"], t["off"] + 32, t["off"] + 1,
                                                            2**40]))
        else:
            struct.pack_into("<Q", b, rng.choice([8, 16]), rng.choice([0, 1, 10**6, 2**40]))
        out.append((f"{i}-{kind}", bytes(b)))
    return out


def _gguf_tensors(path: Path, cfg: dict) -> dict:
    from pagoda.quantization.gguf_file import check_gguf_metadata, iter_gguf_tensors, open_gguf

    check_gguf_metadata(open_gguf(path))
    return {n: (t.type_name, t.shape, t.data.clone()) for n, t in iter_gguf_tensors(path, cfg)}


# ----------------------------------------------------------------------- safetensors
def safetensors_mutants(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """Truncations, byte flips in the JSON header, and header entries with another dtype, shape, overlapping or
    out-of-file offsets, or a bad header length."""
    hlen = struct.unpack_from("<Q", data)[0]
    header = json.loads(data[8:8 + hlen])
    body = data[8 + hlen:]
    names = sorted(k for k in header if k != "__metadata__")
    out = []
    for i in range(n):
        kind = ["truncate", "flip", "dtype", "shape", "offsets", "hlen"][i % 6]
        h = json.loads(json.dumps(header))
        e = h[rng.choice(names)]
        if kind == "truncate":
            out.append((f"{i}-{kind}", data[:rng.randrange(len(data))]))
            continue
        if kind == "flip":
            b = bytearray(data)
            b[rng.randrange(8 + hlen)] ^= 1 << rng.randrange(8)
            out.append((f"{i}-{kind}", bytes(b)))
            continue
        if kind == "hlen":
            b = bytearray(data)
            struct.pack_into("<Q", b, 0, rng.choice([0, 7, hlen + 8, hlen - 8, 2**40]))
            out.append((f"{i}-{kind}", bytes(b)))
            continue
        if kind == "dtype":
            e["dtype"] = rng.choice(["F32", "F16", "BF16", "I32", "I64", "I8", "U8", "F8_E4M3", "F64"])
        elif kind == "shape":
            s = e["shape"]
            e["shape"] = rng.choice([s[::-1], [max(1, s[0] // 2), *s[1:]], [*s, 1], [s[0] * 2, *s[1:]]])
        else:
            a, z = e["data_offsets"]
            other = h[rng.choice(names)]["data_offsets"]
            e["data_offsets"] = rng.choice([[other[0], other[0] + z - a], [a, z + 10**6], [z, a], [a + 1, z + 1]])
        text = json.dumps(h).encode()
        text += b" " * (-len(text) % 8)
        out.append((f"{i}-{kind}", struct.pack("<Q", len(text)) + text + body))
    return out


def _safetensors_tensors(path: Path) -> dict:
    from pagoda.models.loader import iter_safetensors

    return {n: t.clone() for n, t in iter_safetensors([path])}


def _layout(tensors: dict) -> dict:
    """Each tensor's type / dtype and shape: what the model checks when it loads it."""
    return {k: (v[0], v[1]) if isinstance(v, tuple) else (v.dtype, tuple(v.shape)) for k, v in tensors.items()}


def _bytes_equal(a: dict, b: dict) -> bool:
    def raw(v):
        t = v[2] if isinstance(v, tuple) else v
        return t.reshape(-1).view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)

    return all(torch.equal(raw(a[k]), raw(b[k])) for k in a)


def fuzz_headers(gguf_path: str, st_path: str, cfg_json: str, work: str, n: int) -> dict[str, list]:
    """Every mutant's outcome: ``ok`` (reads exactly the original's tensors), ``error`` (a ``ValueError`` naming the
    file), ``changed`` (tensors of other names, types or shapes, which loading into the model refuses: the LLM test
    checks that on a sample) or ``BAD`` with what happened. Run in a child process by the test."""
    cfg = json.loads(cfg_json)
    rng = random.Random(SEED)
    results: dict[str, list] = {"ok": [], "error": [], "changed": [], "BAD": []}
    for fmt, src, read, mutants in (
            ("gguf", Path(gguf_path), lambda p: _gguf_tensors(p, cfg), gguf_mutants),
            ("safetensors", Path(st_path), _safetensors_tensors, safetensors_mutants)):
        original = read(src)
        for name, data in mutants(src.read_bytes(), rng, n):
            path = Path(work) / f"{fmt}-{name}{src.suffix}"
            path.write_bytes(data)
            what = f"{fmt} {name}"
            try:
                got = read(path)
            except ValueError as exc:
                kind = "error" if str(path) in str(exc) else "BAD"
                results[kind].append(f"{what}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - the finding
                results["BAD"].append(f"{what}: {type(exc).__name__}: {exc}")
                continue
            finally:
                path.unlink()
            if _layout(got) != _layout(original):
                results["changed"].append(what)  # other names, types or shapes: the model refuses them (LLM test)
            elif _bytes_equal(got, original):
                results["ok"].append(what)
            else:
                results["BAD"].append(f"{what}: read other bytes as the same tensors without an error")
    return results


# ----------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ckpts(tiny, tmp_path_factory) -> dict[str, Path]:
    from test_bad_quantized_checkpoints import _gptq
    from test_gguf import _tiny_quantized_gguf

    root = tmp_path_factory.mktemp("fuzz")
    return {"gguf": _tiny_quantized_gguf(root / "tiny.gguf", False, GGUF_TYPES),
            "gptq": _gptq(tiny.path("llama"), root / "gptq")}


def _hf_config(path: Path) -> dict:
    return {"num_attention_heads": 2, "num_key_value_heads": 1}


def test_header_fuzz_errors_name_the_file_or_read_the_same(ckpts, tmp_path):
    """240 seeded mutants of a GGUF file and of a safetensors file, read by pagoda's readers in a child process
    (a crash or a 60 s hang fails the test)."""
    work = tmp_path / "work"
    work.mkdir()
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from test_bad_checkpoint_fuzz import fuzz_headers; "
            "print(json.dumps(fuzz_headers(*sys.argv[2:6], int(sys.argv[6]))))")
    cfg = json.dumps(_hf_config(ckpts["gguf"]))
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(ckpts["gguf"]),
                           str(ckpts["gptq"] / "model.safetensors"), cfg, str(work), "120"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not res["BAD"], "\n".join(res["BAD"])
    assert len(res["error"]) > 150 and sum(len(v) for v in res.values()) == 240


def _llm(path: Path):
    from pagoda import LLM

    return LLM(str(path), dtype="float32", max_model_len=64, num_gpu_blocks_override=8, enforce_eager=True)


def _tokens(llm) -> list[int]:
    from pagoda import SamplingParams

    out = llm.generate([{"prompt_token_ids": [1, 5, 9, 13, 17]}], SamplingParams(temperature=0, max_tokens=4),
                       use_tqdm=False)
    return list(out[0].outputs[0].token_ids)


def _set_u32(data: bytes, pos: int, value: int, fmt: str = "<I") -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


def _meta(data: bytes, key: str, value: int) -> bytes:
    vtype, pos = gguf_layout(data)["kv"][key]
    return _set_u32(data, pos, value, {4: "<I", 5: "<i", 10: "<Q"}[vtype])


def _type(data: bytes, tensor: str, type_id: int) -> bytes:
    t = next(t for t in gguf_layout(data)["tensors"] if t["name"] == tensor)
    return _set_u32(data, t["tpos"], type_id)


@pytest.mark.parametrize("edit,match", [
    # F16 -> Q4_1: fewer bytes, no overlap, inside the file; the F16 bytes were decoded as Q4_1 blocks
    (lambda d: _type(d, "blk.0.attn_q.weight", 3), r"tensor 'blk\.0\.attn_k\.weight' has data offset \d+, expected"),
    (lambda d: _meta(d, "llama.attention.head_count_kv", 0), r"llama\.attention\.head_count_kv is 0, not a positive"),
    (lambda d: _meta(d, "llama.attention.head_count_kv", 3), r"head_count 2 is not a multiple of .*head_count_kv 3"),
    (lambda d: _meta(d, "llama.block_count", 2**31 - 1), r"block_count is 2147483647, but its tensors are those of "
                                                         r"layers 0\.\.1"),
    (lambda d: _meta(d, "llama.embedding_length", 3), r"embedding_length is 3, but tensor 'token_embd\.weight'"),
    (lambda d: _meta(d, "tokenizer.ggml.bos_token_id", 1000), r"bos_token_id is 1000, not a token of its \d+-token"),
], ids=["type-shrinks", "kv-heads-0", "kv-heads-3", "block-count-huge", "embedding-length", "bos-id"])
def test_corrupt_gguf_metadata_and_types_name_key_or_tensor(ckpts, tmp_path, monkeypatch, edit, match):
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(edit(ckpts["gguf"].read_bytes()))
    with pytest.raises(ValueError, match=match) as e:
        _llm(bad)
    assert str(bad) in str(e.value)


def test_gguf_zero_dimension_names_the_tensor(ckpts, tmp_path):
    from pagoda.quantization.gguf_header import read_gguf_header

    data = ckpts["gguf"].read_bytes()
    t = next(t for t in gguf_layout(data)["tensors"] if t["name"] == "output_norm.weight")
    bad = tmp_path / "zero.gguf"
    bad.write_bytes(_set_u32(data, t["dpos"], 0, "<Q"))
    with pytest.raises(ValueError, match=r"tensor 'output_norm\.weight' has shape \[0\], with no elements"):
        read_gguf_header(bad)


def test_fp8_typed_scale_is_a_named_error():
    from pagoda.models.weight_loading import check_scale_values

    check_scale_values("x.weight_scale", torch.ones(4).to(torch.float8_e4m3fn))  # finite: fine here
    with pytest.raises(ValueError, match=r"'x\.input_scale' must be a positive finite scale"):
        check_scale_values("x.input_scale", torch.zeros(4).to(torch.float8_e4m3fn))
    nan = torch.tensor([float("nan")]).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"'x\.weight_scale' holds NaN or infinite values"):
        check_scale_values("x.weight_scale", nan)


def _gptq_edit(t: dict, rng: random.Random, kind: str) -> None:
    down = "model.layers.0.mlp.down_proj"
    if kind == "g_idx-range":
        t[f"{down}.g_idx"][rng.randrange(128)] = 4 + rng.randrange(100)
    elif kind == "g_idx-negative":
        t[f"{down}.g_idx"][rng.randrange(128)] = -1
    elif kind == "g_idx-length":
        t[f"{down}.g_idx"] = t[f"{down}.g_idx"][:-8]
    elif kind == "scales-shape":
        t[f"{down}.scales"] = t[f"{down}.scales"].t()
    elif kind == "scales-dtype":
        t[f"{down}.scales"] = t[f"{down}.scales"].to(torch.float8_e4m3fn)
    elif kind == "qzeros-shape":
        t[f"{down}.qzeros"] = t[f"{down}.qzeros"][:1]
    elif kind == "missing":
        del t[f"{down}.qweight"]
    elif kind == "extra":
        t["model.layers.0.mlp.down_proj.weight_scale"] = t[f"{down}.scales"].clone()


GPTQ_EDITS = ["g_idx-range", "g_idx-negative", "g_idx-length", "scales-shape", "scales-dtype", "qzeros-shape",
              "missing", "extra"]


def test_llm_fuzz_gptq_and_gguf(ckpts, tmp_path, monkeypatch):
    """Seeded tensor-level mutants of the GPTQ checkpoint and file-level ones of the GGUF file through ``LLM``: each
    fails naming a tensor / the file, or generates exactly the original's tokens."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    rng = random.Random(SEED)
    bad = []
    for kind in GPTQ_EDITS:
        dst = tmp_path / f"gptq-{kind}"
        shutil.copytree(ckpts["gptq"], dst)
        t = load_file(dst / "model.safetensors")
        _gptq_edit(t, rng, kind)
        save_file({k: v.contiguous() for k, v in t.items()}, dst / "model.safetensors", metadata={"format": "pt"})
        try:
            _llm(dst)
            bad.append(f"{kind}: loaded")
        except ValueError as exc:
            if "layers.0.mlp.down_proj" not in str(exc):
                bad.append(f"{kind}: {exc}")
        shutil.rmtree(dst)
    want = _tokens(_llm(ckpts["gguf"]))
    for name, data in gguf_mutants(ckpts["gguf"].read_bytes(), rng, 12):
        if name.endswith("flip-kv"):  # a flipped metadata float (rope base, norm epsilon) is undetectable
            continue
        path = tmp_path / f"m{name}.gguf"
        path.write_bytes(data)
        try:
            got = _tokens(_llm(path))
        except ValueError as exc:
            if str(path) not in str(exc):
                bad.append(f"gguf {name}: {exc}")
        else:
            if got != want:
                bad.append(f"gguf {name}: generated {got}, the original {want}")
    assert not bad, "\n".join(bad)
