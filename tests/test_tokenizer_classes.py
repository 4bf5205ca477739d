"""The remembered tokenizer class (pagoda.engine.tokenizer_classes) loads what AutoTokenizer loads.

A first start asks AutoTokenizer and remembers the class it picked; the next start (a fresh process) imports that
class directly and must get the same tokenizer: class, vocabulary, special tokens, init arguments, chat template,
encodings and decodings. Folders: tiny Llama and Qwen2 models (the same tokenizer files; AutoTokenizer resolves
them through different branches), a tiny BERT WordPiece folder and the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pooling_models import build_wordpiece_tokenizer, minilm_path

from pagoda.engine import tokenizer_classes
from pagoda.engine.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent

_FINGERPRINT = r"""
import json, sys
from pathlib import Path
from types import SimpleNamespace
from pagoda.engine.tokenizer import load_tokenizer

texts = ["Hello, world!", "  two  spaces\nand a line", "<|im_start|>user\nhi<|im_end|>", "naïve café 日本語", ""]
out = {}
for folder in sys.argv[1:]:
    tok = load_tokenizer(SimpleNamespace(tokenizer_path=Path(folder), tokenizer_mode="auto", chat_template=None))
    out[folder] = {
        "class": f"{type(tok).__module__}.{type(tok).__qualname__}",
        "vocab": sorted(tok.get_vocab().items()),
        "special": {k: str(v) for k, v in tok.special_tokens_map.items()},
        "init": {k: repr(v) for k, v in sorted(tok.init_kwargs.items())},
        "chat_template": tok.chat_template,
        "encode": [tok.encode(t) for t in texts] + [tok.encode(t, add_special_tokens=False) for t in texts],
        "pair": tok("first part", "second part")["input_ids"],
        "decode": [tok.decode(tok.encode(t), skip_special_tokens=s) for t in texts for s in (False, True)],
        "eos": tok.eos_token_id, "bos": tok.bos_token_id, "pad": tok.pad_token_id,
    }
out["auto_imported"] = "transformers.models.auto.tokenization_auto" in sys.modules
print(json.dumps(out))
"""


def _fingerprints(folders: list[Path], cache: Path) -> dict:
    env = {**os.environ, "PAGODA_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-c", _FINGERPRINT, *map(str, folders)], env=env, capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_remembered_class_loads_what_autotokenizer_loads(tiny, tmp_path):
    wordpiece = tmp_path / "wordpiece"
    build_wordpiece_tokenizer(wordpiece)
    (wordpiece / "config.json").write_text(json.dumps({"model_type": "bert"}))
    folders = [tiny.path("llama"), tiny.path("qwen2"), wordpiece, minilm_path()]
    cache = tmp_path / "cache"
    first = _fingerprints(folders, cache)
    assert first.pop("auto_imported") is True
    remembered = json.loads((cache / tokenizer_classes.CACHE_FILE).read_text())
    assert len(remembered) == len(folders)
    assert all(ref.startswith("transformers.") for ref in remembered.values())
    second = _fingerprints(folders, cache)
    assert second.pop("auto_imported") is False  # every folder went the direct way
    for folder in map(str, folders):
        for field in first[folder]:
            assert second[folder][field] == first[folder][field], (folder, field)
    assert {v["class"] for v in first.values()} >= {"transformers.models.bert.tokenization_bert.BertTokenizer"}


def _cfg(folder: Path) -> SimpleNamespace:
    return SimpleNamespace(tokenizer_path=folder, tokenizer_mode="auto", chat_template=None)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PAGODA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / tokenizer_classes.CACHE_FILE


def test_a_changed_folder_misses(tiny, tmp_path, cache):
    folder = tmp_path / "tok"
    folder.mkdir()
    for f in tiny.path("llama").iterdir():
        if f.name.startswith(("tokenizer", "config", "chat_template")):
            (folder / f.name).write_bytes(f.read_bytes())
    key = tokenizer_classes.class_key(folder, True)
    load_tokenizer(_cfg(folder))
    assert key in json.loads(cache.read_text())
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 77}))
    assert tokenizer_classes.class_key(folder, True) != key
    assert tokenizer_classes.class_key(folder, False) != tokenizer_classes.class_key(folder, True)
    (folder / "extra.txt").write_text("x")  # the set of files is part of the key (it steers AutoTokenizer too)
    key2 = tokenizer_classes.class_key(folder, True)
    assert load_tokenizer(_cfg(folder)).model_max_length == 77
    assert key2 in json.loads(cache.read_text())


def test_a_failing_entry_is_forgotten_and_autotokenizer_runs(tiny, cache, monkeypatch):
    folder = tiny.path("llama")
    key = tokenizer_classes.class_key(folder, True)
    assert key is not None
    tokenizer_classes.update(key, "transformers.models.bert.tokenization_bert:BertTokenizer")

    class Broken:
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            raise OSError("no vocab.txt")

    monkeypatch.setattr(tokenizer_classes, "remembered_class", lambda k: Broken if k == key else None)
    tok = load_tokenizer(_cfg(folder))
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(folder))
    assert type(tok) is type(ref) and tok.get_vocab() == ref.get_vocab()
    assert json.loads(cache.read_text())[key] == f"{type(ref).__module__}:{type(ref).__qualname__}"


def test_only_transformers_classes_are_remembered_or_used(tiny, cache):
    class Custom:
        pass

    tokenizer_classes.remember("k", Custom())
    assert not cache.exists()
    tokenizer_classes.update("k", "os:PathLike")  # written by hand: never imported
    assert tokenizer_classes.remembered_class("k") is None
    cache.write_text("not json")
    assert tokenizer_classes.remembered_class("k") is None  # an unreadable file is an empty cache


def test_a_loaded_tokenizer_has_started_its_threads(tmp_path):
    """A fast tokenizer starts its thread pool on its first encode; ``load_tokenizer`` does that, so a serving
    process's thread count does not depend on whether it has served a request (tests/reliability compares it
    against a baseline). A fresh process: the pool is process-wide."""
    from tiny_models import build_long_context_model

    folder = build_long_context_model(tmp_path / "llama")
    code = ("import os, sys; from pathlib import Path; from types import SimpleNamespace\n"
            "from pagoda.engine.tokenizer import load_tokenizer\n"
            "n = lambda: len(os.listdir(f'/proc/{os.getpid()}/task'))\n"
            "tok = load_tokenizer(SimpleNamespace(tokenizer_path=Path(sys.argv[1]), tokenizer_mode='auto', "
            "chat_template=None))\n"
            "before = n(); tok.encode('a first request'); tok.decode([1, 2, 3]); print(before, n())")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out[0] == out[1], out
