"""Pooling models against HF transformers on the same weights (tiny random models, fp32): encoders
(BERT, XLM-R position offset), sequence classifiers (BERT pooler + classifier, RoBERTa head, Qwen2 score
head on the last token), a Llama decoder embedder (last-token and mean pooling), token-level outputs,
prompts of varied lengths batched together; and the refusals (runner mismatch, bad input)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pooling_models import build_pooling_model

from pagoda import LLM, PoolingParams
from pagoda.errors import ValidationError

TEXTS = ["the quick brown fox", "paris is the capital of france. berlin is the capital of germany. " * 3,
         "tokens", "large language models generate text one token at a time"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("pooling")
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_pooling_model(root / name, name)
        return cache[name]
    return get


def _hf(path, cls_name):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(path, torch_dtype=torch.float32).eval()


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _hf_hidden(model, tok, text, pair=None):
    enc = tok(text, pair, return_tensors="pt") if pair else tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).last_hidden_state[0]


def _close(a, b, tol=1e-4):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float32), b.float(), atol=tol, rtol=tol), (a, b)


@pytest.mark.parametrize("name,cls", [("bert", "BertModel"), ("xlmr", "XLMRobertaModel")])
def test_encoder_embeddings_match_hf(paths, name, cls):
    path = paths(name)
    hf, tok = _hf(path, cls), _tok(path)
    with LLM(str(path), dtype="float32") as llm:  # default for an encoder: CLS pooling, normalised
        outs = llm.embed(TEXTS, use_tqdm=False)
        raw = llm.embed(TEXTS, PoolingParams(normalize=False), use_tqdm=False)
    for text, o, r in zip(TEXTS, outs, raw, strict=True):
        h = _hf_hidden(hf, tok, text)
        _close(r.outputs.embedding, h[0])
        _close(o.outputs.embedding, F.normalize(h[0], dim=0))


def test_mean_pooling_config_and_token_embed(paths):
    path = paths("bert")
    hf, tok = _hf(path, "BertModel"), _tok(path)
    with LLM(str(path), dtype="float32", pooler_config={"pooling_type": "MEAN", "normalize": False}) as llm:
        outs = llm.embed(TEXTS, use_tqdm=False)
        toks = llm.encode(TEXTS[:2], pooling_task="token_embed", use_tqdm=False)
    for text, o in zip(TEXTS, outs, strict=True):
        _close(o.outputs.embedding, _hf_hidden(hf, tok, text).mean(0))
    for text, o in zip(TEXTS[:2], toks, strict=True):
        _close(o.outputs.data, _hf_hidden(hf, tok, text))


@pytest.mark.parametrize("name,cls", [("bert-cls", "BertForSequenceClassification"),
                                      ("roberta-cls", "RobertaForSequenceClassification")])
def test_sequence_classifier_matches_hf(paths, name, cls):
    path = paths(name)
    hf, tok = _hf(path, cls), _tok(path)
    with LLM(str(path), dtype="float32") as llm:
        outs = llm.classify(TEXTS, use_tqdm=False)
        raw = llm.classify(TEXTS[:1], PoolingParams(use_activation=False), use_tqdm=False)
    for text, o in zip(TEXTS, outs, strict=True):
        with torch.no_grad():
            logits = hf(**tok(text, return_tensors="pt")).logits[0]
        _close(o.outputs.probs, logits.softmax(-1))
    with torch.no_grad():
        _close(raw[0].outputs.probs, hf(**tok(TEXTS[0], return_tensors="pt")).logits[0])


def test_cross_encoder_score_uses_token_types(paths):
    path = paths("bert-cross")
    hf, tok = _hf(path, "BertForSequenceClassification"), _tok(path)
    query, docs = "the capital of france", ["paris is the capital of france", "the lazy dog", "tokens at a time"]
    with LLM(str(path), dtype="float32") as llm:
        scores = llm.score(query, docs, use_tqdm=False)
    for d, s in zip(docs, scores, strict=True):
        enc = tok(query, d, return_tensors="pt")
        assert enc["token_type_ids"].sum() > 0
        with torch.no_grad():
            ref = torch.sigmoid(hf(**enc).logits[0, 0])
        _close(s.outputs.score, ref)


def test_decoder_embedder_last_and_mean(paths):
    path = paths("llama")
    hf, tok = _hf(path, "LlamaModel"), _tok(path)
    for ptype in ("LAST", "MEAN"):
        with LLM(str(path), dtype="float32", convert="embed", pooler_config={"pooling_type": ptype}) as llm:
            outs = llm.embed(TEXTS, use_tqdm=False)
        for text, o in zip(TEXTS, outs, strict=True):
            h = _hf_hidden(hf, tok, text)
            _close(o.outputs.embedding, F.normalize(h[-1] if ptype == "LAST" else h.mean(0), dim=0))


def test_qwen2_sequence_classification_and_reward(paths):
    path = paths("qwen2-cls")
    hf, tok = _hf(path, "Qwen2ForSequenceClassification"), _tok(path)
    with LLM(str(path), dtype="float32") as llm:
        outs = llm.classify(TEXTS, use_tqdm=False)
        rewards = llm.reward(TEXTS[:1], use_tqdm=False)
    for text, o in zip(TEXTS, outs, strict=True):
        with torch.no_grad():
            logits = hf(**tok(text, return_tensors="pt")).logits[0]
        _close(o.outputs.probs, logits.softmax(-1))
    with torch.no_grad():
        h = hf.model(**tok(TEXTS[0], return_tensors="pt")).last_hidden_state[0]
        _close(rewards[0].outputs.data, hf.score(h))


def test_runner_mismatch_and_bad_input(paths):
    from pagoda import SamplingParams

    path = paths("bert")
    with LLM(str(path), dtype="float32", max_model_len=32) as llm:
        with pytest.raises(ValidationError, match="runner pooling") as e:
            llm.generate("hello", SamplingParams(max_tokens=2), use_tqdm=False)
        assert e.value.parameter == "model"
        with pytest.raises(ValidationError) as e:
            llm.embed([""], use_tqdm=False)
            llm.embed([[]], use_tqdm=False)
        long = "the quick brown fox " * 20
        with pytest.raises(ValidationError, match="maximum context length") as e:
            llm.embed([long], use_tqdm=False)
        assert e.value.parameter == "prompt" and e.value.code == "context_length_exceeded"
        assert len(llm.embed([long], truncate_prompt_tokens=-1, use_tqdm=False)[0].prompt_token_ids) == 32
        with pytest.raises(ValidationError, match="dimensions") as e:
            llm.embed(["hi"], PoolingParams(dimensions=8), use_tqdm=False)
        assert e.value.parameter == "dimensions"
        with pytest.raises(ValidationError) as e:
            llm.classify(["hi"], use_tqdm=False)
        assert e.value.parameter == "task"


def test_matryoshka_dimensions(paths, tmp_path):
    import json
    import shutil

    src = paths("bert")
    dst = tmp_path / "mat"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "matryoshka_dimensions": [8, 16, 32]}))
    with LLM(str(dst), dtype="float32") as llm:
        full = llm.embed(["the quick brown fox"], PoolingParams(normalize=False), use_tqdm=False)[0]
        cut = llm.embed(["the quick brown fox"], PoolingParams(dimensions=8), use_tqdm=False)[0]
        with pytest.raises(ValidationError, match="dimensions"):
            llm.embed(["x"], PoolingParams(dimensions=9), use_tqdm=False)
    _close(cut.outputs.embedding, F.normalize(torch.tensor(full.outputs.embedding[:8]), dim=0))


def test_generative_model_refuses_pooling(tiny):
    llm = tiny.llm("llama")
    with pytest.raises(ValidationError, match="generative model") as e:
        llm.embed(["hello"], use_tqdm=False)
    assert e.value.parameter == "model"
