"""``LLM``'s pooling methods (vLLM's ``embed``, ``classify``, ``score``, ``reward``, ``encode``), for a model
run with ``--runner pooling``. A generative model refuses them (and a pooling model refuses ``generate``)
with a ``ValidationError`` naming the runner. Results come back in input order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F

from pagoda.engine.tokenization_kwargs import apply_tokenization_kwargs, parse_tokenization_kwargs
from pagoda.engine.tokenizer import read_chat_template
from pagoda.entrypoints.vllm_flags import check_no_lora
from pagoda.errors import ValidationError
from pagoda.pooling.batching import longest_first, pretokenize
from pagoda.pooling.inputs import not_pooling_error, tokenize_pair, truncation
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
    from pagoda.entrypoints.llm import ProgressArg


ParamsArg = PoolingParams | Sequence[PoolingParams] | None


def _params(p: ParamsArg, task: str, n: int, **fields: Any) -> list[PoolingParams]:
    """One PoolingParams per prompt (``n``) for ``task``, as vLLM takes them: None (the defaults), one for every
    prompt, or a sequence of one per prompt; each set to another task is refused
    (:meth:`PoolingParams.with_task`). ``fields`` set (not None) override each one's."""
    if p is None or isinstance(p, PoolingParams):
        given = [p or PoolingParams()] * n
    else:
        given = list(p)
        if len(given) != n or not all(isinstance(x, PoolingParams) for x in given):
            raise ValidationError(f"pooling_params must be one PoolingParams or a sequence of one per prompt "
                                  f"({n}), got {len(given)} item(s).", "pooling_params")
    changes = {k: v for k, v in fields.items() if v is not None}
    return [x.with_task(task).clone(**changes) for x in given]


class PoolingMixin:
    llm_engine: LLMEngine

    def _run(self, prompts: Any, params: Any, use_tqdm: ProgressArg, priority: Any = None,
             positions: Any = None) -> list[Any]:
        raise NotImplementedError

    def _pool(self, prompts: Any, params: ParamsArg, task: str, use_tqdm: ProgressArg,
              truncate_prompt_tokens: int | None, lora_request: Any = None,
              tokenization_kwargs: dict[str, Any] | None = None) -> list[PoolingRequestOutput]:
        """``prompts`` run for ``task`` with their :func:`_params`; results in input order. ``lora_request``: vLLM's
        keyword, only None (or a list of None, one per prompt). ``tokenization_kwargs``: as ``LLM.generate``'s
        (:func:`~pagoda.engine.tokenization_kwargs.apply_tokenization_kwargs`), a text lowercased first where the
        model's pooler lowercases."""
        from pagoda.entrypoints.llm import _as_prompt_list, check_lora_requests

        if self.llm_engine.cfg.pooler is None:
            raise not_pooling_error()
        plist = _as_prompt_list(prompts)
        check_lora_requests(lora_request, len(plist), "pooling (a pooling model)")
        plist_params = _params(params, task, len(plist), truncate_prompt_tokens=truncate_prompt_tokens)
        eng = self.llm_engine
        if tokenization_kwargs:
            plist = [self._tokenize_with(p, tokenization_kwargs) for p in plist]
        truncs = {x.truncate_prompt_tokens for x in plist_params}
        if len(truncs) == 1:  # texts tokenized in one batch call when they truncate alike (else one by one)
            plist = pretokenize(eng.tokenizer, plist, truncs.pop(), eng.cfg.max_model_len,
                                eng.cfg.pooler is not None and eng.cfg.pooler.lowercase)
        order = longest_first(plist)  # similar lengths share a step (pagoda.pooling.batching)
        outs = self._run([plist[i] for i in order], [plist_params[i] for i in order], use_tqdm, positions=order)
        result: list[Any] = [None] * len(outs)
        for i, o in zip(order, outs, strict=True):
            result[i] = o
        return result

    def _tokenize_with(self, prompt: Any, kwargs: dict[str, Any]) -> Any:
        """One prompt through ``tokenization_kwargs`` (its text lowercased first where the pooler lowercases; the
        output keeps the text as given)."""
        eng = self.llm_engine
        lower = eng.cfg.pooler is not None and eng.cfg.pooler.lowercase
        given = {"prompt": prompt} if isinstance(prompt, str) else prompt
        text = given.get("prompt") if isinstance(given, dict) and "prompt_token_ids" not in given else None
        if not isinstance(text, str):
            return apply_tokenization_kwargs(prompt, kwargs, eng.tokenizer, eng.cfg.max_model_len)
        out = apply_tokenization_kwargs({**given, "prompt": text.lower() if lower else text}, kwargs, eng.tokenizer,
                                        eng.cfg.max_model_len)
        return {**out, "prompt": text} if isinstance(out, dict) else out

    def encode(self, prompts: Any, pooling_params: ParamsArg = None, use_tqdm: ProgressArg = True,
               pooling_task: str | None = None, truncate_prompt_tokens: int | None = None, lora_request: Any = None,
               tokenization_kwargs: dict[str, Any] | None = None) -> list[PoolingRequestOutput]:
        """Raw pooled tensors (``pooling_task``: embed, classify, score, token_embed, token_classify; default: the
        task the pooling params set, else the model's first task)."""
        pooler = self.llm_engine.cfg.pooler
        if pooler is None:
            raise not_pooling_error()
        first = pooling_params if isinstance(pooling_params, PoolingParams) or pooling_params is None \
            else next(iter(pooling_params), None)
        task = pooling_task or (first.task if first is not None else None) or pooler.supported_tasks[0]
        return self._pool(prompts, pooling_params, task, use_tqdm, truncate_prompt_tokens, lora_request,
                          tokenization_kwargs)

    def embed(self, prompts: Any, pooling_params: ParamsArg = None, use_tqdm: ProgressArg = True,
              truncate_prompt_tokens: int | None = None, lora_request: Any = None,
              tokenization_kwargs: dict[str, Any] | None = None) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt (pooled, ``dimensions``-cut and normalised per the model's pooler)."""
        outs = self._pool(prompts, pooling_params, "embed", use_tqdm, truncate_prompt_tokens, lora_request,
                          tokenization_kwargs)
        return [EmbeddingRequestOutput.from_base(o) for o in outs]

    def classify(self, prompts: Any, pooling_params: ParamsArg = None, use_tqdm: ProgressArg = True,
                 truncate_prompt_tokens: int | None = None, lora_request: Any = None,
                 tokenization_kwargs: dict[str, Any] | None = None) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt (softmax; sigmoid for a one-label head)."""
        outs = self._pool(prompts, pooling_params, "classify", use_tqdm, truncate_prompt_tokens, lora_request,
                          tokenization_kwargs)
        return [ClassificationRequestOutput.from_base(o) for o in outs]

    def reward(self, prompts: Any, pooling_params: ParamsArg = None, use_tqdm: ProgressArg = True,
               truncate_prompt_tokens: int | None = None, lora_request: Any = None,
               tokenization_kwargs: dict[str, Any] | None = None) -> list[PoolingRequestOutput]:
        """Per-token reward-head outputs ([T, num_labels]) per prompt."""
        return self._pool(prompts, pooling_params, "token_classify", use_tqdm, truncate_prompt_tokens, lora_request,
                          tokenization_kwargs)

    def score(self, data_1: str | Sequence[str], data_2: str | Sequence[str], use_tqdm: ProgressArg = True,
              pooling_params: PoolingParams | None = None, truncate_prompt_tokens: int | None = None,
              lora_request: Any = None, chat_template: str | None = None,
              tokenization_kwargs: dict[str, Any] | None = None) -> list[ScoringRequestOutput]:
        """Scores of text pairs: one ``data_1`` against each ``data_2``, or pairwise for equal-length lists. A
        classifier scores each pair as a cross-encoder; an embedding model by cosine similarity.
        ``lora_request``: only None. ``chat_template`` (vLLM's; a template's text or a file): a cross-encoder's score
        template, each pair rendered through it as a ``query`` and a ``document`` message and tokenized as one text
        (Qwen3-Reranker); an embedding model refuses it. ``tokenization_kwargs``: an embedding model's texts take
        them as ``embed``'s; a cross-encoder's pair takes the truncation keys (the tokenizer's truncation of the
        pair, as ``truncate_prompt_tokens``; the smaller wins) and refuses ``add_special_tokens=False`` (a pair is
        encoded with the model's special tokens)."""
        pooler = self.llm_engine.cfg.pooler
        if pooler is None:
            raise not_pooling_error()
        check_no_lora(lora_request, "pooling (a pooling model)")
        pairs = score_pairs(data_1, data_2)
        if pooler.kind == "embed":
            if chat_template is not None:
                raise ValidationError("chat_template is a cross-encoder's score template; an embedding model scores "
                                      "by cosine similarity of the two texts' embeddings, which it does not shape.",
                                      "chat_template")
            return self._cosine_scores(pairs, pooling_params, truncate_prompt_tokens, use_tqdm, tokenization_kwargs)
        tok = self.llm_engine.tokenizer
        max_len = self.llm_engine.cfg.max_model_len
        special, keep = parse_tokenization_kwargs(tokenization_kwargs, max_len)
        if not special:
            raise ValidationError("tokenization_kwargs: add_special_tokens=False is not supported for a "
                                  "cross-encoder's score: each pair is encoded with the model's special tokens.",
                                  "tokenization_kwargs")
        truncate = truncation(truncate_prompt_tokens, max_len)
        if keep is not None:
            truncate = keep if truncate is None else min(truncate, keep)
        template = read_chat_template(chat_template) if chat_template is not None else None
        prompts = [tokenize_pair(tok, a, b, truncate, max_len,
                                 pooler.lowercase, use_sep_token=pooler.use_sep_token, chat_template=template)
                   for a, b in pairs]
        outs = self._pool(prompts, pooling_params, "score", use_tqdm, truncate_prompt_tokens)
        return [ScoringRequestOutput.from_base(o) for o in outs]

    def _cosine_scores(self, pairs: list[tuple[str, str]], p: PoolingParams | None, truncate: int | None,
                       use_tqdm: ProgressArg, tokenization_kwargs: dict[str, Any] | None = None
                       ) -> list[ScoringRequestOutput]:
        texts = [t for pair in pairs for t in pair]
        embs = self._pool(texts, p, "embed", use_tqdm, truncate, tokenization_kwargs=tokenization_kwargs)
        out = []
        for i in range(len(pairs)):
            a, b = embs[2 * i], embs[2 * i + 1]
            s = float(F.cosine_similarity(a.outputs.data, b.outputs.data, dim=0))
            out.append(ScoringRequestOutput(f"score-{i}", ScoringOutput(s),
                                            a.prompt_token_ids + b.prompt_token_ids))
        return out


def score_pairs(data_1: str | Sequence[str], data_2: str | Sequence[str],
                names: tuple[str, str] = ("data_1", "data_2")) -> list[tuple[str, str]]:
    """vLLM's pairing of texts: 1 x N, or N x N element-wise; errors name the sides as the caller calls them
    (``names``: ``LLM.score``'s data_1 / data_2, the server's text_1 / text_2)."""
    a = [data_1] if isinstance(data_1, str) else list(data_1)
    b = [data_2] if isinstance(data_2, str) else list(data_2)
    for side, name in ((a, names[0]), (b, names[1])):
        bad = next((x for x in side if not isinstance(x, str)), None)
        if bad is not None:  # token ids would otherwise be read as several prompts, or crash the tokenizer
            raise ValidationError(f"{name} must be a text or a list of texts; got an item of type "
                                  f"{type(bad).__name__}.", name)
    if not a or not b:
        raise ValidationError("score needs at least one text on each side.", names[0] if not a else names[1])
    if len(a) == 1:
        a = a * len(b)
    if len(a) != len(b):
        raise ValidationError(f"score pairs 1 x N or N x N texts, got {len(a)} x {len(b)}.", names[1])
    return list(zip(a, b, strict=True))


__all__ = ["PoolingMixin", "score_pairs"]
