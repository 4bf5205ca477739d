"""vLLM flags that pagoda knows but does not support: each stops start-up with a message naming it.

argparse alone would say "unrecognized arguments", which does not tell a vLLM user which feature
is missing. Every flag here is registered (hidden from ``--help``; listed in ``docs/cli.md``)
with an action that fails at parse time, before any model loads, unless its value is one that
changes nothing here (``--decode-context-parallel-size 1``). Flags that are neither pagoda's nor vLLM's
keep argparse's own error.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from pagoda.errors import ValidationError

ANY_VALUE = "*"


@dataclass(frozen=True)
class UnsupportedFlag:
    flags: tuple[str, ...]
    reason: str
    takes_value: bool = True
    accepted: tuple[str, ...] = ()
    """Values that change nothing here and are accepted (``ANY_VALUE``: the flag is a no-op here)."""
    serve_only: bool = False
    negatable: bool = False
    """vLLM also has ``--no-<flag>`` (its default, off), which pagoda accepts."""


def _u(flags: str, reason: str, *accepted: str, value: bool = True, serve: bool = False,
       neg: bool = False) -> UnsupportedFlag:
    return UnsupportedFlag(tuple(flags.split()), reason, value, accepted, serve, neg)


_MM = "multimodal models are not supported"
_PAR = ("expert and context parallelism are not supported yet (tensor, pipeline and data parallelism are: "
        "--tensor-parallel-size, --pipeline-parallel-size, --data-parallel-size)")
_DP_NODES = ("multi-node data parallelism is not supported: every replica of --data-parallel-size runs on this "
             "machine behind this server")
_GRAPHS = "pagoda captures its own CUDA graphs and does not use torch.compile (--enforce-eager turns graphs off)"
_SSL = "only --ssl-keyfile, --ssl-certfile, --ssl-ca-certs and --ssl-cert-reqs are supported"

UNSUPPORTED: tuple[UnsupportedFlag, ...] = (
    # ModelConfig
    _u("--task", "vLLM deprecated it: use --runner pooling and --convert embed|classify|reward", "auto", "generate"),
    _u("--hf-config-path", "config.json is read from the model folder (edit it with --hf-overrides)"),
    _u("--allowed-local-media-path", _MM),
    _u("--allowed-media-domains", _MM),
    _u("--code-revision", "remote code is never executed"),
    _u("--tokenizer-revision", "the tokenizer comes from the model's revision (--revision) or --tokenizer"),
    _u("--rope-scaling", "set it through --hf-overrides '{\"rope_scaling\": {...}}'"),
    _u("--rope-theta", "set it through --hf-overrides '{\"rope_theta\": ...}'"),
    _u("--logprobs-mode", "logprobs are always the model's raw log-probabilities, before temperature, penalties and "
       "top-k/top-p (vLLM's default, raw_logprobs)", "raw_logprobs"),
    _u("--disable-sliding-window", "sliding-window layers always attend through their window (a mask; KV blocks stay "
       "full-attention)", value=False),
    _u("--disable-cascade-attn", "accepted: pagoda has no cascade attention", ANY_VALUE, value=False),
    _u("--skip-tokenizer-init", "the engine needs the tokenizer (token-id prompts still work with it loaded)",
       value=False),
    _u("--enable-prompt-embeds", "prompt embeddings as input are not supported", value=False),
    _u("--config-format", "only Hugging Face config.json is read", "auto", "hf"),
    _u("--hf-token", "set HF_TOKEN in the environment instead"),
    _u("--override-pooler-config", "vLLM deprecated it: use --pooler-config"),
    _u("--logits-processor-pattern --logits-processors", "custom logits processors are not supported"),
    _u("--enable-sleep-mode", "sleep mode is not supported", value=False),
    _u("--override-attention-dtype", "attention runs in the model dtype (--dtype)"),
    _u("--io-processor-plugin", "plugins are not supported"),
    # LoadConfig
    _u("--safetensors-load-strategy", "pagoda reads safetensors one way"),
    _u("--model-loader-extra-config", "the model loader takes no extra configuration"),
    _u("--ignore-patterns", "hub downloads take pagoda's own file patterns"),
    _u("--use-tqdm-on-load", "not supported", value=False, neg=True),
    _u("--pt-load-map-location", "PyTorch .bin/.pt checkpoints are not loaded (safetensors or GGUF only)"),
    # StructuredOutputsConfig
    _u("--guided-decoding-backend", "vLLM's old flag; pass --structured-outputs-config '{\"backend\": ...}'"),
    _u("--guided-decoding-disable-fallback --guided-decoding-disable-any-whitespace "
       "--guided-decoding-disable-additional-properties",
       "vLLM's old flags; pass --structured-outputs-config '{\"disable_any_whitespace\": true, ...}'", value=False),
    # ParallelConfig
    _u("--decode-context-parallel-size -dcp", _PAR, "1"),
    _u("--data-parallel-start-rank -dpr", _DP_NODES, "0"),
    _u("--data-parallel-rank -dpn --data-parallel-address -dpa --data-parallel-rpc-port -dpp", _DP_NODES),
    _u("--data-parallel-backend -dpb", "replicas are processes on this machine (Ray is not used)", "mp"),
    _u("--data-parallel-hybrid-lb --data-parallel-external-lb", _DP_NODES + " (the server balances its replicas "
       "itself)", value=False),
    _u("--enable-expert-parallel --enable-dbo --enable-eplb", _PAR, value=False),
    _u("--all2all-backend --eplb-config --expert-placement-strategy --dbo-decode-token-threshold "
       "--dbo-prefill-token-threshold --eplb-window-size --eplb-step-interval --num-redundant-experts", _PAR),
    _u("--eplb-log-balancedness", _PAR, value=False),
    _u("--max-parallel-loading-workers", "weights load in one process"),
    _u("--ray-workers-use-nsight", "Ray workers are not profiled with Nsight", value=False),
    _u("--disable-custom-all-reduce", "accepted: pagoda has no custom all-reduce (torch.distributed's is used)",
       ANY_VALUE, value=False),
    _u("--worker-cls --worker-extension-cls", "the worker class cannot be replaced"),
    # CacheConfig
    _u("--swap-space", "accepted: preempted requests are recomputed or kept in the host KV tier "
       "(--kv-offloading-size), as vLLM V1 recomputes them (it keeps the flag for a memory check only)", ANY_VALUE),
    _u("--prefix-caching-hash-algo", "prefix-cache block hashes use pagoda's own hash"),
    _u("--cpu-offload-gb", "weights are not offloaded to the host", "0"),
    _u("--calculate-kv-scales", "fp8 KV scales come from the checkpoint (k_scale/v_scale, default 1.0); they are "
       "not calculated at run time", value=False),
    _u("--kv-sharing-fast-prefill", "KV sharing is not supported", value=False),
    _u("--mamba-cache-dtype --mamba-ssm-cache-dtype --mamba-block-size", "Mamba models are not supported"),
    # MultiModalConfig
    _u("--limit-mm-per-prompt --media-io-kwargs --mm-processor-kwargs --mm-processor-cache-gb "
       "--mm-processor-cache-type --mm-shm-cache-max-object-size-mb --mm-encoder-tp-mode "
       "--mm-encoder-attn-backend --video-pruning-rate", _MM),
    _u("--enable-mm-embeds --interleave-mm-strings --skip-mm-profiling --disable-mm-preprocessor-cache "
       "--enable-multimodal-encoder-data-parallel", _MM, value=False),
    # LoRAConfig
    _u("--fully-sharded-loras", "LoRA adapters run on one device (no tensor parallelism with --enable-lora)",
       value=False, neg=True),
    _u("--enable-lora-bias", "LoRA adapters with biases are not supported (PEFT's bias='none' only)", value=False,
       neg=True),
    _u("--lora-extra-vocab-size", "LoRA adapters cannot extend the vocabulary (vLLM removed the flag too)"),
    _u("--default-mm-loras", _MM),
    # ObservabilityConfig
    _u("--otlp-traces-endpoint --collect-detailed-traces", "OpenTelemetry tracing is not supported"),
    _u("--show-hidden-metrics-for-version", "no metrics are hidden"),
    _u("--kv-cache-metrics --cudagraph-metrics --enable-mfu-metrics --enable-logging-iteration-details "
       "--enable-layerwise-nvtx-tracing", "this metric / trace is not collected (/metrics lists what is)",
       value=False),
    _u("--kv-cache-metrics-sample", "KV-cache residency metrics are not collected"),
    _u("--enable-mm-processor-stats", _MM, value=False),
    # SchedulerConfig
    _u("--max-num-partial-prefills --max-long-partial-prefills",
       "the partial prefills of a step are not counted or capped (--long-prefill-token-threshold caps the tokens of "
       "each)"),
    _u("--num-lookahead-slots", "proposed tokens get their slots when scheduled (no lookahead slots)", "0"),
    _u("--scheduler-cls", "the scheduler class cannot be replaced"),
    _u("--disable-chunked-mm-input", _MM, value=False),
    _u("--disable-hybrid-kv-cache-manager", "accepted: pagoda has one KV cache manager", ANY_VALUE, value=False),
    # CompilationConfig / VllmConfig
    _u("--cudagraph-capture-sizes --cuda-graph-sizes --max-cudagraph-capture-size --compilation-config -O",
       _GRAPHS),
    _u("--max-seq-len-to-capture", "decode CUDA graphs cover every context length (--enforce-eager turns them off)"),
    _u("--kv-transfer-config --kv-events-config", "KV transfer (disaggregated serving) and KV events are not "
       "supported"),
    _u("--additional-config", "there are no platform plugins"),
    _u("--aggregate-engine-logging", "there is one engine", ANY_VALUE, value=False),
    # the OpenAI-compatible frontend (serve only)
    _u("--default-chat-template-kwargs", "requests carry chat_template_kwargs themselves", serve=True),
    _u("--response-role", "the answer's role is 'assistant' when the generation prompt is added (else the last "
       "message's)", "assistant", serve=True),
    _u("--tool-parser-plugin", "tool-parser plugins are not loaded; --tool-call-parser names a built-in parser",
       serve=True),
    _u("--tool-server", "built-in tools (MCP / demo tool servers) are not supported", serve=True),
    _u("--log-config-file", "use --log-level and --uvicorn-log-level", serve=True),
    _u("--enable-force-include-usage "
       "--enable-log-outputs --log-error-stack --tokens-only --enable-per-request-metrics --enable-offline-docs "
       "--grpc", "not supported", value=False, serve=True),
    _u("--headless", _DP_NODES + " (a headless node runs replicas for another node's server)", value=False,
       serve=True),
    _u("--uds", "the server listens on TCP only (--host, --port)", serve=True),
    _u("--disable-frontend-multiprocessing", "the engine core always runs in its own process", value=False,
       serve=True),
    _u("--disable-access-log-for-endpoints", "--disable-uvicorn-access-log turns the whole access log off",
       serve=True),
    _u("--enable-ssl-refresh", _SSL, value=False, serve=True),
    _u("--ssl-ciphers", _SSL, serve=True),
    _u("--middleware", "extra ASGI middleware cannot be loaded", serve=True),
    _u("--h11-max-incomplete-event-size --h11-max-header-count", "uvicorn's own limits apply; the body is capped "
       "by --max-request-body-bytes", serve=True),
    _u("--data-parallel-supervisor-port --dp-supervisor-probe-interval-s --dp-supervisor-probe-timeout-s "
       "--dp-supervisor-probe-failure-threshold", "replicas are not restarted: one that dies takes the server down "
       "(the engine-death path)", serve=True),
    _u("--fingerprint-mode --fingerprint-value", "system_fingerprint is not reported", serve=True),
)


class _Refuse(argparse.Action):
    """Fails the parse naming the flag, unless the value given changes nothing here."""

    def __init__(self, option_strings: list[str], dest: str, entry: UnsupportedFlag, **kw: Any) -> None:
        self.name = option_strings[0]  # the long form, named in the error even when a short one was given
        super().__init__(option_strings, dest, nargs=None if entry.takes_value else 0, default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS, **kw)
        self.entry = entry

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        e = self.entry
        if ANY_VALUE in e.accepted or (e.takes_value and str(values) in e.accepted):
            return
        name = self.name if option_string is None or not option_string.startswith("--") else option_string
        hint = f" (accepted value: {', '.join(e.accepted)})" if e.accepted else ""
        parser.error(f"{name} is a vLLM flag that pagoda does not support: {e.reason}{hint}.")


class _Accept(argparse.Action):
    """``--no-<flag>``: vLLM's default, nothing to do."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def __call__(self, *args: Any, **kw: Any) -> None:
        return None


def add_unsupported_args(parser: argparse.ArgumentParser, serve: bool) -> None:
    """Register the table's flags (the serve-only ones when ``serve``) on ``parser``."""
    for e in UNSUPPORTED:
        if e.serve_only and not serve:
            continue
        # one action per long flag, so the message names the very flag given
        longs = [f for f in e.flags if f.startswith("--")]
        for i, long in enumerate(longs):
            nxt = e.flags.index(longs[i + 1]) if i + 1 < len(longs) else len(e.flags)
            shorts = [f for f in e.flags[e.flags.index(long) + 1:nxt] if not f.startswith("--")]
            parser.add_argument(long, *shorts, action=_Refuse, entry=e, dest=f"unsupported_{long[2:]}")
            if e.negatable:
                parser.add_argument(f"--no-{long[2:]}", action=_Accept, dest=f"unsupported_no_{long[2:]}")


def check_llm_kwargs(kwargs: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """``LLM(**kwargs)`` for keywords that are not engine arguments (``fields``): a vLLM engine argument in the table
    with a value that changes nothing here (its default, or any value of a no-op flag) is dropped; with any other
    value it is a ValueError giving the table's reason. Keywords in neither are left for :class:`EngineArgs` to
    refuse (a TypeError naming them)."""
    by_key = {f[2:].replace("-", "_"): e for e in UNSUPPORTED if not e.serve_only
              for f in e.flags if f.startswith("--")}
    kept = {}
    for key, value in kwargs.items():
        e = by_key.get(key)
        if key in fields or e is None:
            kept[key] = value
            continue
        no_op = value is None or ANY_VALUE in e.accepted or (value is False if not e.takes_value or e.negatable
                                                             else str(value) in e.accepted)
        if not no_op:
            hint = f" (accepted value: {', '.join(e.accepted)})" if e.accepted and ANY_VALUE not in e.accepted else ""
            raise ValueError(f"LLM({key}={value!r}): vLLM's {key} is not supported by pagoda: {e.reason}{hint}.")
    return kept


def markdown_table() -> str:
    """The table of ``docs/cli.md`` (a test keeps the two equal)."""
    rows = ["| vLLM flag | accepted when | why not |", "| --- | --- | --- |"]
    for e in UNSUPPORTED:
        flags = ", ".join(f"`{f}`" for f in e.flags)
        if ANY_VALUE in e.accepted:
            ok = "always (no effect here)"
        else:
            ok = ", ".join(f"`{a}`" for a in e.accepted) or "never"
        rows.append(f"| {flags}{' (serve)' if e.serve_only else ''} | {ok} | {e.reason} |")
    return "\n".join(rows)


def check_no_lora(lora_request: object, what: str) -> None:
    """vLLM's ``lora_request`` keyword on a method that takes no adapter (``what``: pooling, beam search): None is
    accepted (the base model, what a vLLM script without adapters passes); an adapter is refused, naming the keyword."""
    if lora_request is not None:
        raise ValidationError(f"lora_request: {what} takes no LoRA adapter in pagoda; pass lora_request=None (the "
                              f"base model).", "lora_request")
