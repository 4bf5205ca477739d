"""Every message between the front end (input/output processing) and the engine core.

All are msgspec Structs, typed end to end (sampling parameters and logprobs included, no
``dict[str, Any]`` payloads, no positional tuples), so the in-process path (``LLMEngine``)
and the ZMQ path (``AsyncLLM`` + :mod:`pagoda.engine.core_proc`) carry the same objects; the
second encodes them as msgpack, and nothing is ever pickled. The core receives a request
once and sends back only what changed each step (new tokens, their logprobs, a finish).

Wire protocol (tagged unions)::

    front end ──PUSH──▶ core    AddRequest | AbortRequests | FinishRequests | ResetPrefixCache | AddLora | RemoveLora
                                | ListLoras | Shutdown
    front end ◀──PUSH── core    Ready | Heartbeat | StepOutputs | Rejected | PrefixCacheReset | LoraAnswer | CoreFailed

Structs sent once per token or per step (``EngineCoreOutput``, the logprob structs) are
``array_like``: encoded as arrays, not maps, which keeps the per-step messages small.
"""

from __future__ import annotations

import msgspec

from pagoda.lora.request import LoRARequest
from pagoda.pooling.params import PoolingParams
from pagoda.sampling_params import SamplingParams


# ------------------------------------------------------------------------- payloads
class AdmissionLimits(msgspec.Struct, frozen=True):
    """What admission needs to know about the engine core (the core sends it in ``Ready``).

    ``kv_cache_tokens``: tokens the whole KV cache holds (usable blocks x block size), the
    most one request can ever use.
    """

    max_model_len: int
    vocab_size: int
    max_logprobs: int
    kv_cache_tokens: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool


class EngineCoreRequest(msgspec.Struct, omit_defaults=True):
    """One sequence to generate (a request with ``n`` samples becomes ``n`` of these)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: list[int]
    max_tokens: int
    arrival_time: float
    cache_salt: str | None = None
    priority: int = 0  # with --scheduling-policy priority: lower is served first (ties by arrival)
    # Parallel sampling: the id of the first sample of the same prompt, whose prompt blocks
    # this one shares instead of recomputing them.
    fork_of: str | None = None
    # A pooling request (``--runner pooling``; ``max_tokens`` is 0): what to pool, and BERT segment ids.
    pooling_params: PoolingParams | None = None
    token_type_ids: list[int] | None = None
    # The ids of ``eos_token_ids`` other than the tokenizer's own (generation_config's extra EOS ids): ending on one
    # reports it as ``stop_reason``, as vLLM does (it files them under stop_token_ids); the primary EOS reports none.
    secondary_eos_token_ids: list[int] | None = None
    # The LoRA adapter the request runs with (None: the base model); the core loads and checks it when added.
    lora_request: LoRARequest | None = None


class PooledData(msgspec.Struct, array_like=True):
    """A pooling request's output: float32 values (little-endian bytes) of the given shape."""

    data: bytes
    shape: list[int]


class TokenLogprobs(msgspec.Struct, array_like=True):
    """Logprobs of one sampled token: its own, its rank (1 = most likely) and the top-k."""

    logprob: float
    rank: int
    top_ids: list[int]
    top_logprobs: list[float]
    # The top entries' ranks when they are not simply 1, 2, ... (``logprob_token_ids``: the ids asked for).
    top_ranks: list[int] | None = None


class PromptLogprobs(msgspec.Struct, array_like=True):
    """Logprobs of consecutive prompt positions ``start_index, start_index + 1, ...``."""

    start_index: int
    logprobs: list[float]
    ranks: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


class EngineCoreOutput(msgspec.Struct, array_like=True, omit_defaults=True):
    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprobs] | None = None  # one per new token, when requested
    prompt_logprobs: PromptLogprobs | None = None  # prompt positions computed this step, when requested
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    error: str | None = None
    error_param: str | None = None  # the error is the request's fault: the field that caused it (a 400, not a 500)
    pooled: PooledData | None = None  # a finished pooling request's output
    first_scheduled_time: float | None = None  # wall clock (time.time()); on a request's first sampled output


class SchedulerStats(msgspec.Struct):
    num_running: int = 0
    num_waiting: int = 0
    # Of num_waiting: those held back by something other than capacity (vLLM's "deferred" reason of
    # num_requests_waiting_by_reason): a LoRA slot (another adapter holds the last one), their grammar's compile.
    num_waiting_deferred: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0
    num_prompt_tokens: int = 0  # computed this step (prefill)
    num_generation_tokens: int = 0  # sampled this step
    # Prefix cache, cumulative since start, in tokens (vLLM's prefix_cache_queries / _hits).
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0  # the device's hits; the host tier's are external (vLLM's KV-connector counters)
    external_prefix_cache_queries: int = 0
    external_prefix_cache_hits: int = 0
    # Host-memory KV tier (--kv-offloading-size): fraction of its blocks in use, and
    # cumulative blocks stored into it / loaded back from it.
    cpu_kv_cache_usage: float = 0.0
    kv_offload_stored_blocks: int = 0
    kv_offload_loaded_blocks: int = 0
    # Speculative decoding, cumulative since start (vLLM's spec_decode_* counters): verify steps
    # with a draft, drafted tokens, accepted tokens, and accepted tokens per draft position.
    spec_num_drafts: int = 0
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0
    spec_accepted_per_pos: list[int] = msgspec.field(default_factory=list)
    # With --enable-lora: requests per LoRA adapter name, running and waiting (vLLM's scheduler stats of these
    # names; the server's ``lora_requests_info`` gauge). Empty without LoRA or without adapter requests.
    running_lora_adapters: dict[str, int] = msgspec.field(default_factory=dict)
    waiting_lora_adapters: dict[str, int] = msgspec.field(default_factory=dict)


class EngineCoreOutputs(msgspec.Struct):
    outputs: list[EngineCoreOutput] = msgspec.field(default_factory=list)
    stats: SchedulerStats | None = None


class QueueTime(msgspec.Struct, array_like=True):
    """Seconds a request waited between arriving at the core and its first scheduling."""

    request_id: str
    seconds: float
    scheduled_at: float = 0.0  # wall clock (time.time()) of the first scheduling


# ---------------------------------------------------------------------- messages in
class AddRequest(msgspec.Struct, tag="add"):
    request: EngineCoreRequest
    client: int = 0
    """The API server process that sent it (``--api-server-count``): the core sends the request's outputs there."""


class AbortRequests(msgspec.Struct, tag="abort"):
    request_ids: list[str]


class FinishRequests(msgspec.Struct, tag="finish"):
    """Requests the front end stopped itself (a stop string matched)."""

    request_ids: list[str]


class ResetPrefixCache(msgspec.Struct, tag="reset_prefix_cache"):
    """Drop the prefix cache's unreferenced blocks; answered by ``PrefixCacheReset(call_id)``."""

    call_id: int
    client: int = 0  # the API server process that asks (it gets the answer)


class AddLora(msgspec.Struct, tag="add_lora"):
    """vLLM's ``add_lora``: read and check the adapter now and keep it loaded (``--lora-modules``,
    ``/v1/load_lora_adapter``); answered by ``LoraAnswer(call_id)`` (``error``: why it was refused)."""

    call_id: int
    lora_request: LoRARequest
    client: int = 0


class RemoveLora(msgspec.Struct, tag="remove_lora"):
    """vLLM's ``remove_lora``: drop the adapter from the host cache; answered by ``LoraAnswer`` (``success``: it
    was loaded)."""

    call_id: int
    lora_int_id: int
    client: int = 0


class ListLoras(msgspec.Struct, tag="list_loras"):
    """vLLM's ``list_loras``: the ids of the adapters loaded in host memory; answered by ``LoraAnswer.ids``."""

    call_id: int
    client: int = 0


class Shutdown(msgspec.Struct, tag="shutdown"):
    pass


CoreInput = AddRequest | AbortRequests | FinishRequests | ResetPrefixCache | AddLora | RemoveLora | ListLoras | Shutdown


# --------------------------------------------------------------------- messages out
class Ready(msgspec.Struct, tag="ready"):
    pid: int
    num_blocks: int
    block_size: int
    limits: AdmissionLimits
    startup_seconds: float


class Heartbeat(msgspec.Struct, tag="heartbeat"):
    stats: SchedulerStats


class StepOutputs(msgspec.Struct, tag="outputs"):
    outputs: EngineCoreOutputs
    # Requests first scheduled in this step, with how long each waited for it.
    scheduled: list[QueueTime] = []


class Rejected(msgspec.Struct, tag="rejected"):
    """``add_request`` refused a request.

    ``internal`` False: a validation failure meant for the user (the front end raises
    :class:`pagoda.errors.ValidationError` with ``parameter`` and ``code``, a 400); True: the
    core failed in a way it did not foresee (a 500).
    """

    request_id: str
    message: str
    parameter: str | None = None
    code: str | None = None
    internal: bool = False


class PrefixCacheReset(msgspec.Struct, tag="prefix_cache_reset"):
    """Answer to ``ResetPrefixCache``: ``success`` is False when running requests still hold cached blocks."""

    call_id: int
    success: bool


class LoraAnswer(msgspec.Struct, tag="lora_answer"):
    """Answer to ``AddLora`` / ``RemoveLora`` / ``ListLoras``. ``error``: the adapter was refused (the message
    names it and the problem; ``not_found``: its folder or adapter_config.json does not exist)."""

    call_id: int
    success: bool
    ids: list[int] = []
    error: str | None = None
    not_found: bool = False


class CoreFailed(msgspec.Struct, tag="failed"):
    """The core hit an unexpected error and is exiting."""

    message: str


CoreOutput = Ready | Heartbeat | StepOutputs | Rejected | PrefixCacheReset | LoraAnswer | CoreFailed


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


def input_decoder() -> msgspec.msgpack.Decoder:
    """Decodes what the core receives (raises ``msgspec.DecodeError`` on anything else)."""
    return msgspec.msgpack.Decoder(CoreInput)


def output_decoder() -> msgspec.msgpack.Decoder:
    """Decodes what the front end receives from the core."""
    return msgspec.msgpack.Decoder(CoreOutput)
