"""Offline pooling parameters as vLLM checks them: a field the task does not honour is refused (vLLM's
``PoolingParams.valid_parameters``), ``token_embed`` honours ``dimensions`` (cut per token, against HF's hidden
states), a classifier of several labels refuses ``score`` ("Score API is only enabled for num_labels == 1"), and
text that is not Unicode (a lone surrogate) is a ValidationError, not the tokenizer's TypeError."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from pooling_models import build_pooling_model

from pagoda import LLM, PoolingParams
from pagoda.errors import ValidationError


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool_rules")
    out = {n: build_pooling_model(root / n, n) for n in ("bert", "bert-cls")}
    mat = root / "bert-mat"  # the tiny BERT declared Matryoshka
    shutil.copytree(out["bert"], mat)
    cfg = json.loads((mat / "config.json").read_text())
    (mat / "config.json").write_text(json.dumps({**cfg, "matryoshka_dimensions": [8, 16, 32]}))
    out["bert-mat"] = mat
    return out


@pytest.mark.parametrize("call,params,field", [
    ("embed", PoolingParams(use_activation=False), "use_activation"),
    ("encode_token_embed", PoolingParams(use_activation=True), "use_activation"),
])
def test_embed_tasks_refuse_classifier_fields(paths, call, params, field):
    with LLM(str(paths["bert"]), dtype="float32") as llm:
        with pytest.raises(ValidationError, match=r"Task (token_)?embed only supports \['dimensions', 'normalize'\]") \
                as e:
            if call == "embed":
                llm.embed(["the quick brown fox"], params, use_tqdm=False)
            else:
                llm.encode(["the quick brown fox"], params, pooling_task="token_embed", use_tqdm=False)
        assert e.value.parameter == field
        # the engine still serves the next request
        assert len(llm.embed(["the quick brown fox"], use_tqdm=False)[0].outputs.embedding) == 32


def test_classifier_tasks_refuse_embedding_fields_and_score(paths):
    with LLM(str(paths["bert-cls"]), dtype="float32") as llm:
        with pytest.raises(ValidationError, match=r"Task classify only supports \['use_activation'\]") as e:
            llm.classify(["the quick brown fox"], PoolingParams(normalize=False), use_tqdm=False)
        assert e.value.parameter == "normalize"
        with pytest.raises(ValidationError, match="does not support \\['dimensions'\\]") as e:
            llm.encode(["fox"], PoolingParams(dimensions=32), pooling_task="classify", use_tqdm=False)
        assert e.value.parameter == "dimensions"
        # three labels: no cross-encoder score (vLLM enables score only for num_labels == 1)
        with pytest.raises(ValidationError, match=r"only enabled for num_labels == 1") as e:
            llm.score("the capital of france", ["paris", "the lazy dog"], use_tqdm=False)
        assert e.value.parameter == "task"
        with pytest.raises(ValidationError, match=r"only enabled for num_labels == 1"):
            llm.encode(["fox"], pooling_task="score", use_tqdm=False)
        assert len(llm.classify(["fox"], use_tqdm=False)[0].outputs.probs) == 3


def test_token_embed_honours_dimensions(paths):
    from transformers import AutoTokenizer, BertModel

    path = paths["bert-mat"]
    text = "paris is the capital of france"
    tok = AutoTokenizer.from_pretrained(path)
    hf = BertModel.from_pretrained(path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = hf(**tok(text, return_tensors="pt")).last_hidden_state[0]
    with LLM(str(path), dtype="float32") as llm:
        cut = llm.encode([text], PoolingParams(dimensions=8), pooling_task="token_embed", use_tqdm=False)[0]
        raw = llm.encode([text], PoolingParams(dimensions=16, normalize=False), pooling_task="token_embed",
                         use_tqdm=False)[0]
        with pytest.raises(ValidationError, match="dimensions") as e:
            llm.encode([text], PoolingParams(dimensions=9), pooling_task="token_embed", use_tqdm=False)
        assert e.value.parameter == "dimensions"
    assert cut.outputs.data.shape == (hidden.shape[0], 8)
    assert torch.allclose(cut.outputs.data, F.normalize(hidden[:, :8], dim=-1), atol=1e-4)
    assert torch.allclose(raw.outputs.data, hidden[:, :16], atol=1e-4)


@pytest.mark.parametrize("prompts", ["\ud800", ["fox", "x\ud800"]])
def test_lone_surrogate_is_a_validation_error(paths, prompts):
    with LLM(str(paths["bert"]), dtype="float32") as llm:
        with pytest.raises(ValidationError, match="not valid Unicode") as e:
            llm.embed(prompts, use_tqdm=False)
        assert e.value.parameter == "prompt"


def test_pooling_requests_are_queued_at_their_priority(paths):
    """A pooling request's ``priority`` reaches the engine request under ``--scheduling-policy priority`` (the
    server passes its field on) and is refused, naming it, under first come, first served."""
    with LLM(str(paths["bert"]), dtype="float32", scheduling_policy="priority") as llm:
        ip = llm.llm_engine.input_processor
        _, _, req = ip.process_pooling("p-1", "hello there", PoolingParams(), priority=3)
        assert req.priority == 3
        assert llm.embed(["hello there"])[0].outputs.embedding  # still serves
    with LLM(str(paths["bert"]), dtype="float32") as llm:
        with pytest.raises(ValidationError) as e:
            llm.llm_engine.input_processor.process_pooling("p-1", "hello there", PoolingParams(), priority=3)
        assert e.value.parameter == "priority"
