"""Classifier / cross-encoder checkpoints as sentence-transformers and HF run them (tiny random BERTs, fp32):
a cross-encoder's configured ``activation_fn`` (config.json's ``sentence_transformers`` / the older
``sbert_ce_default_activation_function`` / sentence-transformers 6's config_sentence_transformers.json) is the
score's activation, as CrossEncoder.predict and vLLM apply it (pagoda always applied sigmoid); a classifier's
``problem_type`` picks the classify activation (vLLM: regression -> none, multi-label -> sigmoid; pagoda always
applied softmax); sentence_bert_config.json's ``do_lower_case`` lowercases a classifier's texts too (it was applied
to embedding models only); vLLM's LM-head-token reranker conversion (Qwen3-Reranker's hf_overrides), which pagoda
does not implement, is a start-up error naming its keys (it was a bare missing ``score.weight``)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from pooling_models import build_pooling_model

from pagoda import LLM, PoolingParams

QUERY = "the capital of france"
DOCS = ["paris is the capital of france", "the lazy dog", "tokens at a time"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return {name: build_pooling_model(root / name, name) for name in ("bert-cross", "bert-cls")}


def _variant(src, dst, config: dict | None = None, files: dict | None = None, cased: bool = False):
    """A copy of the model folder ``src`` with config.json keys set, extra JSON files written and (``cased``) the
    tokenizer's lowercasing turned off, so ``do_lower_case`` shows."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    for name, content in (files or {}).items():
        (dst / name).write_text(json.dumps(content))
    if cased:
        tj = json.loads((dst / "tokenizer.json").read_text())
        tj["normalizer"]["lowercase"] = False
        (dst / "tokenizer.json").write_text(json.dumps(tj))
    return dst


def _close(a, b, tol=1e-4):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                          atol=tol, rtol=tol), (a, b)


IDENTITY = "torch.nn.modules.linear.Identity"


@pytest.mark.parametrize("config,files", [
    ({"sentence_transformers": {"activation_fn": IDENTITY}}, {}),
    ({"sbert_ce_default_activation_function": IDENTITY}, {}),
    ({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Tanh"}}, {}),
    ({}, {"config_sentence_transformers.json": {"activation_fn": IDENTITY, "model_type": "CrossEncoder"},
          "modules.json": [{"idx": 0, "name": "0", "path": "",
                            "type": "sentence_transformers.base.modules.transformer.Transformer"}],
          "sentence_bert_config.json": {"transformer_task": "sequence-classification"}}),
])
def test_cross_encoder_activation_fn_matches_sentence_transformers(models, tmp_path, config, files):
    from sentence_transformers import CrossEncoder

    path = _variant(models["bert-cross"], tmp_path / "ce", config, files)
    ref = CrossEncoder(str(path), device="cpu").predict([(QUERY, d) for d in DOCS])
    with LLM(str(path), dtype="float32") as llm:
        got = [o.outputs.score for o in llm.score(QUERY, DOCS, use_tqdm=False)]
        classify = llm.classify([QUERY], use_tqdm=False)[0].outputs.probs
        raw = llm.classify([QUERY], PoolingParams(use_activation=False), use_tqdm=False)[0].outputs.probs
    _close(got, ref)
    _close(classify, torch.sigmoid(torch.tensor(raw)))  # classify keeps vLLM's classify rule (sigmoid, one label)


def test_unsupported_cross_encoder_activation_is_named(models, tmp_path):
    path = _variant(models["bert-cross"], tmp_path / "ce",
                    {"sentence_transformers": {"activation_fn": "my_pkg.MyActivation"}})
    with pytest.raises(ValueError, match="activation_fn 'my_pkg.MyActivation'"):
        LLM(str(path), dtype="float32")


@pytest.mark.parametrize("problem_type,labels,act", [
    ("multi_label_classification", 3, torch.sigmoid),
    ("regression", 1, lambda x: x),
    ("single_label_classification", 3, lambda x: x.softmax(-1)),
])
def test_problem_type_picks_the_classify_activation(models, tmp_path, problem_type, labels, act):
    import transformers
    from transformers import AutoTokenizer

    src = models["bert-cls"] if labels == 3 else models["bert-cross"]
    path = _variant(src, tmp_path / "cls", {"problem_type": problem_type})
    hf = transformers.BertForSequenceClassification.from_pretrained(path, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with LLM(str(path), dtype="float32") as llm:
        outs = llm.classify(DOCS, use_tqdm=False)
    for text, o in zip(DOCS, outs, strict=True):
        with torch.no_grad():
            logits = hf(**tok(text, return_tensors="pt")).logits[0]
        assert len(o.outputs.probs) == labels
        _close(o.outputs.probs, act(logits))


def test_do_lower_case_lowercases_a_classifiers_texts(models, tmp_path):
    import transformers
    from transformers import AutoTokenizer

    path = _variant(models["bert-cls"], tmp_path / "cls", files={"sentence_bert_config.json":
                                                                  {"do_lower_case": True}}, cased=True)
    hf = transformers.BertForSequenceClassification.from_pretrained(path, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = ["The Capital of FRANCE", "PARIS is the capital"]
    assert tok(texts[0])["input_ids"] != tok(texts[0].lower())["input_ids"]  # the tokenizer itself is cased
    with LLM(str(path), dtype="float32") as llm:
        outs = llm.classify(texts, use_tqdm=False)
    for text, o in zip(texts, outs, strict=True):
        with torch.no_grad():
            _close(o.outputs.probs, hf(**tok(text.lower(), return_tensors="pt")).logits[0].softmax(-1))


def test_tokenize_pair_lowercases_both_texts(models, tmp_path):
    from transformers import AutoTokenizer

    from pagoda.pooling.inputs import tokenize_pair

    path = _variant(models["bert-cross"], tmp_path / "ce", cased=True)
    tok = AutoTokenizer.from_pretrained(path)
    got = tokenize_pair(tok, "The Capital", "PARIS is", None, 64, lowercase=True)
    ref = tok("the capital", "paris is")
    assert got["prompt_token_ids"] == ref["input_ids"] and got["token_type_ids"] == ref["token_type_ids"]
    assert tokenize_pair(tok, "The Capital", "PARIS is", None, 64)["prompt_token_ids"] != ref["input_ids"]


def test_do_lower_case_cross_encoder_score_matches_sentence_transformers(models, tmp_path):
    from sentence_transformers import CrossEncoder

    cased = _variant(models["bert-cross"], tmp_path / "cased", cased=True)
    st_dir = tmp_path / "st"
    CrossEncoder(str(cased), device="cpu").save(str(st_dir))  # sentence-transformers 6's CrossEncoder layout
    sb = json.loads((st_dir / "sentence_bert_config.json").read_text())
    (st_dir / "sentence_bert_config.json").write_text(json.dumps({**sb, "do_lower_case": True}))
    query, docs = "The Capital of FRANCE", ["PARIS is the capital of France", "the lazy DOG"]
    ref = CrossEncoder(str(st_dir), device="cpu").predict([(query, d) for d in docs])
    with LLM(str(st_dir), dtype="float32") as llm:
        got = [o.outputs.score for o in llm.score(query, docs, use_tqdm=False)]
    _close(got, ref)
    sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
    from server_utils import RemoteServer

    srv = RemoteServer(str(st_dir), ["--dtype", "float32"])  # the server's /score lowercases the pair too
    try:
        r = srv.post("/score", {"text_1": query, "text_2": docs})
        assert r.status_code == 200, r.text
        _close([d["score"] for d in r.json()["data"]], ref)
    finally:
        srv.stop()


def test_token_reranker_overrides_are_a_startup_error(models):
    overrides = {"classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": True}
    with pytest.raises(ValueError, match="classifier_from_token") as e:
        LLM(str(models["bert-cross"]), dtype="float32", hf_overrides=overrides)
    assert "is_original_qwen3_reranker" in str(e.value)
