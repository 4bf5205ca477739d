"""The pooling routes against vLLM's protocol, on real servers: /score's other spellings of its sides (``queries`` /
``documents``, ``queries`` / ``items``, ``data_1`` / ``data_2``; they were 400s) score as ``text_1`` / ``text_2``
do and mixing spellings is a 400 naming the stray field; rerank's usage has ``prompt_tokens``; text without
special tokens (``add_special_tokens: false``, chat ``messages``) truncates to its first ``truncate_prompt_tokens``
as text with them does (it kept the last ones); a two-label classifier whose config.json leaves out ``id2label``
(transformers does, for two labels) labels its outputs ``LABEL_<i>`` (it answered ``label: null``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from pooling_models import build_pooling_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
from server_utils import RemoteServer  # noqa: E402

TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool_review_srv")
    path = build_pooling_model(root / "bert", "bert")
    (root / "t.jinja").write_text(TEMPLATE)
    s = RemoteServer(str(path), ["--dtype", "float32", "--max-model-len", "32", "--chat-template",
                                 str(root / "t.jinja")])
    yield s
    s.stop()


def _ok(r):
    assert r.status_code == 200, r.text
    return r.json()


def test_score_field_spellings(srv):
    docs = ["the quick brown fox", "tokens"]
    ref = _ok(srv.post("/score", {"text_1": "the fox", "text_2": docs}))
    for a, b in (("queries", "documents"), ("queries", "items"), ("data_1", "data_2")):
        got = _ok(srv.post("/v1/score", {a: "the fox", b: docs}))
        assert got["data"] == ref["data"] and got["usage"] == ref["usage"], (a, b)
    for body, stray in (({"text_1": "fox", "documents": docs}, "documents"),
                        ({"queries": "fox", "documents": docs, "items": docs}, "items")):
        r = srv.post("/score", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == stray, r.text
    r = srv.post("/score", {"queries": "fox"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "documents", r.text


def test_rerank_usage_has_prompt_tokens(srv):
    rr = _ok(srv.post("/rerank", {"query": "the fox", "documents": ["tokens", "the quick brown fox"]}))
    assert rr["usage"]["prompt_tokens"] == rr["usage"]["total_tokens"] > 0


def _emb(srv, body):
    return torch.tensor(_ok(srv.post("/v1/embeddings", body))["data"][0]["embedding"])


def test_truncation_without_special_tokens_keeps_the_first_tokens(srv):
    text = "paris is the capital of france"
    ids = _ok(srv.post("/tokenize", {"prompt": text, "add_special_tokens": False}))["tokens"]
    head = _emb(srv, {"input": ids[:2]})
    for body in ({"input": text, "add_special_tokens": False, "truncate_prompt_tokens": 2},
                 {"messages": [{"role": "user", "content": text}], "truncate_prompt_tokens": 2}):
        got = srv.post("/v1/embeddings", body).json()
        assert got["usage"]["prompt_tokens"] == 2, got
        assert torch.allclose(torch.tensor(got["data"][0]["embedding"]), head, atol=1e-5), body
    # with special tokens as before: [CLS] first-token [SEP]
    with_sp = _ok(srv.post("/v1/embeddings", {"input": text, "truncate_prompt_tokens": 3}))
    assert with_sp["usage"]["prompt_tokens"] == 3


def test_two_label_classifier_without_id2label(tmp_path):
    import json

    path = build_pooling_model(tmp_path / "roberta-cls", "roberta-cls")
    assert "id2label" not in json.loads((path / "config.json").read_text())  # transformers leaves it out for 2
    s = RemoteServer(str(path), ["--dtype", "float32"])
    try:
        data = _ok(s.post("/classify", {"input": ["the quick brown fox", "tokens"]}))["data"]
        for d in data:
            assert d["num_classes"] == 2
            assert d["label"] == f"LABEL_{max(range(2), key=d['probs'].__getitem__)}"
    finally:
        s.stop()
