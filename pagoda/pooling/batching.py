"""Front-end batching of a call's pooling prompts (offline ``LLM.embed`` and friends, and one server request).

Text prompts are tokenized in one batch call (a fast tokenizer's ``encode_batch`` runs in parallel, in Rust)
into ``{"prompt", "prompt_token_ids"}`` dicts with exactly the ids the per-prompt path would give (special
tokens added; ``truncate_prompt_tokens`` truncates the text as the per-prompt path does). The prompts are
then submitted longest first, as sentence-transformers batches, so each step holds sequences of similar
length and the encoder's attention packs them into few padded calls (:mod:`pagoda.attention.encoder`);
results are still returned in input order by the callers.
"""

from __future__ import annotations

from typing import Any

from pagoda.pooling.inputs import check_text, truncation


def pretokenize(tokenizer: Any, prompts: list[Any], truncate: int | None, max_len: int,
                lowercase: bool = False) -> list[Any]:
    """``prompts`` with each plain-text prompt replaced by its tokenized dict (the ids
    :func:`pagoda.pooling.inputs.tokenize_text` gives, in one batch call); other prompts unchanged."""
    idx = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    if len(idx) < 2 or not getattr(tokenizer, "is_fast", False):
        return prompts
    texts = [check_text(prompts[i]) for i in idx]
    k = truncation(truncate, max_len)
    seen = [t.lower() for t in texts] if lowercase else texts
    if k is None:
        enc = tokenizer(seen, add_special_tokens=True)
    else:
        enc = tokenizer(seen, truncation=True, max_length=k)
    out = list(prompts)
    for i, text, ids in zip(idx, texts, enc["input_ids"], strict=True):
        out[i] = {"prompt": text, "prompt_token_ids": list(ids)}
    return out


def _length(p: Any) -> int:
    if isinstance(p, dict):
        ids = p.get("prompt_token_ids")
        return len(ids) if isinstance(ids, (list, tuple)) else len(str(p.get("prompt", "")))
    return len(p) if isinstance(p, (list, tuple, str)) else 0


def longest_first(prompts: list[Any]) -> list[int]:
    """Submission order: indices of ``prompts`` by decreasing token count (text length when not tokenized);
    ties keep input order."""
    return sorted(range(len(prompts)), key=lambda i: -_length(prompts[i]))
