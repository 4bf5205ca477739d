"""The pooling routes as a vLLM user meets them (a real server on a tiny BERT declared Matryoshka): /pooling's
``encoding_format: base64`` (float32, row-major, also for per-token outputs), ``priority`` refused rather than
ignored, rerank's ``top_n: 0`` meaning all documents (vLLM's default), errors naming the request's own field
(text_2, query, documents, use_activation; lone surrogates a 400, not a 500), and chat-style embedding input
under the chat route's rules (a request's chat_template needs --trust-request-chat-template; a template error is
a 400; add_special_tokens defaults to false for messages, true for input)."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
import torch
from pooling_models import build_pooling_model
from server_utils import RemoteServer

TEMPLATE = ("{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('unknown role') }}{% endif %}"
            "{{ m.content }}{% endfor %}")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool_rules_srv")
    path = build_pooling_model(root / "bert", "bert")
    mat = root / "bert-mat"
    shutil.copytree(path, mat)
    cfg = json.loads((mat / "config.json").read_text())
    (mat / "config.json").write_text(json.dumps({**cfg, "matryoshka_dimensions": [8, 16, 32]}))
    (root / "t.jinja").write_text(TEMPLATE)
    s = RemoteServer(str(mat), ["--dtype", "float32", "--max-model-len", "32", "--chat-template",
                                str(root / "t.jinja")])
    yield s
    s.stop()


def _err(r, param):
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    return r.json()["error"]["message"]


def _f32(b64: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.float32)


@pytest.mark.parametrize("task", ["embed", "token_embed"])
def test_pooling_base64(srv, task):
    body = {"input": ["the quick brown fox", "tokens"], "task": task}
    f = srv.post("/pooling", body)
    b = srv.post("/pooling", {**body, "encoding_format": "base64"})
    assert f.status_code == 200 and b.status_code == 200, (f.text, b.text)
    for df, db in zip(f.json()["data"], b.json()["data"], strict=True):
        assert isinstance(db["data"], str)
        assert torch.equal(_f32(db["data"]), torch.tensor(df["data"]).reshape(-1))


def test_token_embed_dimensions(srv):
    full = srv.post("/pooling", {"input": "the quick brown fox", "task": "token_embed", "normalize": False})
    cut = srv.post("/pooling", {"input": "the quick brown fox", "task": "token_embed", "dimensions": 8})
    assert full.status_code == 200 and cut.status_code == 200, (full.text, cut.text)
    rows = torch.tensor(full.json()["data"][0]["data"])
    got = torch.tensor(cut.json()["data"][0]["data"])
    assert got.shape == (rows.shape[0], 8)
    assert torch.allclose(got, torch.nn.functional.normalize(rows[:, :8], dim=-1), atol=1e-5)


@pytest.mark.parametrize("path,body", [
    ("/v1/embeddings", {"input": "fox"}),
    ("/pooling", {"input": "fox"}),
    ("/score", {"text_1": "fox", "text_2": "dog"}),
    ("/rerank", {"query": "fox", "documents": ["dog"]}),
])
def test_priority_is_refused_not_ignored(srv, path, body):
    assert "priority" in _err(srv.post(path, {**body, "priority": 1}), "priority")
    assert srv.post(path, {**body, "priority": 0}).status_code == 200


def test_rerank_top_n_zero_is_all(srv):
    docs = ["the quick brown fox", "tokens", "paris is the capital of france"]
    r = srv.post("/rerank", {"query": "the fox", "documents": docs, "top_n": 0})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert sorted(x["index"] for x in res) == [0, 1, 2]
    assert [x["relevance_score"] for x in res] == sorted((x["relevance_score"] for x in res), reverse=True)
    _err(srv.post("/rerank", {"query": "the fox", "documents": docs, "top_n": -1}), "top_n")


LONG = "fox " * 40  # over max_model_len (32)


@pytest.mark.parametrize("path,body,param", [
    ("/score", {"text_1": "fox", "text_2": ["dog", LONG]}, "text_2"),
    ("/score", {"text_1": LONG, "text_2": ["dog"]}, "text_1"),
    ("/score", {"text_1": ["a", "b", "c"], "text_2": ["dog", "cat"]}, "text_2"),
    ("/rerank", {"query": "fox", "documents": ["dog", LONG]}, "documents"),
    ("/rerank", {"query": LONG, "documents": ["dog"]}, "query"),
    ("/score", {"text_1": "fox", "text_2": "dog", "use_activation": False}, "use_activation"),
    ("/rerank", {"query": "fox", "documents": ["dog"], "use_activation": True}, "use_activation"),
    ("/pooling", {"input": "fox", "use_activation": False}, "use_activation"),
    # lone surrogates (valid JSON, not Unicode): a 400 naming the field, not the tokenizer's TypeError as a 500
    ("/v1/embeddings", {"input": ["fox", "\ud800"]}, "input"),
    ("/score", {"text_1": "fox", "text_2": ["\ud800"]}, "text_2"),
    ("/rerank", {"query": "fox", "documents": [{"text": "\ud800"}]}, "documents"),
    ("/rerank", {"query": "\ud800", "documents": ["dog"]}, "query"),
])
def test_errors_name_the_request_field(srv, path, body, param):
    _err(srv.post(path, json.dumps(body)), param)  # ASCII JSON: lone surrogates travel as \\ud800 escapes


def test_chat_style_embeddings(srv):
    text = "the quick brown fox"
    msgs = [{"role": "user", "content": text}]
    plain = srv.post("/v1/embeddings", {"input": text, "add_special_tokens": False}).json()
    special = srv.post("/v1/embeddings", {"input": text}).json()
    chat = srv.post("/v1/embeddings", {"messages": msgs}).json()
    chat_sp = srv.post("/v1/embeddings", {"messages": msgs, "add_special_tokens": True}).json()
    assert chat["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert chat_sp["usage"]["prompt_tokens"] == special["usage"]["prompt_tokens"] == \
        plain["usage"]["prompt_tokens"] + 2  # [CLS] ... [SEP]
    for a, b in ((chat, plain), (chat_sp, special)):
        assert torch.allclose(torch.tensor(a["data"][0]["embedding"]), torch.tensor(b["data"][0]["embedding"]),
                              atol=1e-5)
    # a request's own template needs --trust-request-chat-template, as on the chat route
    _err(srv.post("/v1/embeddings", {"messages": msgs, "chat_template": "{{ messages[0].content }}"}),
         "chat_template")
    # a template that raises is the request's fault: a 400 naming messages, and the server goes on
    assert "unknown role" in _err(srv.post("/v1/embeddings", {"messages": [{"role": "bad", "content": "x"}]}),
                                  "messages")
    assert srv.post("/v1/embeddings", {"messages": msgs}).status_code == 200


def test_classifier_of_several_labels(tmp_path):
    """A 3-label classifier: /classify's probabilities equal LLM.classify's (HF-checked in test_pooling_models),
    ``use_activation: false`` gives logits; /score and /rerank answer 400 (vLLM serves them only for
    num_labels == 1) and so does an embedding field sent to it."""
    from pagoda import LLM

    path = build_pooling_model(tmp_path / "bert-cls", "bert-cls")
    texts = ["the quick brown fox", "tokens"]
    with LLM(str(path), dtype="float32") as llm:
        ref = [o.outputs.probs for o in llm.classify(texts, use_tqdm=False)]
    s = RemoteServer(str(path), ["--dtype", "float32"])
    try:
        r = s.post("/classify", {"input": texts})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == [0, 1] and all(d["num_classes"] == 3 for d in data)
        for d, p in zip(data, ref, strict=True):
            assert d["probs"] == pytest.approx(p, abs=1e-5)
            assert d["label"] == f"LABEL_{max(range(3), key=p.__getitem__)}"
        raw = s.post("/classify", {"input": texts[0], "use_activation": False}).json()
        logits = torch.tensor(raw["data"][0]["probs"])
        assert torch.allclose(logits.softmax(-1), torch.tensor(ref[0]), atol=1e-5)
        assert "num_labels == 1" in _err(s.post("/score", {"text_1": "fox", "text_2": "dog"}), "task")
        assert "num_labels == 1" in _err(s.post("/rerank", {"query": "fox", "documents": ["dog"]}), "task")
        _err(s.post("/pooling", {"input": "fox", "task": "classify", "normalize": True}), "normalize")
        assert s.post("/classify", {"input": "fox"}).status_code == 200  # the server goes on
    finally:
        s.stop()
