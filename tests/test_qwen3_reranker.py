"""vLLM's "LLM as classifier" conversion (Qwen3-Reranker's ``--hf-overrides``): a causal-LM checkpoint's LM-head rows
for ``classifier_from_token`` become the classifier (pagoda/pooling/config.py ``FromTokenClassifier``,
models/llama_pooling.py). Reference: HF transformers' causal LM on the same tiny random weights, whose next-token
logits at the last token of the formatted pair give p = softmax([logit_false, logit_true])[1]."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pagoda import LLM
from pagoda.pooling.inputs import tokenize_pair

# The tiny BPE vocabulary has no "no" / "yes": two of its entries stand in for them.
FALSE, TRUE = "on", "is"
QWEN3_OVERRIDES = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": [FALSE, TRUE],
                   "is_original_qwen3_reranker": True}

# vLLM's qwen3_reranker.jinja (examples/pooling/score/template), rendered over query / document messages.
SCORE_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: "
    "{{ messages | selectattr(\"role\", \"eq\", \"system\") | map(attribute=\"content\") | first | "
    "default(\"Given a web search query, retrieve relevant passages that answer the query\") }}\n<Query>: "
    "{{ messages | selectattr(\"role\", \"eq\", \"query\") | map(attribute=\"content\") | first }}\n<Document>: "
    "{{ messages | selectattr(\"role\", \"eq\", \"document\") | map(attribute=\"content\") | first }}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n")

# The pair pre-formatted as vLLM's older qwen3_reranker example does (the query carries the prompt's head, each
# document its tail), for the score APIs without a template.
PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
          "Instruct provided.<|im_end|>\n<|im_start|>user\n")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QUERY = PREFIX + "<Instruct>: Given a web search query, retrieve relevant passages\n<Query>: the capital of France\n"
DOCS = ["<Document>: Paris is the capital of France" + SUFFIX, "<Document>: the lazy dog" + SUFFIX,
        "<Document>: Berlin is a city in Germany" + SUFFIX]


@pytest.fixture(scope="module")
def qwen3(tiny) -> Path:
    return tiny.path("qwen3")


@pytest.fixture(scope="module")
def tok(qwen3):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3)


def _next_token_logits(tiny, arch: str, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return tiny.hf(arch)(torch.tensor([ids])).logits[0, -1].float()


def _ref_p(tiny, arch: str, tok, ids: list[int]) -> float:
    """softmax([logit_false, logit_true])[1] at the last token (Qwen3-Reranker's own scoring)."""
    logits = _next_token_logits(tiny, arch, ids)
    pair = logits[[tok.convert_tokens_to_ids(FALSE), tok.convert_tokens_to_ids(TRUE)]]
    return float(torch.softmax(pair, dim=0)[1])


@pytest.fixture(scope="module")
def reranker(qwen3):
    with LLM(str(qwen3), runner="pooling", dtype="float32", hf_overrides=QWEN3_OVERRIDES) as llm:
        yield llm


def test_offline_score_is_the_two_token_softmax(tiny, tok, reranker):
    outs = reranker.score(QUERY, DOCS, use_tqdm=False)
    for doc, out in zip(DOCS, outs, strict=True):
        ids = tok(QUERY + doc)["input_ids"]  # vLLM: an LLM-as-reranker's pair is text_1 + text_2, no separator
        assert out.prompt_token_ids == ids
        assert out.outputs.score == pytest.approx(_ref_p(tiny, "qwen3", tok, ids), abs=1e-5)


def test_classify_is_one_label_true_minus_false(tiny, tok, reranker):
    text = QUERY + DOCS[0]
    ids = tok(text)["input_ids"]
    logits = _next_token_logits(tiny, "qwen3", ids)
    raw = float(logits[tok.convert_tokens_to_ids(TRUE)] - logits[tok.convert_tokens_to_ids(FALSE)])
    (out,) = reranker.classify([text], use_tqdm=False)
    assert out.outputs.probs == pytest.approx([_ref_p(tiny, "qwen3", tok, ids)], abs=1e-5)
    from pagoda.pooling.params import PoolingParams

    (logit,) = reranker.classify([text], pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    assert logit.outputs.probs == pytest.approx([raw], abs=1e-4)


def test_tied_embeddings_take_the_rows_from_the_embedding(tiny):
    from transformers import AutoTokenizer

    path = tiny.path("qwen3-tied")
    tok = AutoTokenizer.from_pretrained(path)
    with LLM(str(path), runner="pooling", dtype="float32", hf_overrides=QWEN3_OVERRIDES) as llm:
        outs = llm.score(QUERY, DOCS[:2], use_tqdm=False)
    for doc, out in zip(DOCS, outs, strict=False):
        assert out.outputs.score == pytest.approx(_ref_p(tiny, "qwen3-tied", tok, tok(QUERY + doc)["input_ids"]),
                                                  abs=1e-5)


@pytest.mark.parametrize("arch,cls_arch", [("qwen2", "Qwen2ForSequenceClassification"),
                                           ("llama", "LlamaForSequenceClassification")])
def test_other_llama_family_with_an_explicit_method(tiny, arch, cls_arch):
    """mxbai-rerank-v2's recipe (Qwen2, ``method: from_2_way_softmax``), and one token's row as the label
    (``no_post_processing``, bge-reranker-v2-gemma's recipe) on Llama."""
    from transformers import AutoTokenizer

    path = tiny.path(arch)
    tok = AutoTokenizer.from_pretrained(path)
    text = QUERY + DOCS[1]
    ids = tok(text)["input_ids"]
    logits = _next_token_logits(tiny, arch, ids)
    two_way = {"architectures": [cls_arch], "classifier_from_token": [FALSE, TRUE], "method": "from_2_way_softmax"}
    with LLM(str(path), runner="pooling", dtype="float32", hf_overrides=two_way) as llm:
        (out,) = llm.score(QUERY, DOCS[1], use_tqdm=False)
    assert out.outputs.score == pytest.approx(_ref_p(tiny, arch, tok, ids), abs=1e-5)
    one = {"architectures": [cls_arch], "classifier_from_token": [TRUE], "method": "no_post_processing"}
    with LLM(str(path), runner="pooling", dtype="float32", hf_overrides=one) as llm:
        (cls,) = llm.classify([text], use_tqdm=False)
        (score,) = llm.score(QUERY, DOCS[1], use_tqdm=False)
    true_logit = float(logits[tok.convert_tokens_to_ids(TRUE)])
    assert cls.outputs.probs == pytest.approx([float(torch.sigmoid(torch.tensor(true_logit)))], abs=1e-5)
    assert score.outputs.score == pytest.approx(cls.outputs.probs[0], abs=1e-6)


def test_score_template_renders_query_and_document(tok):
    """vLLM's score template: the query / document messages through the given chat template, tokenized as one
    text; without one an LLM-as-reranker's pair is text_1 + text_2, a cross-encoder's a text pair."""
    enc = tokenize_pair(tok, "the capital", "Paris", None, 512, chat_template=SCORE_TEMPLATE)
    messages = [{"role": "query", "content": "the capital"}, {"role": "document", "content": "Paris"}]
    rendered = tok.apply_chat_template(messages, chat_template=SCORE_TEMPLATE, tokenize=False)
    assert rendered == SCORE_TEMPLATE.split("<Instruct>")[0] + (  # jinja drops the template's last newline
        "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: the capital"
        "\n<Document>: Paris<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n")
    assert enc["prompt_token_ids"] == tok(rendered)["input_ids"]
    concat = tokenize_pair(tok, "ab", "cd", None, 512, use_sep_token=False)
    assert concat["prompt_token_ids"] == tok("abcd")["input_ids"]
    assert tokenize_pair(tok, "ab", "cd", None, 512)["prompt_token_ids"] == tok("ab", "cd")["input_ids"]


def test_templated_pair_matches_the_reference(tiny, tok, reranker):
    """The template-rendered ids (what ``--chat-template`` gives the score APIs) score as HF does on them."""
    ids = tokenize_pair(tok, "the capital of France", "Paris is the capital", None, 512,
                        chat_template=SCORE_TEMPLATE)["prompt_token_ids"]
    (out,) = reranker.encode([{"prompt_token_ids": ids}], pooling_task="score", use_tqdm=False)
    assert float(out.outputs.data.reshape(-1)[0]) == pytest.approx(_ref_p(tiny, "qwen3", tok, ids), abs=1e-5)
    # LLM.score(..., chat_template=...) as vLLM's: the pair is rendered through it
    (scored,) = reranker.score("the capital of France", ["Paris is the capital"], use_tqdm=False,
                               chat_template=SCORE_TEMPLATE)
    assert scored.prompt_token_ids == ids
    assert scored.outputs.score == pytest.approx(_ref_p(tiny, "qwen3", tok, ids), abs=1e-5)


def test_startup_errors_name_the_problem(qwen3, tiny):
    with pytest.raises(ValueError, match=r"\['yes'\] is not a single token"):
        LLM(str(qwen3), runner="pooling", dtype="float32",
            hf_overrides={**QWEN3_OVERRIDES, "classifier_from_token": [FALSE, "yes"]})
    with pytest.raises(ValueError, match="exactly two tokens"):
        LLM(str(qwen3), runner="pooling", dtype="float32",
            hf_overrides={**QWEN3_OVERRIDES, "classifier_from_token": [TRUE]})
    with pytest.raises(ValueError, match="method must be one of"):
        LLM(str(qwen3), runner="pooling", dtype="float32",
            hf_overrides={"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": [TRUE]})
    with pytest.raises(ValueError, match="is_original_qwen3_reranker is for Qwen3ForSequenceClassification"):
        LLM(str(tiny.path("qwen2")), runner="pooling", dtype="float32",
            hf_overrides={**QWEN3_OVERRIDES, "architectures": ["Qwen2ForSequenceClassification"]})
    with pytest.raises(ValueError, match="not on Qwen3ForCausalLM") as e:  # no architectures override: generative
        LLM(str(qwen3), dtype="float32", hf_overrides={"classifier_from_token": [FALSE, TRUE],
                                                       "is_original_qwen3_reranker": True})
    assert "classifier_from_token" in str(e.value)


def test_served_score_and_rerank(tiny, tok, qwen3):
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
    from server_utils import RemoteServer

    refs = [_ref_p(tiny, "qwen3", tok, tok(QUERY + d)["input_ids"]) for d in DOCS]
    srv = RemoteServer(str(qwen3), ["--dtype", "float32", "--runner", "pooling",
                                    "--hf-overrides", json.dumps(QWEN3_OVERRIDES)])
    try:
        r = srv.post("/score", {"text_1": QUERY, "text_2": DOCS})
        assert r.status_code == 200, r.text
        assert [d["score"] for d in r.json()["data"]] == pytest.approx(refs, abs=1e-5)
        for route in ("/rerank", "/v1/rerank"):
            r = srv.post(route, {"query": QUERY, "documents": DOCS, "top_n": 2})
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            order = sorted(range(len(DOCS)), key=lambda i: -refs[i])[:2]
            assert [x["index"] for x in results] == order
            assert [x["relevance_score"] for x in results] == pytest.approx([refs[i] for i in order], abs=1e-5)
    finally:
        srv.stop()


def test_served_score_renders_the_chat_template(tiny, tok, qwen3, tmp_path):
    """``--chat-template`` is the served score template: each (query, document) pair is rendered through it and
    scored as HF scores the rendered text (vLLM's qwen3_reranker.jinja route)."""
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
    from server_utils import RemoteServer

    template = tmp_path / "qwen3_reranker.jinja"
    template.write_text(SCORE_TEMPLATE, encoding="utf-8")
    query, docs = "the capital of France", ["Paris is the capital of France", "the lazy dog"]
    refs = [_ref_p(tiny, "qwen3", tok, tokenize_pair(tok, query, d, None, 512, chat_template=SCORE_TEMPLATE)
                   ["prompt_token_ids"]) for d in docs]
    srv = RemoteServer(str(qwen3), ["--dtype", "float32", "--runner", "pooling", "--chat-template", str(template),
                                    "--hf-overrides", json.dumps(QWEN3_OVERRIDES)])
    try:
        r = srv.post("/score", {"text_1": query, "text_2": docs})
        assert r.status_code == 200, r.text
        assert [d["score"] for d in r.json()["data"]] == pytest.approx(refs, abs=1e-5)
        r = srv.post("/v1/rerank", {"query": query, "documents": docs})
        assert r.status_code == 200, r.text
        assert {x["index"]: x["relevance_score"] for x in r.json()["results"]} == pytest.approx(dict(enumerate(refs)),
                                                                                               abs=1e-5)
    finally:
        srv.stop()


def test_score_takes_tokenization_kwargs(tok, reranker):
    """vLLM's ``LLM.score(tokenization_kwargs=...)``: a cross-encoder's pair takes the truncation keys (the smaller
    of them and truncate_prompt_tokens wins) and refuses add_special_tokens=False by name."""
    from pagoda.errors import ValidationError

    full = tok(QUERY + DOCS[0])["input_ids"]
    (cut,) = reranker.score(QUERY, DOCS[:1], use_tqdm=False, tokenization_kwargs={"truncation": True, "max_length": 5})
    (same,) = reranker.score(QUERY, DOCS[:1], use_tqdm=False, truncate_prompt_tokens=5)
    assert cut.prompt_token_ids == same.prompt_token_ids == tok(QUERY + DOCS[0], truncation=True,
                                                                max_length=5)["input_ids"] != full
    assert cut.outputs.score == same.outputs.score
    (both,) = reranker.score(QUERY, DOCS[:1], use_tqdm=False, truncate_prompt_tokens=4,
                             tokenization_kwargs={"truncate_prompt_tokens": 6})
    assert len(both.prompt_token_ids) == 4
    with pytest.raises(ValidationError, match="add_special_tokens=False is not supported"):
        reranker.score(QUERY, DOCS[:1], use_tqdm=False, tokenization_kwargs={"add_special_tokens": False})
    with pytest.raises(ValidationError, match=r"\['padding'\] are not supported"):
        reranker.score(QUERY, DOCS[:1], use_tqdm=False, tokenization_kwargs={"padding": True})


def test_convert_classify_of_the_causal_lm_is_the_classifier(tok, reranker, qwen3):
    """vLLM's ``--convert classify`` of a ``*ForCausalLM`` with ``classifier_from_token``: the same classifier as the
    ``*ForSequenceClassification`` override; without the keys it is refused, naming them."""
    keys = {k: v for k, v in QWEN3_OVERRIDES.items() if k != "architectures"}
    want = reranker.score(QUERY, DOCS, use_tqdm=False)
    with LLM(str(qwen3), runner="pooling", convert="classify", dtype="float32", hf_overrides=keys) as llm:
        got = llm.score(QUERY, DOCS, use_tqdm=False)
    assert [g.outputs.score for g in got] == [w.outputs.score for w in want]
    with pytest.raises(ValueError, match="classifier_from_token and method in --hf-overrides"):
        LLM(str(qwen3), runner="pooling", convert="classify", dtype="float32")
