"""Offline pooling as a vLLM user meets it: a checkpoint saved by sentence-transformers 6 (``pooling_mode``, the
new Pooling config) and one with a ``Dense`` projection give sentence-transformers' own embeddings (they were a
start-up error / would be silently unprojected); modules pagoda cannot run are a start-up error naming them;
``pooling_params`` may be a sequence of one per prompt (vLLM's signature; it raised AttributeError); params set to
another task are refused in vLLM's words (they were silently re-tasked); ``LLM.score`` refuses token ids naming
the side (it crashed with IndexError)."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from pooling_models import build_pooling_model

from pagoda import LLM, PoolingParams
from pagoda.errors import ValidationError

TEXTS = ["the quick brown fox", "tokens", "paris is the capital of france"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return build_pooling_model(tmp_path_factory.mktemp("review_pool") / "bert", "bert")


def _st_save(bert, folder, dense: bool):
    """A sentence-transformers (installed version, 6.x) model of the tiny BERT: mean pooling, optionally a Dense
    32 -> 16 Tanh projection, then Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(1)
    modules = [Transformer(str(bert), max_seq_length=32), Pooling(32, pooling_mode="mean")]
    if dense:
        modules.append(Dense(32, 16, bias=True, activation_function=torch.nn.Tanh()))
    st = SentenceTransformer(modules=[*modules, Normalize()], device="cpu")
    st.save(str(folder))
    return st


@pytest.mark.parametrize("dense", [False, True], ids=["mean", "mean+dense"])
def test_sentence_transformers_6_checkpoint_matches_it(bert, tmp_path, dense):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = _st_save(bert, tmp_path / "st", dense)
        ref = st.encode(TEXTS, convert_to_tensor=True)
    pool_cfg = json.loads((tmp_path / "st" / "1_Pooling" / "config.json").read_text())
    assert pool_cfg.get("pooling_mode") == "mean"  # the new format, no pooling_mode_mean_tokens flag
    with LLM(str(tmp_path / "st"), dtype="float32") as llm:
        outs = llm.embed(TEXTS, use_tqdm=False)
    for o, r in zip(outs, ref, strict=True):
        e = torch.tensor(o.outputs.embedding)
        assert e.shape == r.shape == ((16,) if dense else (32,))
        assert torch.allclose(e, r.float(), atol=1e-5)


def _edit_modules(src, dst, change):
    shutil.copytree(src, dst)
    modules = json.loads((dst / "modules.json").read_text())
    (dst / "modules.json").write_text(json.dumps(change(modules)))
    return dst


@pytest.mark.parametrize("change,named", [
    (lambda m: [*m[:2], {"idx": 9, "name": "9", "path": "9_LayerNorm",
                         "type": "sentence_transformers.models.LayerNorm"}, *m[2:]], "LayerNorm"),
    (lambda m: [m[0], m[1], m[3], m[2]], "after Normalize"),
])
def test_modules_pagoda_cannot_run_are_a_startup_error(bert, tmp_path, change, named):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _st_save(bert, tmp_path / "st", dense=True)
    folder = _edit_modules(tmp_path / "st", tmp_path / "edited", change)
    with pytest.raises(ValueError, match=named):
        LLM(str(folder), dtype="float32")


@pytest.mark.parametrize("mode", ["max", ["mean", "cls"]])
def test_unsupported_pooling_mode_is_named(bert, tmp_path, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _st_save(bert, tmp_path / "st", dense=False)
    cfg_file = tmp_path / "st" / "1_Pooling" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "pooling_mode": mode}))
    with pytest.raises(ValueError, match="pooling mode"):
        LLM(str(tmp_path / "st"), dtype="float32")


@pytest.fixture(scope="module")
def matryoshka(bert, tmp_path_factory):
    mat = tmp_path_factory.mktemp("review_mat") / "bert-mat"
    shutil.copytree(bert, mat)
    cfg = json.loads((mat / "config.json").read_text())
    (mat / "config.json").write_text(json.dumps({**cfg, "matryoshka_dimensions": [8, 16, 32]}))
    with LLM(str(mat), dtype="float32", max_model_len=32) as llm:
        yield llm


def test_pooling_params_per_prompt(matryoshka):
    """vLLM's ``pooling_params: PoolingParams | Sequence[PoolingParams]``: one per prompt, each honoured."""
    llm = matryoshka
    outs = llm.embed(TEXTS[:2], pooling_params=[PoolingParams(dimensions=8), PoolingParams(normalize=False)],
                     use_tqdm=False)
    one = llm.embed(TEXTS[0], pooling_params=PoolingParams(dimensions=8), use_tqdm=False)[0]
    raw = llm.embed(TEXTS[1], pooling_params=PoolingParams(normalize=False), use_tqdm=False)[0]
    assert outs[0].outputs.embedding == pytest.approx(one.outputs.embedding, abs=1e-6)
    assert outs[1].outputs.embedding == pytest.approx(raw.outputs.embedding, abs=1e-6)
    assert len(outs[0].outputs.embedding) == 8 and abs(float(torch.tensor(raw.outputs.embedding).norm()) - 1) > 0.1
    with pytest.raises(ValidationError, match="one per prompt") as e:
        llm.embed(TEXTS, pooling_params=[PoolingParams()], use_tqdm=False)
    assert e.value.parameter == "pooling_params"


def test_params_of_another_task_are_refused(matryoshka):
    """vLLM refuses to overwrite a params' task; pagoda ran a ``classify`` params as an embedding."""
    llm = matryoshka
    with pytest.raises(ValidationError, match="cannot overwrite") as e:
        llm.embed(TEXTS[0], pooling_params=PoolingParams(task="classify"), use_tqdm=False)
    assert e.value.parameter == "task"
    with pytest.raises(ValidationError, match="cannot overwrite"):
        llm.encode(TEXTS[0], PoolingParams(task="embed"), pooling_task="token_embed", use_tqdm=False)
    # an unset task is the method's, or encode's params' own, or the model's first
    tok = llm.encode(TEXTS[0], PoolingParams(task="token_embed"), use_tqdm=False)[0]
    assert tok.outputs.data.dim() == 2
    assert llm.encode(TEXTS[0], use_tqdm=False)[0].outputs.data.shape == (32,)
    params = PoolingParams(dimensions=8)
    llm.embed(TEXTS[0], pooling_params=params, use_tqdm=False)
    assert params.task is None  # the caller's params are not changed


def test_score_refuses_token_ids_naming_the_side(matryoshka):
    llm = matryoshka
    with pytest.raises(ValidationError, match="data_2") as e:
        llm.score("fox", [[2, 7, 8]], use_tqdm=False)  # type: ignore[list-item]
    assert e.value.parameter == "data_2"
    with pytest.raises(ValidationError, match="data_1"):
        llm.score([2, 5, 6], [2, 7, 8], use_tqdm=False)  # type: ignore[arg-type]


def test_score_task_on_an_embedding_model_is_refused(matryoshka):
    """An embedding model's scores are the cosine of its embeddings (LLM.score); the ``score`` task is a
    cross-encoder's. Asked of an embedding model it returned the embedding, ignoring ``use_activation``."""
    llm = matryoshka
    for params in (None, PoolingParams(use_activation=True)):
        with pytest.raises(ValidationError, match="cosine") as e:
            llm.encode(TEXTS[0], params, pooling_task="score", use_tqdm=False)
        assert e.value.parameter == "task"
    assert llm.score(TEXTS[0], [TEXTS[0]], use_tqdm=False)[0].outputs.score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValidationError, match="cosine") as e:  # a score template shapes a cross-encoder's input only
        llm.score(TEXTS[0], [TEXTS[1]], use_tqdm=False, chat_template="{{ messages[0].content }}")
    assert e.value.parameter == "chat_template"


@pytest.mark.parametrize("cfg,named", [({"normalize": "false"}, "normalize"), ({"use_activation": 0}, "use_activation"),
                                       ({"dimensions": "8"}, "dimensions"), ({"dimensions": 0}, "dimensions")])
def test_pooler_config_values_are_typed(bert, cfg, named):
    """``--pooler-config '{"normalize": "false"}'`` normalised (``bool("false")``); a mistyped value is a start-up
    error naming it."""
    with pytest.raises(ValueError, match=f"--pooler-config: {named}"):
        LLM(str(bert), dtype="float32", pooler_config=cfg)


def test_pooler_config_object(bert):
    """vLLM's offline form ``LLM(..., pooler_config=PoolerConfig(...))`` (it raised TypeError: not iterable)."""
    from pagoda.config import PoolerConfig  # where vLLM users import it from

    with LLM(str(bert), dtype="float32", pooler_config=PoolerConfig(pooling_type="MEAN", normalize=False)) as llm:
        pooler = llm.llm_engine.cfg.pooler
        assert pooler is not None and pooler.pooling_type == "MEAN" and pooler.normalize is False


def test_do_lower_case_lowercases_texts_as_sentence_transformers(bert, tmp_path):
    """sentence_bert_config.json's ``do_lower_case`` (a cased tokenizer's model trained on lowercased text):
    sentence-transformers lowercases each text before tokenizing, as vLLM does; it used to be ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _st_save(bert, tmp_path / "st", False)
    folder = tmp_path / "st"
    tok_file = folder / "tokenizer.json"
    tok = json.loads(tok_file.read_text())
    tok["normalizer"]["lowercase"] = False  # a cased tokenizer: upper-case words become [UNK]
    tok_file.write_text(json.dumps(tok))
    cfg_file = folder / "sentence_bert_config.json"
    cfg = json.loads(cfg_file.read_text())
    texts = ["The Quick BROWN Fox", "PARIS is the Capital"]
    got = {}
    for lower in (False, True):
        cfg_file.write_text(json.dumps({**cfg, "do_lower_case": lower}))
        from sentence_transformers import SentenceTransformer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
        with LLM(str(folder), dtype="float32") as llm:
            got[lower] = [torch.tensor(o.outputs.embedding) for o in llm.embed(texts, use_tqdm=False)]
        for e, r in zip(got[lower], ref, strict=True):
            assert torch.allclose(e, r.float(), atol=1e-5), lower
    assert not torch.allclose(got[False][0], got[True][0], atol=1e-3)  # the flag changed what was embedded
