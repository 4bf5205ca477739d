"""``load_tokenizer`` hands AutoTokenizer the folder's config.json as a plain ``PreTrainedConfig`` (so transformers does
not import the model type's configuration module, which costs the server's start-up): the tokenizer it builds must be
the one AutoTokenizer builds on its own — same class, same ids, same text, same special tokens and chat template — for
folders whose tokenizer_config names the class, folders where only the model type decides it, and a real checkpoint."""

import json
import shutil
from types import SimpleNamespace

import pytest
from tiny_models import CORPUS

from pagoda.engine.tokenizer import load_tokenizer


def _same_as_auto(folder):
    from transformers import AutoTokenizer

    ours = load_tokenizer(SimpleNamespace(tokenizer_path=folder, tokenizer_mode="auto", chat_template=None))
    ref = AutoTokenizer.from_pretrained(str(folder))
    assert type(ours) is type(ref)
    texts = CORPUS[:4] + ["  leading spaces, émigré 日本語 <|im_end|>\n"]
    for text in texts:
        ids = ref.encode(text)
        assert ours.encode(text) == ids
        assert ours.decode(ids) == ref.decode(ids)
    assert ours.all_special_tokens == ref.all_special_tokens
    assert ours.chat_template == ref.chat_template
    assert len(ours) == len(ref)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt_neox"])
def test_tokenizer_class_named_in_tokenizer_config(tiny, arch):
    _same_as_auto(tiny.path(arch))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox"])
def test_tokenizer_class_from_the_model_type(tiny, arch, tmp_path):
    """No tokenizer_class in tokenizer_config.json: AutoTokenizer picks the class by config.json's model_type."""
    folder = tmp_path / arch
    shutil.copytree(tiny.path(arch), folder)
    tc = folder / "tokenizer_config.json"
    d = json.loads(tc.read_text())
    d.pop("tokenizer_class", None)
    tc.write_text(json.dumps(d))
    _same_as_auto(folder)


def test_real_sentence_transformer_tokenizer():
    from pooling_models import minilm_path

    _same_as_auto(minilm_path())
