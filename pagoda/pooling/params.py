"""Per-request pooling parameters (vLLM's ``PoolingParams``), a msgspec Struct like ``SamplingParams``.

``task`` is what the request wants from the pooled hidden states (vLLM's pooling tasks):

* ``embed`` -- one vector per sequence (pooled, optionally cut to ``dimensions``, normalised);
* ``classify`` -- the classifier head on the pooled vector (softmax / sigmoid when ``use_activation``);
* ``score`` -- a cross-encoder's relevance of a text pair (the classifier, sigmoid for one label);
* ``token_embed`` -- every token's hidden state (``ALL`` pooling);
* ``token_classify`` -- the classifier on every token (reward models; no activation by default).

``task`` None (the default, as vLLM's) is filled in by whoever runs the request: ``LLM.embed`` and friends
(which refuse a params set to another task, in vLLM's words: :meth:`PoolingParams.with_task`), else admission with the
model's first task.

Invariant after ``__post_init__``: ``task`` is None or one of :data:`POOLING_TASKS`; ``dimensions`` is None or
positive; ``truncate_prompt_tokens`` is None, -1 (the model's maximum) or positive. Whether the model
supports the task and the dimensions, and whether the task takes the fields set (:data:`TASK_PARAMETERS`,
:meth:`PoolingParams.check_task_parameters`), are checked at admission, where the task is final.
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

from pagoda.errors import ValidationError

PoolingTask = Literal["embed", "classify", "score", "token_embed", "token_classify"]
POOLING_TASKS: tuple[str, ...] = get_args(PoolingTask)

TASK_PARAMETERS: dict[str, tuple[str, ...]] = {
    "embed": ("dimensions", "normalize"),
    "token_embed": ("dimensions", "normalize"),
    "classify": ("use_activation",),
    "score": ("use_activation",),
    "token_classify": ("use_activation",),
}
"""The output fields each task honours (vLLM's ``PoolingParams.valid_parameters``); another one set is refused."""


class PoolingParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    task: str | None = None
    truncate_prompt_tokens: int | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    use_activation: bool | None = None

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in POOLING_TASKS:
            raise ValidationError(f"task must be one of {POOLING_TASKS}, got {self.task!r}.", "task")
        if self.dimensions is not None and (isinstance(self.dimensions, bool) or self.dimensions < 1):
            raise ValidationError(f"dimensions must be a positive integer, got {self.dimensions!r}.", "dimensions")
        t = self.truncate_prompt_tokens
        if t is not None and (isinstance(t, bool) or not (t == -1 or t >= 1)):
            raise ValidationError(f"truncate_prompt_tokens must be -1 or a positive integer, got {t!r}.",
                                  "truncate_prompt_tokens")

    @property
    def per_token(self) -> bool:
        """Whether the task keeps every token's row (``token_embed``, ``token_classify``)."""
        return self.task is not None and self.task.startswith("token_")

    def with_task(self, task: str) -> PoolingParams:
        """A copy for ``task``: an unset task is filled in; one set to another task is refused, in vLLM's words (a
        ``classify`` params given to ``embed`` would otherwise be run as an embedding)."""
        if self.task is not None and self.task != task:
            raise ValidationError(f"You cannot overwrite self.task={self.task!r} with task={task!r}!", "task")
        return self.clone(task=task)

    def check_task_parameters(self) -> None:
        """Refuse an output field ``task`` does not honour (normalize on classify, use_activation on embed, ...), in
        vLLM's words, naming the first such field. ``task`` is set (admission fills it in first)."""
        assert self.task is not None, "admission sets the task first"
        valid = TASK_PARAMETERS[self.task]
        bad = [k for k in ("dimensions", "normalize", "use_activation") if getattr(self, k) is not None
               and k not in valid]
        if bad:
            raise ValidationError(f"Task {self.task} only supports {list(valid)} parameters, does not support "
                                  f"{bad} parameters.", bad[0])

    def clone(self, **changes: object) -> PoolingParams:
        return msgspec.structs.replace(self, **changes)
