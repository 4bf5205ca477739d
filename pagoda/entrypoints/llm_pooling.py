"""``LLM``'s pooling methods (vLLM's ``embed``, ``classify``, ``score``, ``reward``, ``encode``), for a model
run with ``--runner pooling``. A generative model refuses them (and a pooling model refuses ``generate``)
with a ``ValidationError`` naming the runner. Results come back in input order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F

from pagoda.errors import ValidationError
from pagoda.pooling.batching import longest_first, pretokenize
from pagoda.pooling.inputs import not_pooling_error, tokenize_pair
from pagoda.pooling.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from pagoda.pooling.params import PoolingParams

if TYPE_CHECKING:
    from pagoda.engine.llm_engine import LLMEngine


def _params(p: PoolingParams | None, task: str, **fields: Any) -> PoolingParams:
    base = p if p is not None else PoolingParams(task=task)
    changes = {k: v for k, v in fields.items() if v is not None}
    return base.clone(task=task, **changes)


class PoolingMixin:
    llm_engine: LLMEngine

    def _run(self, prompts: Any, params: Any, use_tqdm: bool, priority: Any = None) -> list[Any]:
        raise NotImplementedError

    def _pool(self, prompts: Any, params: PoolingParams, use_tqdm: bool) -> list[PoolingRequestOutput]:
        from pagoda.entrypoints.llm import _as_prompt_list

        if self.llm_engine.cfg.pooler is None:
            raise not_pooling_error()
        plist = _as_prompt_list(prompts)
        eng = self.llm_engine
        plist = pretokenize(eng.tokenizer, plist, params.truncate_prompt_tokens, eng.cfg.max_model_len)
        order = longest_first(plist)  # similar lengths share a step (pagoda.pooling.batching)
        outs = self._run([plist[i] for i in order], [params] * len(plist), use_tqdm)
        result: list[Any] = [None] * len(outs)
        for i, o in zip(order, outs, strict=True):
            result[i] = o
        return result

    def encode(self, prompts: Any, pooling_params: PoolingParams | None = None, use_tqdm: bool = True,
               pooling_task: str | None = None, truncate_prompt_tokens: int | None = None
               ) -> list[PoolingRequestOutput]:
        """Raw pooled tensors (``pooling_task``: embed, classify, score, token_embed, token_classify; default:
        the model's first task)."""
        pooler = self.llm_engine.cfg.pooler
        if pooler is None:
            raise not_pooling_error()
        task = pooling_task or (pooling_params.task if pooling_params else pooler.supported_tasks[0])
        return self._pool(prompts, _params(pooling_params, task, truncate_prompt_tokens=truncate_prompt_tokens),
                          use_tqdm)

    def embed(self, prompts: Any, pooling_params: PoolingParams | None = None, use_tqdm: bool = True,
              truncate_prompt_tokens: int | None = None) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt (pooled, ``dimensions``-cut and normalised per the model's pooler)."""
        outs = self._pool(prompts, _params(pooling_params, "embed", truncate_prompt_tokens=truncate_prompt_tokens),
                          use_tqdm)
        return [EmbeddingRequestOutput.from_base(o) for o in outs]

    def classify(self, prompts: Any, pooling_params: PoolingParams | None = None, use_tqdm: bool = True,
                 truncate_prompt_tokens: int | None = None) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt (softmax; sigmoid for a one-label head)."""
        outs = self._pool(prompts, _params(pooling_params, "classify",
                                           truncate_prompt_tokens=truncate_prompt_tokens), use_tqdm)
        return [ClassificationRequestOutput.from_base(o) for o in outs]

    def reward(self, prompts: Any, pooling_params: PoolingParams | None = None, use_tqdm: bool = True,
               truncate_prompt_tokens: int | None = None) -> list[PoolingRequestOutput]:
        """Per-token reward-head outputs ([T, num_labels]) per prompt."""
        return self._pool(prompts, _params(pooling_params, "token_classify",
                                           truncate_prompt_tokens=truncate_prompt_tokens), use_tqdm)

    def score(self, data_1: str | Sequence[str], data_2: str | Sequence[str], use_tqdm: bool = True,
              pooling_params: PoolingParams | None = None, truncate_prompt_tokens: int | None = None
              ) -> list[ScoringRequestOutput]:
        """Scores of text pairs: one ``data_1`` against each ``data_2``, or pairwise for equal-length lists. A
        classifier scores each pair as a cross-encoder; an embedding model by cosine similarity."""
        pooler = self.llm_engine.cfg.pooler
        if pooler is None:
            raise not_pooling_error()
        pairs = score_pairs(data_1, data_2)
        if pooler.kind == "embed":
            return self._cosine_scores(pairs, pooling_params, truncate_prompt_tokens, use_tqdm)
        tok = self.llm_engine.tokenizer
        prompts = [tokenize_pair(tok, a, b, truncate_prompt_tokens, self.llm_engine.cfg.max_model_len)
                   for a, b in pairs]
        outs = self._pool(prompts, _params(pooling_params, "score", truncate_prompt_tokens=truncate_prompt_tokens),
                          use_tqdm)
        return [ScoringRequestOutput.from_base(o) for o in outs]

    def _cosine_scores(self, pairs: list[tuple[str, str]], p: PoolingParams | None, truncate: int | None,
                       use_tqdm: bool) -> list[ScoringRequestOutput]:
        texts = [t for pair in pairs for t in pair]
        embs = self._pool(texts, _params(p, "embed", truncate_prompt_tokens=truncate), use_tqdm)
        out = []
        for i in range(len(pairs)):
            a, b = embs[2 * i], embs[2 * i + 1]
            s = float(F.cosine_similarity(a.outputs.data, b.outputs.data, dim=0))
            out.append(ScoringRequestOutput(f"score-{i}", ScoringOutput(s),
                                            a.prompt_token_ids + b.prompt_token_ids))
        return out


def score_pairs(data_1: str | Sequence[str], data_2: str | Sequence[str],
                names: tuple[str, str] = ("data_1", "data_2")) -> list[tuple[str, str]]:
    """vLLM's pairing: 1 x N, or N x N element-wise; errors name the sides as the caller calls them (``names``:
    ``LLM.score``'s data_1 / data_2, the server's text_1 / text_2)."""
    a = [data_1] if isinstance(data_1, str) else list(data_1)
    b = [data_2] if isinstance(data_2, str) else list(data_2)
    if not a or not b:
        raise ValidationError("score needs at least one text on each side.", names[0] if not a else names[1])
    if len(a) == 1:
        a = a * len(b)
    if len(a) != len(b):
        raise ValidationError(f"score pairs 1 x N or N x N texts, got {len(a)} x {len(b)}.", names[1])
    return list(zip(a, b, strict=True))


__all__ = ["PoolingMixin", "score_pairs"]
