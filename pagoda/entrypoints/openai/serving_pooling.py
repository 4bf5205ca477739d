"""The pooling endpoints' serving class: ``/v1/embeddings``, ``/pooling``, ``/classify``, ``/score`` (and
``/v1/score``), ``/rerank`` (and ``/v1/rerank``, ``/v2/rerank``).

Each input of a request becomes one engine pooling request (all submitted at once, so the scheduler
batches them by tokens); the response keeps input order. A generative model answers 400 naming the
runner (the input processor refuses the request); unknown request fields are a 400 naming them, and so is a
field the route cannot honour (a non-zero ``priority``: pooling requests are served first come, first served).
An input's error names the request field it came from (``input``, ``text_1`` / ``text_2`` or /score's other
spellings of its sides, vLLM's ``queries`` / ``documents``, ``queries`` / ``items``, ``data_1`` / ``data_2``;
``query`` / ``documents``). Scores: a classifier model of one label scores pairs as a cross-encoder; an embedding
model by cosine similarity.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import uuid
from typing import Any

import torch.nn.functional as F
from fastapi.responses import JSONResponse

from pagoda.engine.tokenizer import read_chat_template
from pagoda.entrypoints.llm_pooling import score_pairs
from pagoda.entrypoints.openai.chat_render import render_chat
from pagoda.entrypoints.openai.protocol_pooling import (
    SCORE_FIELD_PAIRS,
    ClassificationData,
    ClassificationRequest,
    EmbeddingData,
    EmbeddingRequest,
    ListResponse,
    PoolingData,
    PoolingRequest,
    PoolingUsage,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreData,
    ScoreRequest,
)
from pagoda.entrypoints.openai.serving_engine import OpenAIServing, request_field_names
from pagoda.errors import ValidationError
from pagoda.pooling.batching import longest_first, pretokenize
from pagoda.pooling.config import label_names
from pagoda.pooling.inputs import check_text, not_pooling_error, tokenize_pair, tokenize_text
from pagoda.pooling.outputs import PoolingRequestOutput
from pagoda.pooling.params import PoolingParams

MAX_POOLING_INPUTS = 2048
"""Most inputs (or rerank documents, or score pairs) one request may carry (OpenAI's embeddings limit)."""


def _refuse_unknown(req: Any) -> None:
    extra = sorted(req.model_extra or ())
    if extra:
        raise ValidationError(f"Unknown or unsupported field(s) for this endpoint: {extra}.", extra[0])


def _encoded(v: Any, encoding_format: str) -> list[Any] | str:
    """A pooled tensor as the response carries it: nested floats, or for ``base64`` its float32 values (row-major,
    little-endian, as OpenAI and vLLM encode them) in base64."""
    v = v.float()
    if encoding_format == "base64":
        return base64.b64encode(v.numpy().astype("<f4").tobytes()).decode()
    return v.tolist()


def _inputs(value: Any, field: str) -> list[Any]:
    """A request's input as a list of prompts (text or token ids); empty, or text that is not Unicode, is a 400
    naming ``field``."""
    if value is None or value == "" or value == []:
        raise ValidationError(f"{field} is empty.", field)
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        items = [value]
    else:
        items = list(value)
    if len(items) > MAX_POOLING_INPUTS:
        raise ValidationError(f"{field} holds {len(items)} inputs; at most {MAX_POOLING_INPUTS}.", field)
    for x in items:
        if x == "" or x == []:
            raise ValidationError(f"{field} holds an empty input.", field)
        if isinstance(x, str):
            check_text(x, field)
    return items


class OpenAIServingPooling(OpenAIServing):
    @property
    def pooler(self) -> Any:
        p = self.engine.cfg.pooler if self.engine.cfg is not None else None
        if p is None:
            raise not_pooling_error()
        return p

    @functools.cached_property
    def score_template(self) -> str | None:
        """``--chat-template``'s text when given: a score pair is rendered through it (as a ``query`` and a
        ``document`` message) and tokenized as one text, as vLLM does for rerankers such as Qwen3-Reranker."""
        value = self.engine.cfg.chat_template if self.engine.cfg is not None else None
        return read_chat_template(value) if value else None

    async def _run(self, prompts: list[Any], params: PoolingParams, field: str | list[str], priority: int = 0
                   ) -> list[PoolingRequestOutput]:
        """Outputs of ``prompts`` in order, queued at ``priority``; an input's error names ``field`` (or
        ``field[i]``, per prompt)."""
        base = uuid.uuid4().hex
        fields = [field] * len(prompts) if isinstance(field, str) else field
        prompts = pretokenize(self.tokenizer, prompts, params.truncate_prompt_tokens, self.engine.max_model_len)
        order = longest_first(prompts)  # similar lengths share a step (pagoda.pooling.batching)
        streams: list[Any] = [None] * len(prompts)
        try:
            for i in order:
                with request_field_names({"prompt": fields[i]}):
                    streams[i] = self.engine.add_pooling_request(f"pool-{base}-{i}", prompts[i], params, priority)
        except Exception:
            for st in streams:
                if st is not None:
                    st.close()
            raise
        from pagoda.engine.async_llm import final_output

        try:
            return list(await asyncio.gather(*(final_output(s) for s in streams)))  # type: ignore[arg-type]
        finally:
            for s in streams:
                s.close()

    @staticmethod
    def _usage(outs: list[PoolingRequestOutput]) -> PoolingUsage:
        n = sum(len(o.prompt_token_ids) for o in outs)
        return PoolingUsage(prompt_tokens=n, total_tokens=n)

    def _params(self, req: Any, task: str, **extra: Any) -> PoolingParams:
        """The request's pooling parameters (its ``priority`` goes to :meth:`_run`)."""
        with request_field_names({}):
            return PoolingParams(task=task, truncate_prompt_tokens=req.truncate_prompt_tokens, **extra)

    def _chat_text(self, req: EmbeddingRequest) -> str:
        """``messages`` through the chat template (no generation prompt), with the chat route's rules
        (:mod:`pagoda.entrypoints.openai.chat_render`)."""
        assert req.messages is not None  # the caller's branch
        return render_chat(self.tokenizer, req.messages, False, req.chat_template,
                           self.limits.trust_request_chat_template, self.limits.chat_template_content_format)

    def _embed_prompts(self, req: EmbeddingRequest) -> list[Any]:
        """The prompts of ``input`` or ``messages``; ``add_special_tokens`` defaults to True for ``input`` and to
        False for ``messages`` (the template writes them), as vLLM's completion- and chat-style requests do."""
        if req.messages is not None:
            if req.input is not None:
                raise ValidationError("Give either input or messages, not both.", "messages")
            text = self._chat_text(req)
            return [{"prompt": text, "prompt_token_ids": self._tokens(text, req, bool(req.add_special_tokens),
                                                                      "messages")}]
        items = _inputs(req.input, "input")
        if req.add_special_tokens is False:
            items = [{"prompt": x, "prompt_token_ids": self._tokens(x, req, False, "input")}
                     if isinstance(x, str) else x for x in items]
        return items

    def _tokens(self, text: str, req: EmbeddingRequest, add_special_tokens: bool, field: str) -> list[int]:
        """``text`` tokenized as a text input is (:func:`pagoda.pooling.inputs.tokenize_text`: truncated to the
        first ``truncate_prompt_tokens``), with or without special tokens."""
        return tokenize_text(self.tokenizer, text, req.truncate_prompt_tokens, self.engine.max_model_len,
                             add_special_tokens, field, self.pooler.lowercase)

    async def create_embedding(self, req: EmbeddingRequest) -> JSONResponse:
        _refuse_unknown(req)
        model = self.model_name(req.model)
        self.pooler  # noqa: B018 - a generative model: 400 naming the runner
        params = self._params(req, "embed", dimensions=req.dimensions, normalize=req.normalize)
        outs = await self._run(self._embed_prompts(req), params, "input", req.priority)
        data = [EmbeddingData(index=i, embedding=_encoded(o.outputs.data, req.encoding_format))
                for i, o in enumerate(outs)]
        return _json(ListResponse(id=f"embd-{uuid.uuid4().hex}", model=model, data=data, usage=self._usage(outs)))

    async def create_pooling(self, req: PoolingRequest) -> JSONResponse:
        _refuse_unknown(req)
        model = self.model_name(req.model)
        task = req.task or self.pooler.supported_tasks[0]
        if task == "encode":
            task = self.pooler.supported_tasks[0]
        params = self._params(req, task, dimensions=req.dimensions, normalize=req.normalize,
                              use_activation=req.use_activation)
        outs = await self._run(self._embed_prompts(req), params, "input", req.priority)
        data = [PoolingData(index=i, data=_encoded(o.outputs.data, req.encoding_format)) for i, o in enumerate(outs)]
        return _json(ListResponse(id=f"pool-{uuid.uuid4().hex}", model=model, data=data, usage=self._usage(outs)))

    async def create_classify(self, req: ClassificationRequest) -> JSONResponse:
        _refuse_unknown(req)
        model = self.model_name(req.model)
        outs = await self._run(_inputs(req.input, "input"), self._params(req, "classify",
                                                                         use_activation=req.use_activation), "input",
                               req.priority)
        labels = label_names(self.engine.cfg.hf_config)  # type: ignore[union-attr]
        data = []
        for i, o in enumerate(outs):
            probs = o.outputs.data.tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append(ClassificationData(index=i, label=labels[best], probs=probs, num_classes=len(probs)))
        return _json(ListResponse(id=f"classify-{uuid.uuid4().hex}", model=model, data=data,
                                  usage=self._usage(outs)))

    async def _scores(self, pairs: list[tuple[str, str]], req: Any, names: tuple[str, str]
                      ) -> tuple[list[float], int]:
        """(score per pair, prompt tokens); an input's error names its side's field (``names``)."""
        if self.pooler.kind == "embed":
            side = {b: names[1] for _, b in pairs} | {a: names[0] for a, _ in pairs}  # each distinct text once
            texts = list(side)
            outs = await self._run(texts, self._params(req, "embed", use_activation=req.use_activation),
                                   [side[t] for t in texts], req.priority)
            emb = {t: o.outputs.data for t, o in zip(texts, outs, strict=True)}
            scores = [float(F.cosine_similarity(emb[a], emb[b], dim=0)) for a, b in pairs]
            return scores, sum(len(o.prompt_token_ids) for o in outs)
        params = self._params(req, "score", use_activation=req.use_activation)
        mml = self.engine.max_model_len
        pooler = self.pooler
        prompts = [tokenize_pair(self.tokenizer, a, b, req.truncate_prompt_tokens, mml, pooler.lowercase,
                                 use_sep_token=pooler.use_sep_token, chat_template=self.score_template)
                   for a, b in pairs]
        outs = await self._run(prompts, params, names[1], req.priority)
        scores = [float(o.outputs.data.reshape(-1)[-1]) for o in outs]
        return scores, sum(len(o.prompt_token_ids) for o in outs)

    async def create_score(self, req: ScoreRequest) -> JSONResponse:
        _refuse_unknown(req)
        model = self.model_name(req.model)
        names = _score_fields(req)
        for name in names:
            _inputs(getattr(req, name), name)
        pairs = score_pairs(getattr(req, names[0]), getattr(req, names[1]), names)
        scores, n = await self._scores(pairs, req, names)
        data = [ScoreData(index=i, score=s) for i, s in enumerate(scores)]
        return _json(ListResponse(id=f"score-{uuid.uuid4().hex}", model=model, data=data,
                                  usage=PoolingUsage(prompt_tokens=n, total_tokens=n)))

    async def create_rerank(self, req: RerankRequest) -> JSONResponse:
        _refuse_unknown(req)
        model = self.model_name(req.model)
        if not req.query:
            raise ValidationError("query is empty.", "query")
        docs = [d if isinstance(d, str) else d.get("text") for d in _inputs(req.documents, "documents")]
        if not all(isinstance(d, str) and d for d in docs):
            raise ValidationError("Each document must be a non-empty string or an object with 'text'.", "documents")
        check_text(req.query, "query")
        for d in docs:
            check_text(d, "documents")
        if req.top_n is not None and req.top_n < 0:
            raise ValidationError("top_n must be 0 (all documents) or positive.", "top_n")
        scores, n = await self._scores([(req.query, d) for d in docs], req, ("query", "documents"))
        order = sorted(range(len(docs)), key=lambda i: -scores[i])[: req.top_n or len(docs)]  # 0: all (vLLM)
        results = [RerankResult(index=i, relevance_score=scores[i],
                                document=RerankDocument(text=docs[i]) if req.return_documents else None)
                   for i in order]
        return _json(RerankResponse(id=f"rerank-{uuid.uuid4().hex}", model=model,
                                    usage=RerankUsage(prompt_tokens=n, total_tokens=n), results=results))


def _score_fields(req: ScoreRequest) -> tuple[str, str]:
    """The two fields a /score request gives its sides in: the first of vLLM's :data:`SCORE_FIELD_PAIRS` holding
    every side field set (none set: text_1 / text_2, then refused as empty); fields of two spellings mixed are a
    400 naming the first one outside the first field's pair."""
    given = [f for f in dict.fromkeys(x for pair in SCORE_FIELD_PAIRS for x in pair) if getattr(req, f) is not None]
    pair = next((p for p in SCORE_FIELD_PAIRS if set(given) <= set(p)), None)
    if pair is not None:
        return pair
    first = next(p for p in SCORE_FIELD_PAIRS if given[0] in p)
    spellings = ", ".join(f"{a} / {b}" for a, b in SCORE_FIELD_PAIRS)
    raise ValidationError(f"/score takes its two sides as one of {spellings}; got {given}.",
                          next(f for f in given if f not in first))


def _json(resp: Any) -> JSONResponse:
    return JSONResponse(resp.model_dump(exclude_none=False))


__all__ = ["OpenAIServingPooling", "MAX_POOLING_INPUTS"]
