"""Typed engine configuration. Each field's docstring is its CLI help.

``EngineArgs`` holds what the user typed (vLLM's names); ``EngineArgs.create_config``
resolves it against the model's files into an immutable :class:`EngineConfig`. The engine
flags of every command are generated from ``EngineArgs`` (:mod:`pagoda.arg_utils`): a field's
name, type, default, choices (a ``Literal`` or ``metadata["choices"]``) and docstring are the
flag's; the constants below are the only lists of accepted values.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pagoda import envs
from pagoda.engine.chat_content_format import CONTENT_FORMATS
from pagoda.lora.config import LORA_DTYPES, LoRAConfig, check_lora_supported, lora_config
from pagoda.models.registry import MODEL_IMPLS
from pagoda.pooling.config import PoolerConfig as PoolerConfig  # re-exported: vLLM users import it from here
from pagoda.pooling.config import ResolvedPooler
from pagoda.quantization import QUANTIZATION_METHODS
from pagoda.sampling_params import MAX_LOGPROBS
from pagoda.spec_decode.config import SpeculativeConfig
from pagoda.structured_output.params import StructuredOutputsConfig

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("pagoda")

# torch is imported only where a dtype or device is resolved: `pagoda serve` builds its parser and hands the
# engine core its arguments before it imports torch (docs/design.md, "Start-up").
_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
}
DTYPES = ("auto", *_DTYPES)
"""Accepted ``dtype`` values (vLLM's names and their short forms)."""

LoadFormat = Literal["auto", "safetensors", "gguf", "dummy"]
LOAD_FORMATS: tuple[str, ...] = get_args(LoadFormat)
AttentionBackendName = Literal["torch", "triton"]
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackendName)
TokenizerMode = Literal["auto", "hf", "slow"]
TOKENIZER_MODES: tuple[str, ...] = get_args(TokenizerMode)
BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
SchedulingPolicy = Literal["fcfs", "priority"]
SCHEDULING_POLICIES: tuple[str, ...] = get_args(SchedulingPolicy)
DISTRIBUTED_EXECUTOR_BACKENDS = ("mp", "ray")
"""``--distributed-executor-backend``'s values (left out: mp); checked again for ``LLM(...)`` in
:func:`pagoda.distributed.support.check_executor_backend`."""
MIN_KV_BLOCKS = 2
"""Fewest KV blocks a cache can have: block 0 is the null block that pads block tables
(:class:`pagoda.core.block_pool.BlockPool` refuses fewer)."""
KVCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
KV_CACHE_DTYPES: tuple[str, ...] = get_args(KVCacheDtype)


ENGINE_ARG_GROUPS: dict[str, tuple[str, ...]] = {
    "ModelConfig": ("model", "runner", "convert", "pooler_config",
                    "tokenizer", "tokenizer_mode", "revision", "served_model_name", "dtype",
                    "max_model_len", "hf_overrides", "seed", "enforce_eager", "deterministic", "generation_config",
                    "override_generation_config", "max_logprobs", "trust_remote_code", "model_impl"),
    "LoadConfig": ("download_dir", "load_format"),
    "QuantizationConfig": ("quantization",),
    "DeviceConfig": ("device",),
    "CacheConfig": ("block_size", "gpu_memory_utilization", "kv_cache_memory_bytes", "num_gpu_blocks_override",
                    "enable_prefix_caching", "kv_offloading_size", "kv_offloading_backend", "kv_cache_dtype"),
    "SchedulerConfig": ("max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill",
                        "long_prefill_token_threshold", "scheduling_policy",
                        "async_scheduling", "stream_interval"),
    "AttentionConfig": ("attention_backend",),
    "SpeculativeConfig": ("speculative_config",),
    "Frontend": ("chat_template", "chat_template_content_format"),
    "StructuredOutputsConfig": ("structured_outputs_config",),
    "LoRAConfig": ("enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras", "lora_dtype"),
    "ParallelConfig": ("tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend",
                       "data_parallel_size", "data_parallel_size_local"),
}
"""``--help`` groups of the engine flags, named and filled as vLLM groups its ``serve`` flags (every
``EngineArgs`` field in exactly one group; a test checks it)."""


def _as_simple(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (bool, int, float or str) where vLLM's lax parsing takes it, else None: a bool only as
    itself; an int from any integral number or a whole-valued float; a float from any real; a str from a path."""
    import numbers

    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, numbers.Integral):
            return int(value)
        return int(value) if isinstance(value, float) and value.is_integer() else None
    if kind is float:
        return value if isinstance(value, (int, float)) else float(value) if isinstance(value, numbers.Real) else None
    if isinstance(value, str):
        return value
    return os.fspath(value) if isinstance(value, os.PathLike) else None


_SIMPLE_TYPES: dict[str, tuple[type, bool]] = {
    **{name: (kind, False) for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str))},
    **{f"{name}|None": (kind, True) for name, kind in (("bool", bool), ("int", int), ("float", float),
                                                       ("str", str))},
}
"""EngineArgs annotations (spaces removed) that :meth:`EngineArgs._check_types` checks, with their type and
whether None is allowed."""


@dataclass
class EngineArgs:
    model: str | None = None
    """Model: a local Hugging Face folder, a .gguf file or a hub id (default: the embedded SmolLM2-135M-Instruct)."""
    runner: str = field(default="auto", metadata={"choices": ("auto", "generate", "pooling")})
    """generate: a text-generation model; pooling: an embedding / classification / scoring model (served by
    LLM.embed/classify/score/reward/encode and /v1/embeddings, /classify, /score, /rerank, /pooling); auto:
    pooling for pooling-only architectures (BERT-family encoders, *ForSequenceClassification) or with
    --convert, else generate."""
    convert: str = field(default="auto", metadata={"choices": ("auto", "none", "embed", "classify", "reward")})
    """Run the model as a pooling model of this kind: embed (pooled hidden states, e.g. a decoder embedder),
    classify (a *ForSequenceClassification head), reward (per-token head outputs); auto: from the architecture."""
    pooler_config: dict[str, Any] | None = None
    """JSON object overriding the pooler: pooling_type (CLS, MEAN, LAST, ALL), normalize, dimensions,
    use_activation (default: the model's, from sentence-transformers' modules.json when present)."""
    tokenizer: str | None = None
    """Tokenizer folder or id (default: the model's)."""
    tokenizer_mode: str = field(default="auto", metadata={"choices": TOKENIZER_MODES})
    """auto / hf: the fast (Rust) tokenizer; slow: transformers' Python tokenizer where the model has one (else
    the fast one, which gives the same tokens, and a log line says so)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a hub model id or --tokenizer id (default: the repository's main
    branch); refused when neither is a hub id."""
    download_dir: str | None = None
    """Folder that hub downloads go to and are read from, in the Hugging Face cache layout (default: the
    Hugging Face cache, $HF_HOME)."""
    served_model_name: list[str] | None = None
    """Names clients use in the 'model' field; the first is reported in responses (default: the model argument,
    or SmolLM2-135M-Instruct for the embedded default)."""
    dtype: str = field(default="auto", metadata={"choices": DTYPES})
    """Weights/activations dtype. auto: the config's dtype; on CPU a half-precision one runs as bf16 where the CPU
    has native bf16 (AVX512-BF16/AMX) or the linears are 4/8-bit weight-only, else as fp32; fp32 runs as bf16 on
    GPU. float16 runs as bfloat16 on CPU (a log line says so)."""
    max_model_len: int | None = field(default=None, metadata={"count": True})
    """Maximum context length, prompt + output, e.g. 8192 or 32k (default: the model's max_position_embeddings)."""
    hf_overrides: dict[str, Any] | None = None
    """JSON object merged into the model's config.json (nested objects key by key), e.g.
    '{"max_position_embeddings": 1024}'."""
    block_size: int = field(default=16, metadata={"choices": BLOCK_SIZES})
    """Tokens per KV-cache block."""
    max_num_seqs: int | None = None
    """Maximum number of requests running in one step (default: 1024 on GPU, as vLLM on H100-class cards; 256 on
    CPU)."""
    max_num_batched_tokens: int | None = field(default=None, metadata={"count": True})
    """Token budget of one step, prefill chunks + decodes, e.g. 8192 or 8K (default: 16384 on GPU, 2048 on CPU)."""
    enable_chunked_prefill: bool = True
    """Split long prompts into chunks that share steps with decodes."""
    long_prefill_token_threshold: int = 0
    """Above 0: no request computes more than this many tokens in one step, so a long prompt is prefilled in chunks
    of this size and the steps it shares with running decodes stay short (lower inter-token latency under load,
    at some prefill throughput; needs chunked prefill). 0: a prompt takes all the step's token budget it can."""
    stream_interval: int = 1
    """Streamed outputs: a request's output is delivered at its first token, then every this many tokens, and at
    its end (the tokens in between come together in one chunk). 1 (default): every token as soon as it is
    computed; above 1: fewer, larger chunks and less API-server CPU per token, for higher throughput under many
    concurrent streams."""
    enable_prefix_caching: bool = True
    """Automatic prefix caching: reuse the KV blocks of a repeated prompt prefix."""
    kv_offloading_size: float | None = None
    """Size in GiB of a host-memory KV tier: blocks evicted from the device cache (and those of preempted
    requests) are kept there and copied back on a prefix hit instead of recomputed (default: off)."""
    kv_offloading_backend: str = field(default="native", metadata={"choices": ("native",)})
    """Host-tier implementation (pagoda's own block pool)."""
    kv_cache_dtype: str = field(default="auto", metadata={"choices": KV_CACHE_DTYPES})
    """KV-cache storage dtype. auto: the model dtype; fp8 (= fp8_e4m3) or fp8_e5m2: one byte per element, about
    twice the KV blocks, with the per-layer k_scale/v_scale of the checkpoint (1.0 where it has none)."""
    seed: int = 0
    """Seed for unseeded sampling and dummy weights."""
    load_format: str = field(default="auto", metadata={"choices": LOAD_FORMATS})
    """Weights format. auto: safetensors, or a .gguf model kept quantized (as gguf); safetensors with a .gguf model:
    its dequantized conversion; dummy: random weights of the configured shape."""
    device: str = "auto"
    """auto, cpu or cuda (cuda:0); another GPU: CUDA_VISIBLE_DEVICES."""
    quantization: str | None = field(default=None, metadata={"choices": QUANTIZATION_METHODS, "aliases": ("-q",)})
    """Quantization method of the weights (default: the checkpoint's quantization_config or compression_config,
    else its quantize_config.json / quant_config.json, or none). Given for an unquantized checkpoint, a method that can
    quantize at load time (fp8) does so; gptq and awq then give random weights of their default layout (4-bit,
    group 128) with --load-format dummy only. vLLM's kernel names gptq_marlin / gptq_bitblas and awq_marlin /
    cpu_awq read the gptq and awq checkpoints, run with pagoda's own kernels. MoE experts are quantized too
    (weight-only, dequantized in flight), GGUF ones included."""
    kv_cache_memory_bytes: int | None = field(default=None, metadata={"size": True})
    """KV-cache size, e.g. 512M or 4G (binary units; a lowercase one, 4g, is decimal, as in vLLM); on GPU it
    overrides --gpu-memory-utilization (default: 2G on CPU)."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory the engine may use (weights, activations, KV cache)."""
    num_gpu_blocks_override: int | None = None
    """Use exactly this many KV blocks, at least 2 (block 0 pads block tables); testing / debugging (default: sized
    from memory)."""
    enforce_eager: bool = False
    """Disable CUDA graphs."""
    deterministic: bool = False
    """Batch-invariant mode (also VLLM_BATCH_INVARIANT=1): each request's greedy tokens and logprobs are bitwise
    the same whatever the batch size, the other requests, prefill chunking, prefix-cache hits or preemption; every
    row-reducing op runs in a fixed order (docs/design.md). Costs throughput (CPU: about 10 % at batch 32 and 1.8x the
    decode step at batch 1 on an AVX-512 EPYC; benchmarks/RESULTS.md); tensor parallelism and quantized GPU kernels
    are refused with it."""
    async_scheduling: bool | None = None
    """Schedule and prepare step N+1 on the host while the GPU runs step N (default: on for CUDA, off for CPU)."""
    scheduling_policy: str = field(default="fcfs", metadata={"choices": SCHEDULING_POLICIES})
    """fcfs: requests are served in arrival order; priority: by each request's priority (lower first, ties by
    arrival), and a preemption takes the running request with the largest (priority, arrival)."""
    attention_backend: str | None = field(default=None, metadata={"choices": ATTENTION_BACKENDS})
    """Attention implementation (default: triton on CUDA, torch elsewhere); triton needs CUDA (or, for testing,
    Triton's interpreter: TRITON_INTERPRET=1)."""
    generation_config: str = "auto"
    """auto: sampling defaults from the model's generation_config.json; vllm: ignore it; or a folder holding
    one."""
    override_generation_config: dict[str, Any] | None = None
    """JSON object merged over the generation-config sampling defaults (with --generation-config vllm too), e.g.
    '{"temperature": 0.5, "max_new_tokens": 64}'; keys: temperature, top_p, top_k, min_p, repetition_penalty,
    max_new_tokens (another key is a start-up error)."""
    max_logprobs: int = MAX_LOGPROBS
    """Largest logprobs / top_logprobs / prompt_logprobs a request may ask for; -1: no cap (the whole vocabulary,
    which a request asks for with -1)."""
    chat_template: str | None = None
    """A Jinja chat template (file path or the template itself) replacing the model's (default: the model's)."""
    chat_template_content_format: str = field(default="auto", metadata={"choices": CONTENT_FORMATS})
    """How a message's content reaches the chat template: string (its text), openai (a list of {"type": "text",
    "text": ...} parts), auto (openai when the template loops over a message's content, else string; vLLM's
    rule)."""
    trust_remote_code: bool = False
    """Allow a model whose config.json names remote code (auto_map) to execute that code from its folder, in the
    transformers fallback. Without it such a model is refused; pagoda never runs remote code otherwise."""
    speculative_config: dict[str, Any] | None = None
    """Speculative decoding, vLLM's JSON object: {"method": "ngram", "num_speculative_tokens": k,
    "prompt_lookup_min": 2, "prompt_lookup_max": 5} (prompt lookup; these two are pagoda's defaults, the ones its
    CPU benchmarks were tuned with; vLLM's are 5 and 5: give both to match vLLM),
    {"method": "suffix", "num_speculative_tokens":
    k} (suffix decoding: the most frequent continuation of the longest earlier match in the request or in earlier
    requests' outputs, a draft as long as the match earns; suffix_decoding_max_tree_depth, _max_spec_factor,
    _min_token_prob, _max_cached_requests), or {"method": "draft_model", "model":
    path, "num_speculative_tokens": k} (a smaller model with the same vocabulary; its own quantization, revision
    and max_model_len keys apply to it only), or {"method": "eagle" | "eagle3",
    "model": path, "num_speculative_tokens": k} (an EAGLE / EAGLE-3 head for a Llama-family target). Outputs are
    unchanged (greedy: identical; sampled: the same distribution). Default: off."""
    model_impl: str = field(default="auto", metadata={"choices": MODEL_IMPLS})
    """Which implementation runs the model. auto: pagoda's own (or a plugin's) when the architecture has one, else
    the transformers fallback; pagoda (alias vllm): only pagoda's own or a plugin's; transformers: the fallback
    (HF modules with pagoda's paged attention; unquantized). `pagoda models` lists what runs how."""
    structured_outputs_config: dict[str, Any] | None = None
    """JSON object configuring structured outputs, e.g. '{"backend": "xgrammar"}': backend (auto = xgrammar,
    xgrammar or guidance), disable_any_whitespace (compact JSON only), disable_additional_properties and
    reasoning_parser (qwen3, deepseek_r1: the grammar applies after </think>; `serve --reasoning-parser` sets it)."""
    tensor_parallel_size: int = field(default=1, metadata={"aliases": ("-tp",)})
    """Ranks (one process and one device each) that split every layer's heads, MLP or experts, embedding and LM
    head: the Llama family, Mixtral/Qwen MoE and Gemma 2/3, unquantized, GPTQ, AWQ, compressed-tensors or FP8; it
    must divide the attention heads, intermediate sizes and quantization groups. On CPU the ranks use gloo (a
    correctness path), on CUDA NCCL with rank r on cuda:r."""
    pipeline_parallel_size: int = field(default=1, metadata={"aliases": ("-pp",)})
    """Pipeline stages: the decoder layers split evenly over the stages (VLLM_PP_LAYER_PARTITION overrides), the
    embedding on the first and the LM head on the last; hidden states go stage to stage, and up to this many steps
    are in flight. Ranks = tensor x pipeline size. Covers the dense Llama family, unquantized; runs eager (no CUDA
    graphs), without async scheduling or speculative decoding."""
    distributed_executor_backend: str | None = field(default=None, metadata={"choices": DISTRIBUTED_EXECUTOR_BACKENDS})
    """How the ranks of --tensor-parallel-size x --pipeline-parallel-size run: mp (the default: worker processes on
    this machine) or ray (Ray actors placed by a placement group over the nodes of a Ray cluster: RAY_ADDRESS or
    the running one, else a local one)."""
    data_parallel_size: int = field(default=1, metadata={"aliases": ("-dp",)})
    """Engine replicas behind one API server (`pagoda serve`), each in its own process with its own KV cache (and,
    with --tensor-parallel-size / --pipeline-parallel-size, its own ranks: DP x TP x PP devices in all; on CUDA each
    replica sees its own devices through CUDA_VISIBLE_DEVICES). A new request goes to the least-loaded replica. All
    replicas run on this machine, with the mp executor; the offline LLM runs one."""
    data_parallel_size_local: int | None = field(default=None, metadata={"aliases": ("-dpl",)})
    """Replicas on this machine; must equal --data-parallel-size (multi-node data parallelism is not supported)."""
    enable_lora: bool = False
    """Apply LoRA adapters (PEFT folders) per request, as vLLM: LLM.generate(..., lora_request=LoRARequest(name, id,
    path)). Native Llama, Mistral, Qwen2 and Qwen3 models on one device, adapters on q/k/v/o/gate/up/down; CUDA graphs
    stay on (the native CPU decoder stack runs only steps without adapter rows); not with speculative decoding,
    --deterministic or pooling (docs/models.md, "LoRA adapters")."""
    max_loras: int = 1
    """LoRA adapters one step may use (device slots); requests of further adapters wait for a slot."""
    max_lora_rank: int = 16
    """The largest LoRA rank an adapter may have (the slots are padded to it); a larger one is refused."""
    max_cpu_loras: int | None = None
    """LoRA adapters kept loaded in host memory, least recently used dropped first (default: --max-loras); at least
    --max-loras."""
    lora_dtype: str = field(default="auto", metadata={"choices": LORA_DTYPES})
    """The LoRA weights' dtype (auto: the model's; on the CPU float32 for a 16-bit model, faster there)."""

    def validate(self) -> None:
        """Checks that need no model files (the CLI runs them before anything loads)."""
        self._check_types()
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}.")
        for name in ("max_num_seqs", "max_model_len", "max_num_batched_tokens"):  # None: the default
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (leave it out for the default), got {value}.")
        if not -(2**63) <= self.seed < 2**64:  # torch.manual_seed's range (every generator pagoda seeds)
            raise ValueError(f"seed (--seed) must be in [-2**63, 2**64), got {self.seed}.")
        if self.stream_interval < 1:
            raise ValueError(f"stream_interval must be at least 1, got {self.stream_interval}.")
        if self.long_prefill_token_threshold < 0:
            raise ValueError(f"long_prefill_token_threshold must be 0 (off) or positive, got "
                             f"{self.long_prefill_token_threshold}.")
        if self.long_prefill_token_threshold > 0 and not self.enable_chunked_prefill:
            raise ValueError("--long-prefill-token-threshold prefills a prompt in chunks: it needs chunked prefill "
                             "(drop --no-enable-chunked-prefill, or set the threshold to 0).")
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling_policy must be one of {SCHEDULING_POLICIES}, got {self.scheduling_policy!r}.")
        if self.max_logprobs < -1:
            raise ValueError(f"max_logprobs must be -1 (no cap) or at least 0, got {self.max_logprobs}.")
        if self.chat_template_content_format not in CONTENT_FORMATS:
            raise ValueError(f"chat_template_content_format (--chat-template-content-format) must be one of "
                             f"{CONTENT_FORMATS}, got {self.chat_template_content_format!r}.")
        if self.tokenizer_mode not in TOKENIZER_MODES:
            raise ValueError(f"tokenizer_mode must be one of {TOKENIZER_MODES}, got {self.tokenizer_mode!r}.")
        StructuredOutputsConfig.from_dict(self.structured_outputs_config)
        self._validate_cache()
        self._check_revision()
        self._validate_parallel()
        envs.check()

    def _validate_cache(self) -> None:
        """The CacheConfig flags' own checks."""
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be a power of two in [1, 128], got {self.block_size}.")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < MIN_KV_BLOCKS:
            raise ValueError(f"num_gpu_blocks_override (--num-gpu-blocks-override) must be at least {MIN_KV_BLOCKS} "
                             f"(block 0 pads block tables), got {self.num_gpu_blocks_override}; leave it out to size "
                             f"the KV cache from memory.")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}.")
        if self.kv_offloading_size is not None and not self.kv_offloading_size >= 0:
            raise ValueError(f"kv_offloading_size must be a non-negative number of GiB, got {self.kv_offloading_size}.")
        if self.kv_offloading_backend != "native":
            raise ValueError(f"kv_offloading_backend must be 'native', got {self.kv_offloading_backend!r}.")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype (--kv-cache-dtype) must be one of {KV_CACHE_DTYPES}, "
                             f"got {self.kv_cache_dtype!r}.")

    def _check_revision(self) -> None:
        """``--revision`` selects a snapshot of a hub repository: refused when neither the model nor
        ``--tokenizer`` is a hub id (a local folder or file, the embedded default), where it would select nothing."""
        if self.revision is None or _is_hub_id(self.model) or _is_hub_id(self.tokenizer):
            return
        from pagoda.models.model_files import DEFAULT_MODEL_ALIASES

        local = self.model is not None and str(self.model) not in DEFAULT_MODEL_ALIASES
        what = f"{self.model!r}, a local path," if local else "the embedded default model"
        raise ValueError(f"--revision {self.revision}: {what} has no hub revisions to choose from (--revision applies "
                         f"to a hub model id): pass the hub id, or drop --revision and give a folder holding that "
                         f"revision.")

    def _check_types(self) -> None:
        """Every field declared as a plain bool / int / float / str (or one of those or None) holds that type, after
        the conversions vLLM's lax parsing makes (a path for a string, a numpy or whole-valued float for an integer,
        any real for a float): a string where a switch belongs (``enable_prefix_caching="no"``) would otherwise count
        as true, and one where a number belongs fail later with a TypeError that names nothing (``LLM(...)`` passes
        values unparsed)."""
        import dataclasses

        for f in dataclasses.fields(self):
            want = _SIMPLE_TYPES.get(str(f.type).replace(" ", ""))
            if want is None:
                continue
            kind, optional = want
            value = getattr(self, f.name)
            if value is None and optional:
                continue
            converted = _as_simple(value, kind)
            if converted is None:
                shown = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[kind]
                raise ValueError(f"{f.name} must be {shown}{' or None' if optional else ''}, got {value!r}.")
            if converted is not value:
                setattr(self, f.name, converted)

    def _validate_parallel(self) -> None:
        """The ParallelConfig flags' own checks (the model-dependent ones: ``distributed/support.py``)."""
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size (--tensor-parallel-size) must be at least 1, "
                             f"got {self.tensor_parallel_size}.")
        if self.pipeline_parallel_size < 1:
            raise ValueError(f"pipeline_parallel_size (--pipeline-parallel-size) must be at least 1, "
                             f"got {self.pipeline_parallel_size}.")
        if self.data_parallel_size < 1:
            raise ValueError(f"data_parallel_size (--data-parallel-size) must be at least 1, "
                             f"got {self.data_parallel_size}.")
        if self.data_parallel_size_local not in (None, self.data_parallel_size):
            raise ValueError(f"--data-parallel-size-local {self.data_parallel_size_local}: every replica runs on this "
                             f"machine (multi-node data parallelism is not supported), so it must equal "
                             f"--data-parallel-size ({self.data_parallel_size}).")
        if self.data_parallel_size > 1 and self.distributed_executor_backend == "ray":
            raise ValueError(f"--data-parallel-size {self.data_parallel_size}: replicas run on this machine with the "
                             f"mp executor; --distributed-executor-backend ray does not combine with it yet.")

    def create_config(self) -> EngineConfig:
        from pagoda.models.model_files import ensure_gguf_weights, gguf_source, resolve_model
        from pagoda.models.registry import resolve_architecture
        from pagoda.plugins import load_general_plugins
        from pagoda.quantization import resolve_quantization, with_legacy_quant_config
        from pagoda.quantization.gguf import gguf_model_config

        self.validate()
        spec = SpeculativeConfig.from_dict(self.speculative_config) if self.speculative_config is not None else None
        load_general_plugins()
        rev, ddir = self.revision, self.download_dir
        model_path = resolve_model(self.model, load_format=self.load_format, revision=rev, download_dir=ddir)
        tokenizer_path = self._tokenizer_path(rev, ddir) if self.tokenizer else model_path
        hf_config = merge_overrides(read_json(model_path / "config.json"), self.hf_overrides or {})
        hf_config = with_legacy_quant_config(hf_config, model_path, self.quantization)  # compression_config, AutoGPTQ
        arch, model_impl = resolve_architecture(hf_config, self.model_impl, self.trust_remote_code)
        hf_config = gguf_model_config(hf_config, gguf_source(model_path), self.load_format, self.quantization, arch)
        if self.load_format != "dummy" and "quantization_config" not in hf_config:
            ensure_gguf_weights(model_path)  # a GGUF file running dequantized: its conversion's weights, once
        quant = resolve_quantization(hf_config, self.quantization, self.load_format)  # fail before any process starts
        deterministic = self.deterministic or envs.batch_invariant()

        device = resolve_device(self.device)
        dtype_cfg = hf_config
        if (model_path / "pagoda_conversion.json").exists():
            # A dequantized GGUF is stored in float32 only to keep its values exact; run it in
            # half precision like its source model unless the user asks otherwise.
            dtype_cfg = {**hf_config, "torch_dtype": "bfloat16"}
        dtype = resolve_dtype(self.dtype, dtype_cfg, device, int_weights=quant is not None and quant.weight_only_int())

        from pagoda.pooling.setup import resolve_runner

        rc = resolve_runner(self.runner, self.convert, self.pooler_config, arch, hf_config, model_path, tokenizer_path)
        # a --convert classify *ForCausalLM runs as its classifier class; a classifier from LM-head token rows gets
        # its labels and token ids (pooling/setup.py)
        arch, hf_config = rc.arch, rc.hf_config
        pooling = rc.runner == "pooling"
        if pooling and self.long_prefill_token_threshold > 0:
            raise ValueError("--long-prefill-token-threshold applies to generative models; a pooling model "
                             "(--runner pooling) computes each prompt whole in one step.")
        if pooling and spec is not None:
            raise ValueError("--speculative-config applies to generative models; a pooling model (--runner pooling) "
                             "has no decoding to speculate.")
        if pooling and self.async_scheduling:
            raise ValueError("--async-scheduling applies to generative models; a pooling model (--runner pooling) "
                             "computes each prompt whole in one step, with no next step to prepare. Drop the flag.")
        if pooling and self.kv_offloading_size:
            raise ValueError("--kv-offloading-size applies to generative models; a pooling model (--runner pooling) "
                             "keeps no prefix cache for a host tier to extend. Drop the flag.")
        self._check_attention_backend(device)
        max_model_len = self._max_model_len(hf_config, rc.max_len_cap)
        if spec is not None and spec.num_speculative_tokens >= max_model_len:
            raise ValueError(f"speculative_config.num_speculative_tokens={spec.num_speculative_tokens} does not fit "
                             f"the context (max_model_len {max_model_len}).")
        max_num_seqs, mnbt = self._batch_limits(device, max_model_len, pooling)
        tp = self.tensor_parallel_size
        if deterministic:
            from pagoda.layers.batch_invariant import check_supported

            check_supported(device, tp, quant.name if quant is not None else None, self.kv_cache_dtype)
        from pagoda.distributed.support import check_tensor_parallel

        check_tensor_parallel(tp, self.distributed_executor_backend, arch=arch, model_impl=model_impl,
                              quantized=quant is not None,
                              pooling=pooling, device=device, hf_config=hf_config,
                              kv_offloading=bool(self.kv_offloading_size), async_scheduling=self.async_scheduling,
                              speculative=spec is not None, quant_config=quant, pp=self.pipeline_parallel_size)
        from pagoda.engine.core_engines import check_data_parallel

        check_data_parallel(self.data_parallel_size, tp, device, self.pipeline_parallel_size)
        lora = lora_config(self.enable_lora, self.max_loras, self.max_lora_rank, self.max_cpu_loras, self.lora_dtype,
                           dtype, device.type)
        if lora is not None:
            check_lora_supported(arch, model_impl, pooling=pooling, tp=tp, pp=self.pipeline_parallel_size,
                                 speculative=spec is not None, deterministic=deterministic)
        return EngineConfig(
            model=self.model,
            model_path=model_path,
            tokenizer_path=tokenizer_path,
            served_model_name=list(self.served_model_name or [self.model or "SmolLM2-135M-Instruct"]),
            hf_config=hf_config,
            architecture=arch,
            model_impl=model_impl,
            trust_remote_code=self.trust_remote_code,
            dtype=dtype,
            device=device,
            max_model_len=max_model_len,
            block_size=self.block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=mnbt,
            enable_chunked_prefill=self.enable_chunked_prefill and not pooling,
            enable_prefix_caching=self.enable_prefix_caching and not pooling,
            kv_offloading_size=self.kv_offloading_size or 0.0,
            kv_cache_dtype=self.kv_cache_dtype,
            seed=self.seed,
            load_format=self.load_format,
            kv_cache_memory_bytes=self.kv_cache_memory_bytes,
            gpu_memory_utilization=self.gpu_memory_utilization,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
            enforce_eager=self.enforce_eager,
            deterministic=deterministic,
            async_scheduling=(device.type == "cuda" if self.async_scheduling is None else self.async_scheduling)
            and not pooling and self.pipeline_parallel_size == 1,
            scheduling_policy=self.scheduling_policy,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
            stream_interval=self.stream_interval,
            quantization=self.quantization,
            attention_backend=self.attention_backend,
            generation_defaults=self._generation_defaults(model_path),
            max_logprobs=self.max_logprobs,
            chat_template=self.chat_template,
            chat_template_content_format=self.chat_template_content_format,
            tokenizer_mode=self.tokenizer_mode,
            structured_outputs=StructuredOutputsConfig.from_dict(self.structured_outputs_config),
            runner=rc.runner,
            pooler=rc.pooler,
            speculative_config=spec,
            tensor_parallel_size=tp,
            pipeline_parallel_size=self.pipeline_parallel_size,
            pp_layer_partition=self._pp_layer_partition(hf_config),
            distributed_executor_backend=self.distributed_executor_backend or "mp",
            data_parallel_size=self.data_parallel_size,
            lora=lora,
        )

    def _check_attention_backend(self, device: torch.device) -> None:
        """``--attention-backend triton`` compiles its kernels for CUDA; elsewhere only Triton's interpreter
        (``TRITON_INTERPRET=1``, the CPU tests' setting) runs them."""
        if self.attention_backend == "triton" and device.type != "cuda" and not envs.triton_interpreter():
            raise ValueError(f"--attention-backend triton runs on CUDA; on {device.type} use --attention-backend "
                             f"torch (the default there), or set TRITON_INTERPRET=1 to run the Triton kernels in "
                             f"Triton's interpreter (slow; for testing).")

    def _pp_layer_partition(self, hf_config: dict[str, Any]) -> list[int] | None:
        """Decoder layers per pipeline stage, resolved once here (``VLLM_PP_LAYER_PARTITION`` is read in this
        process only: Ray workers may not share its environment)."""
        if self.pipeline_parallel_size == 1:
            return None
        from pagoda.distributed.pipeline import layer_partition

        return layer_partition(int(hf_config["num_hidden_layers"]), self.pipeline_parallel_size)

    def _max_model_len(self, hf_config: dict[str, Any], cap: int | None = None) -> int:
        """--max-model-len, else the model's max_position_embeddings (YaRN: its extended length; or ``cap``: a
        pooling model's sentence-transformers max_seq_length, RoBERTa's offset position table). A sliding window
        does not cap it: the window is a per-layer attention mask."""
        from pagoda.layers.rotary import rope_max_position

        max_pos = rope_max_position(hf_config)
        if cap is not None and not self.max_model_len:
            max_pos = min(max_pos, cap)
        max_model_len = self.max_model_len or max_pos
        if self.max_model_len and self.max_model_len > max_pos:
            raise ValueError(
                f"max_model_len={self.max_model_len} is larger than the model's max_position_embeddings={max_pos}; "
                f"lower --max-model-len."
            )
        return max_model_len

    def _tokenizer_path(self, rev: str | None, ddir: str | None) -> Path:
        """``--tokenizer``'s folder (called only when it is given); its errors name the flag (not the model)."""
        from pagoda.models.model_files import resolve_tokenizer

        assert self.tokenizer is not None
        try:
            return resolve_tokenizer(self.tokenizer, revision=rev, download_dir=ddir)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"--tokenizer {self.tokenizer}: {e}".replace("model path", "path")) from None

    def _batch_limits(self, device: torch.device, max_model_len: int, pooling: bool = False) -> tuple[int, int]:
        """(max_num_seqs, max_num_batched_tokens): the flags, else per-device defaults that fit a step
        (a pooling model computes each prompt whole: its budget is at least max_model_len)."""
        max_num_seqs = self.max_num_seqs or (1024 if device.type == "cuda" else 256)
        mnbt = self.max_num_batched_tokens or (16384 if device.type == "cuda" else 2048)
        if (pooling or not self.enable_chunked_prefill) and mnbt < max_model_len:
            if self.max_num_batched_tokens is not None:  # the user's value: refused, never changed (vLLM's rule)
                why = "a pooling model computes each prompt in one step" if pooling else \
                    "without chunked prefill a prompt is computed in one step"
                raise ValueError(f"--max-num-batched-tokens ({mnbt}) is smaller than --max-model-len "
                                 f"({max_model_len}): {why}, so longer prompts could never run. Raise "
                                 f"--max-num-batched-tokens, lower --max-model-len"
                                 f"{'' if pooling else ', or drop --no-enable-chunked-prefill'}.")
            mnbt = max_model_len  # the default budget: a whole prompt must fit in one step
        if mnbt < max_num_seqs and self.max_num_batched_tokens is None:
            mnbt = max_num_seqs
        return max_num_seqs, mnbt

    def _generation_defaults(self, model_path: Path) -> dict[str, Any]:
        """Sampling defaults: the model's generation_config.json (per --generation-config), then the overrides."""
        from pagoda.sampling_params import GENERATION_CONFIG_KEYS

        gen_defaults: dict[str, Any] = {}
        if self.generation_config != "vllm":
            gen_dir = model_path if self.generation_config == "auto" else Path(self.generation_config)
            gen_file = gen_dir / "generation_config.json"
            if gen_file.exists():
                gen_defaults = read_json(gen_file)
            elif self.generation_config != "auto":
                raise ValueError(f"--generation-config {self.generation_config}: no generation_config.json there "
                                 f"(a folder holding one, 'auto' for the model's, or 'vllm' for none).")
        override = self.override_generation_config or {}
        unknown = sorted(set(override) - set(GENERATION_CONFIG_KEYS))
        if unknown:
            hint = " (max_new_tokens sets max_tokens)" if "max_tokens" in unknown else ""
            raise ValueError(f"--override-generation-config: {unknown} set no sampling default; the keys read are "
                             f"{sorted(GENERATION_CONFIG_KEYS)}{hint}.")
        return {**gen_defaults, **override}


@dataclass(frozen=True)
class EngineConfig:
    model: str | None
    model_path: Path
    tokenizer_path: Path
    served_model_name: list[str]
    hf_config: dict[str, Any]
    architecture: str
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool
    seed: int
    load_format: str
    kv_cache_memory_bytes: int | None
    gpu_memory_utilization: float
    num_gpu_blocks_override: int | None
    enforce_eager: bool
    attention_backend: str | None
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    max_logprobs: int = MAX_LOGPROBS
    chat_template: str | None = None
    chat_template_content_format: str = "auto"
    tokenizer_mode: str = "auto"
    enable_prefix_caching: bool = True
    kv_offloading_size: float = 0.0  # GiB of host-memory KV tier; 0 = off
    kv_cache_dtype: str = "auto"  # one of KV_CACHE_DTYPES (pagoda.attention.kv_quant gives its torch dtype)
    async_scheduling: bool = False  # one step in flight while the next is scheduled
    scheduling_policy: str = "fcfs"  # one of SCHEDULING_POLICIES
    long_prefill_token_threshold: int = 0  # > 0: at most this many tokens of one request per step
    stream_interval: int = 1  # a streamed request's outputs every this many tokens (and its first and last)
    quantization: str | None = None  # --quantization as given; the checkpoint's own method is read at load
    model_impl: str = "pagoda"  # resolved: "pagoda" (native or plugin class) or "transformers" (the fallback)
    trust_remote_code: bool = False
    structured_outputs: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)
    runner: str = "generate"  # generate | pooling (--runner resolved)
    pooler: ResolvedPooler | None = None  # set iff runner == "pooling"
    speculative_config: SpeculativeConfig | None = None
    tensor_parallel_size: int = 1  # ranks of pagoda.distributed (this process is rank 0)
    pipeline_parallel_size: int = 1  # stages (this process runs the last one); ranks = tp x pp
    pp_layer_partition: list[int] | None = None  # decoder layers per stage (None: no pipeline)
    distributed_executor_backend: str = "mp"  # mp | ray
    data_parallel_size: int = 1  # engine replicas of the front end (pagoda.engine.core_engines); 1 in each replica
    deterministic: bool = False  # batch-invariant kernels (--deterministic or VLLM_BATCH_INVARIANT=1)
    lora: LoRAConfig | None = None  # --enable-lora's limits (None: off)


def _is_hub_id(name: str | None) -> bool:
    """Whether ``name`` (a model or tokenizer argument) names a Hugging Face Hub repository: not None, not the
    embedded default, not an existing local path (one that does not exist is refused when it is resolved)."""
    from pagoda.models.model_files import DEFAULT_MODEL_ALIASES

    return name is not None and str(name) not in DEFAULT_MODEL_ALIASES and not Path(name).expanduser().exists()


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied: nested objects are merged key by key (vLLM's --hf-overrides)."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge_overrides(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}.")
    resolved = torch.device(device)
    if resolved.index:  # the engine's threads and ranks compute on the current device / cuda:<rank>, not on N
        raise ValueError(f"--device {device}: pagoda runs on the first visible GPU (and tensor / pipeline ranks on "
                         f"the next ones); choose the GPUs with CUDA_VISIBLE_DEVICES={resolved.index} and --device "
                         f"cuda, as with vLLM.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is visible; use --device cpu.")
    return resolved


def cpu_supports_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


CPU_INT_WEIGHTS_BF16 = ("4/8-bit weight-only linears on CPU run in bfloat16: torch's int4 kernel has a fast path "
                        "for bf16 activations only (measured 7x slower per decode step in float32 on an AVX2 CPU)")


def resolve_dtype(dtype: str, hf_config: dict[str, Any], device: torch.device,
                  int_weights: bool = False) -> torch.dtype:
    """The model dtype for ``--dtype``. ``auto`` on CPU: a half-precision checkpoint runs in bf16 where the CPU
    has native bf16 (AVX512-BF16/AMX) or its linears are weight-only int (``int_weights``; see
    :data:`CPU_INT_WEIGHTS_BF16`), in float32 otherwise; on GPU float32 checkpoints run in bf16."""
    import torch

    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {dtype!r}.")
        out: torch.dtype = getattr(torch, _DTYPES[dtype])
        if device.type == "cpu" and out == torch.float16:
            logger.warning("float16 is slow on CPU; using bfloat16.")
            out = torch.bfloat16
        if device.type == "cpu" and int_weights and out == torch.float32:
            logger.warning("--dtype float32 with weight-only int weights on CPU: %s; --dtype auto or bfloat16 is "
                           "several times faster.", CPU_INT_WEIGHTS_BF16)
        return out
    cfg_dtype = hf_config.get("torch_dtype") or hf_config.get("dtype") or "float32"
    out = getattr(torch, _DTYPES.get(str(cfg_dtype).replace("torch.", ""), "float32"))
    if device.type == "cpu":
        if out in (torch.float16, torch.bfloat16):
            out = torch.bfloat16 if cpu_supports_bf16() or int_weights else torch.float32
    elif out == torch.float32:
        out = torch.bfloat16  # as vLLM: fp32 checkpoints run in half precision on GPU
    return out

