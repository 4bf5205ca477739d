"""Results of pooling requests, with vLLM's names: ``PoolingRequestOutput`` (the raw pooled tensor) and
its typed views ``EmbeddingRequestOutput``, ``ClassificationRequestOutput`` and ``ScoringRequestOutput``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch


@dataclass
class PoolingOutput:
    data: torch.Tensor  # float32: [D] for sequence tasks, [T, D] for token tasks


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class ClassificationOutput:
    probs: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass
class ScoringOutput:
    score: float


OutputT = TypeVar("OutputT")


@dataclass
class PoolingRequestOutput(Generic[OutputT]):
    request_id: str
    outputs: OutputT
    prompt_token_ids: list[int]
    finished: bool = True
    error: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(request_id={self.request_id!r}, outputs={self.outputs!r})"


class EmbeddingRequestOutput(PoolingRequestOutput[EmbeddingOutput]):
    @staticmethod
    def from_base(o: PoolingRequestOutput) -> EmbeddingRequestOutput:
        return EmbeddingRequestOutput(o.request_id, EmbeddingOutput(o.outputs.data.tolist()), o.prompt_token_ids)


class ClassificationRequestOutput(PoolingRequestOutput[ClassificationOutput]):
    @staticmethod
    def from_base(o: PoolingRequestOutput) -> ClassificationRequestOutput:
        return ClassificationRequestOutput(o.request_id, ClassificationOutput(o.outputs.data.tolist()),
                                           o.prompt_token_ids)


class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    @staticmethod
    def from_base(o: PoolingRequestOutput) -> ScoringRequestOutput:
        d = o.outputs.data
        return ScoringRequestOutput(o.request_id, ScoringOutput(float(d.reshape(-1)[0] if d.numel() == 1 else d[-1])),
                                    o.prompt_token_ids)
