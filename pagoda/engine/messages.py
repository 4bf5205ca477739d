"""Messages between the front end (input/output processing) and the engine core.

Plain dataclasses with only ints, floats, strings, lists and dicts, so any transport
(in-process call, msgpack over ZMQ) can carry them. The core receives a request once
and sends back only what changed each step (new tokens, their logprobs, a finish).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EngineCoreRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: dict[str, Any]  # SamplingParams fields
    eos_token_ids: list[int]
    max_tokens: int
    arrival_time: float
    cache_salt: str | None = None
    # Parallel sampling: the id of the first sample of the same prompt, whose prompt blocks
    # this one shares instead of recomputing them.
    fork_of: str | None = None


@dataclass
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    # One (sampled_logprob, rank, top_ids, top_logprobs) per new token, when requested.
    new_logprobs: list[tuple[float, int, list[int], list[float]]] | None = None
    # (start_index, logprobs, ranks, top_ids, top_logprobs) for prompt positions, when requested.
    prompt_logprobs: tuple[int, list[float], list[int], list[list[int]], list[list[float]]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    error: str | None = None


@dataclass
class SchedulerStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0
    num_prompt_tokens: int = 0  # computed this step (prefill)
    num_generation_tokens: int = 0  # sampled this step
    # Prefix cache, cumulative since start, in tokens (vLLM's prefix_cache_queries / _hits).
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    # Host-memory KV tier (--kv-offloading-size): fraction of its blocks in use, and
    # cumulative blocks stored into it / loaded back from it.
    cpu_kv_cache_usage: float = 0.0
    kv_offload_stored_blocks: int = 0
    kv_offload_loaded_blocks: int = 0


@dataclass
class EngineCoreOutputs:
    outputs: list[EngineCoreOutput] = field(default_factory=list)
    stats: SchedulerStats | None = None
