"""Per-request pooling parameters (vLLM's ``PoolingParams``), a msgspec Struct like ``SamplingParams``.

``task`` is what the request wants from the pooled hidden states (vLLM's pooling tasks):

* ``embed`` -- one vector per sequence (pooled, optionally cut to ``dimensions``, normalised);
* ``classify`` -- the classifier head on the pooled vector (softmax / sigmoid when ``use_activation``);
* ``score`` -- a cross-encoder's relevance of a text pair (the classifier, sigmoid for one label);
* ``token_embed`` -- every token's hidden state (``ALL`` pooling);
* ``token_classify`` -- the classifier on every token (reward models; no activation by default).

Invariant after ``__post_init__``: ``task`` is one of :data:`POOLING_TASKS`; ``dimensions`` is None or
positive; ``truncate_prompt_tokens`` is None, -1 (the model's maximum) or positive. Whether the model
supports the task and the dimensions is checked at admission against the engine's pooler.
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

from pagoda.errors import ValidationError

PoolingTask = Literal["embed", "classify", "score", "token_embed", "token_classify"]
POOLING_TASKS: tuple[str, ...] = get_args(PoolingTask)


class PoolingParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    task: str = "embed"
    truncate_prompt_tokens: int | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    use_activation: bool | None = None

    def __post_init__(self) -> None:
        if self.task not in POOLING_TASKS:
            raise ValidationError(f"task must be one of {POOLING_TASKS}, got {self.task!r}.", "task")
        if self.dimensions is not None and (isinstance(self.dimensions, bool) or self.dimensions < 1):
            raise ValidationError(f"dimensions must be a positive integer, got {self.dimensions!r}.", "dimensions")
        t = self.truncate_prompt_tokens
        if t is not None and (isinstance(t, bool) or not (t == -1 or t >= 1)):
            raise ValidationError(f"truncate_prompt_tokens must be -1 or a positive integer, got {t!r}.",
                                  "truncate_prompt_tokens")

    def clone(self, **changes: object) -> PoolingParams:
        return msgspec.structs.replace(self, **changes)
