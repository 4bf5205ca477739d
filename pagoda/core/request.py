"""A request as the scheduler sees it: token ids, progress and status.

Invariant: ``0 <= num_computed_tokens <= num_tokens`` where
``num_tokens = len(prompt_token_ids) + len(output_token_ids)``. A request needs
a sample exactly when a step brings ``num_computed_tokens`` up to ``num_tokens``.

Async scheduling (a step is scheduled while the previous one still runs) adds two
counters, both 0 whenever no step is in flight: ``num_inflight_tokens`` (scheduled in
the step in flight, not yet in ``num_computed_tokens``) and ``num_placeholders`` (tokens
that step will sample, not yet known here; 0 or 1). The scheduler plans from
``num_computed_tokens + num_inflight_tokens`` up to ``num_tokens + num_placeholders``.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

import torch

from pagoda.pooling.params import PoolingParams
from pagoda.sampling_params import SamplingParams

if TYPE_CHECKING:
    from pagoda.structured_output.manager import RequestGrammar


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    @property
    def finish_reason(self) -> str | None:
        return self.value if self in _FINISHED else None


_FINISHED = {
    RequestStatus.FINISHED_STOPPED,
    RequestStatus.FINISHED_LENGTH,
    RequestStatus.FINISHED_ABORTED,
    RequestStatus.FINISHED_ERROR,
}


class Request:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_ids: set[int],
        max_tokens: int,
        arrival_time: float | None = None,
        cache_salt: str | None = None,
        priority: int = 0,
        pooling_params: PoolingParams | None = None,
        token_type_ids: list[int] | None = None,
        secondary_eos_token_ids: list[int] | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_ids = set() if sampling_params.ignore_eos else set(eos_token_ids)
        # The EOS ids (generation_config's extra ones, not the tokenizer's own) that end with themselves as
        # ``stop_reason``, as vLLM reports them (it files them under stop_token_ids).
        self.secondary_eos_token_ids = frozenset(secondary_eos_token_ids or ())
        self.stop_token_ids = set(sampling_params.stop_token_ids or [])
        # What min_tokens bans until it is reached: every EOS id, also under ignore_eos, and the stop ids (vLLM's
        # ``_all_stop_token_ids``).
        self.min_tokens_banned = frozenset(eos_token_ids) | self.stop_token_ids
        allowed = sampling_params.allowed_token_ids
        self.allowed_token_set = frozenset(allowed) if allowed is not None else None
        self.max_tokens = max_tokens
        self.num_computed_tokens = 0
        self.num_inflight_tokens = 0
        self.num_placeholders = 0
        # Speculative decoding: tokens proposed to follow the known ones, verified by the next step
        # that samples this request (set by the proposer after each update, consumed by that step).
        self.spec_token_ids: list[int] = []
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.arrival_time = arrival_time if arrival_time is not None else time.monotonic()
        self.priority = priority  # --scheduling-policy priority: lower is served first
        self.first_scheduled_time: float | None = None
        self.num_preemptions = 0
        # Prefix caching: a salt keeping this request's cache entries apart from other
        # tenants', the memoized chained hashes of its full blocks, and how many prompt
        # tokens its first admission found cached (-1 until admitted).
        self.cache_salt = cache_salt
        self.block_hashes: list[bytes] = []
        self.num_cached_tokens = -1
        # Prompt positions whose logprobs a scheduled step already reports (position 0 has none),
        # so a preempted and recomputed request does not report them twice. Set by the scheduler.
        self.prompt_logprobs_next = 1
        # The LoRA adapter this request runs with (its lora_int_id, set by the engine core once the adapter is
        # loaded); None: the base model. Part of the first block's prefix-cache key.
        self.adapter_id: int | None = None
        # A pooling request (--runner pooling): computed whole in one step, then finished with a pooled
        # output instead of a sampled token. ``token_type_ids``: BERT segment ids (a text pair), or None.
        self.pooling_params = pooling_params
        self.token_type_ids = token_type_ids
        self.generator: torch.Generator | None = None
        # Structured outputs: this sequence's grammar (compile + matcher), set by the engine core.
        self.grammar: RequestGrammar | None = None
        if sampling_params.seed is not None:
            self.generator = torch.Generator()
            self.generator.manual_seed(sampling_params.seed % (2**63))

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def check_stop(self, max_model_len: int) -> bool:
        """Token-level stop conditions after a new token; sets status. Returns finished."""
        n_out = self.num_output_tokens
        last = self.output_token_ids[-1]
        if n_out >= self.sampling_params.min_tokens:
            if last in self.eos_token_ids:
                self.status = RequestStatus.FINISHED_STOPPED
                if last in self.secondary_eos_token_ids:
                    self.stop_reason = last
                return True
            if last in self.stop_token_ids:
                self.status = RequestStatus.FINISHED_STOPPED
                self.stop_reason = last
                return True
        if n_out >= self.max_tokens or self.num_tokens >= max_model_len:
            self.status = RequestStatus.FINISHED_LENGTH
            return True
        return False
