"""Request and response models of the pooling endpoints (OpenAI's embeddings API plus vLLM's ``/pooling``,
``/classify``, ``/score`` and ``/rerank``, the last with Jina / Cohere bodies). Field names are vLLM's;
unknown fields are refused by the serving layer (a 400 naming them)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from pagoda.entrypoints.openai.protocol import OpenAIBaseModel, ResponseModel

EmbedInput = str | list[str] | list[int] | list[list[int]]


class _PoolingFields(OpenAIBaseModel):
    model: str | None = None
    user: str | None = None
    truncate_prompt_tokens: int | None = None
    priority: int = 0


class EmbeddingRequest(_PoolingFields):
    input: EmbedInput | None = None
    messages: list[dict[str, Any]] | None = None  # chat-style input (decoder embedders), vLLM's extra
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    normalize: bool | None = None
    add_special_tokens: bool | None = None  # None: True for input, False for messages (vLLM's defaults)
    chat_template: str | None = None


class PoolingRequest(EmbeddingRequest):
    task: str | None = None
    use_activation: bool | None = None


class ClassificationRequest(_PoolingFields):
    input: EmbedInput | None = None
    use_activation: bool | None = None


ScoreSide = str | list[str] | None

SCORE_FIELD_PAIRS: tuple[tuple[str, str], ...] = (("text_1", "text_2"), ("queries", "documents"),
                                                  ("queries", "items"), ("data_1", "data_2"))
"""vLLM's spellings of a /score request's two sides; a request uses exactly one pair."""


class ScoreRequest(_PoolingFields):
    text_1: ScoreSide = None
    text_2: ScoreSide = None
    queries: ScoreSide = None
    documents: ScoreSide = None
    items: ScoreSide = None
    data_1: ScoreSide = None
    data_2: ScoreSide = None
    use_activation: bool | None = None


class RerankRequest(_PoolingFields):
    query: str | None = None
    documents: list[str | dict[str, Any]] | None = None
    top_n: int | None = None
    return_documents: bool = True
    use_activation: bool | None = None


class PoolingUsage(ResponseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0


class EmbeddingData(ResponseModel):
    index: int
    object: str = "embedding"
    embedding: list[float] | str


class PoolingData(ResponseModel):
    index: int
    object: str = "pooling"
    data: Any


class ClassificationData(ResponseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ScoreData(ResponseModel):
    index: int
    object: str = "score"
    score: float


class ListResponse(ResponseModel):
    id: str
    object: str = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[EmbeddingData] | list[PoolingData] | list[ClassificationData] | list[ScoreData]
    usage: PoolingUsage


class RerankDocument(ResponseModel):
    text: str


class RerankResult(ResponseModel):
    index: int
    document: RerankDocument | None = None
    relevance_score: float


class RerankUsage(ResponseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(ResponseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]
