"""Every ``PAGODA_*`` environment variable, read here and nowhere else.

Each variable has one typed accessor that reads the environment when called (so a test or a
wrapper may set it late), and one row in :data:`ENV_VARS`, from which the table in
``docs/cli.md`` is written. Code elsewhere calls the accessors; a test checks that no other
module reads a ``PAGODA_*`` variable itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    """The value used when the variable is unset or empty, as it would be written."""
    doc: str
    test_only: bool = False


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("PAGODA_CACHE", "~/.cache/pagoda",
           "root of pagoda's cache: the embedded default model, converted GGUF files, compiled CPU kernels, the "
           "tokenizer class chosen per model folder and, per engine config, the Triton kernel variants its start-up "
           "compiles and its activation peak (`jit_variants/`)"),
    EnvVar("PAGODA_API_KEY", "",
           "API key of `pagoda serve` when `--api-key` is not given (and the bearer token `pagoda bench serve` "
           "sends when neither `--api-key` nor `OPENAI_API_KEY` is set)"),
    EnvVar("VLLM_API_KEY", "", "vLLM's name for `PAGODA_API_KEY`, read when that is unset (`pagoda serve` and "
           "`pagoda router` then need the key, as vLLM's server does)"),
    EnvVar("PAGODA_HUB_TIMEOUT", "10", "seconds the Hugging Face Hub probe may take before a hub id is "
           "treated as unreachable"),
    EnvVar("PAGODA_ENGINE_STUCK_TIMEOUT_S", "60", "default of `--engine-stuck-timeout`"),
    EnvVar("PAGODA_DIST_TIMEOUT_S", "120", "seconds a tensor-parallel collective (and the ranks' start-up "
           "rendezvous, and the engine core's send of a step to a rank) may wait for the other ranks before the "
           "engine fails"),
    EnvVar("PAGODA_DP_RANK", "0", "set by `pagoda serve --data-parallel-size N` in replica i's processes (`i`), not "
           "by hand: replica i seeds its unseeded sampling with `--seed` + i, so the replicas draw differently"),
    EnvVar("PAGODA_LOG_STATS_INTERVAL", "10", "seconds between the server's periodic stats log lines"),
    EnvVar("PAGODA_CHUNK_GRAPHS", "1", "`0` turns off the CUDA graphs of single-request prefill chunks only "
           "(an A/B switch for benchmarks; `--enforce-eager` turns off every graph)"),
    EnvVar("PAGODA_PRELAUNCH_CORE", "1", "`0`: `pagoda serve` spawns its engine core after its own imports and "
           "flag parsing, not before them (an A/B switch for the start-up time)"),
    EnvVar("PAGODA_MIXED_GRAPHS", "1", "`0` turns off the CUDA graphs of mixed steps only (several requests' "
           "prompt chunks, with decodes; an A/B switch for benchmarks)"),
    EnvVar("PAGODA_CPU_AMX", "1", "`0`: the CPU's 4-bit linears never use AMX tiles (by default, where the CPU has "
           "them, calls of two rows and more do: benchmarks/RESULTS.md session 34)"),
    EnvVar("PAGODA_PDL", "1", "`0`: the decode step's Triton kernels launch plainly, not with programmatic dependent "
           "launch (Hopper and later; an A/B switch for benchmarks)"),
    EnvVar("PAGODA_STEP_TIMELINE", "", "file the engine-core process of `pagoda serve` appends its step "
           "timeline to (JSON lines, one per step; see `--step-timeline` of `pagoda bench throughput`); unset: "
           "none is recorded"),
    EnvVar("PAGODA_REQUEST_TRACE", "", "file the API server appends one JSON line to per finished engine request: "
           "its arrival after tokenization, its arrival at the engine core, first scheduling, first and last token "
           "(wall-clock seconds; `benchmarks/ttft_breakdown.py` joins it with `pagoda bench serve`'s result); "
           "unset: none is written"),
    EnvVar("PAGODA_GC_FREEZE", "1", "`0`: the engine core and the API server do not freeze their start-up heap out of "
           "Python's garbage collection when they are ready (an A/B switch; `pagoda/engine/gc_policy.py`)"),
    EnvVar("PAGODA_LAUNCH_PACING", "1", "`0`: a server's engine core launches each step as soon as it can, not as "
           "late as the step in flight allows (so that new requests join the next step; an A/B switch; "
           "`pagoda/engine/launch_pacing.py`)"),
    EnvVar("PAGODA_LOG_JIT_COMPILES", "0", "`1` logs every Triton kernel compiled in the engine's process (name, "
           "constexprs, seconds): finds compiles that land in a first request or a timed run"),
    EnvVar("PAGODA_JIT_PRECOMPILE", "1", "`0`: Triton kernels compile one by one at their first launch during "
           "start-up, not side by side before the CUDA-graph captures (an A/B switch for the start-up time)"),
    EnvVar("PAGODA_ALLOW_RUNTIME_LORA_UPDATING", "0", "`1`: `pagoda serve --enable-lora` serves POST "
           "/v1/load_lora_adapter and /v1/unload_lora_adapter (LoRA adapters loaded and unloaded while it runs; "
           "unset: 404). Only for trusted clients: a load reads any folder the server can read"),
    EnvVar("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0", "vLLM's name for `PAGODA_ALLOW_RUNTIME_LORA_UPDATING`, read "
           "when that is unset"),
    EnvVar("PAGODA_ENABLE_RESPONSES_API_STORE", "0", "`1`: `pagoda serve` keeps /v1/responses answers in memory "
           "(`store`, the default when on, as OpenAI's): GET and DELETE /v1/responses/{id}, `previous_response_id` "
           "and `background` work; off, a request asking for any of them is a 400. Needs `--api-server-count 1`"),
    EnvVar("VLLM_ENABLE_RESPONSES_API_STORE", "0", "vLLM's name for `PAGODA_ENABLE_RESPONSES_API_STORE`, read "
           "when that is unset"),
    EnvVar("PAGODA_RESPONSES_API_STORE_MAX_ENTRIES", "10000", "stored /v1/responses answers that stay retrievable "
           "by id (the oldest finished one is dropped first; a later turn still continues a dropped one's "
           "conversation)"),
    EnvVar("VLLM_BATCH_INVARIANT", "0", "`1` turns on `--deterministic` (vLLM's batch-invariant switch)"),
    EnvVar("VLLM_PP_LAYER_PARTITION", "", "decoder layers per pipeline stage, comma-separated (e.g. `5,3`); "
           "unset: an even split. Read by the engine core only"),
    EnvVar("RAY_ADDRESS", "", "Ray's own: the cluster `--distributed-executor-backend ray` joins (unset: a "
           "running local cluster, else a new one)"),
    EnvVar("PAGODA_RELIABILITY_FULL", "0", "tests: `1` runs the reliability battery at full length", True),
    EnvVar("PAGODA_RELIABILITY_REPORT", "", "tests: file the reliability battery appends its figures to "
           "(JSON lines)", True),
    EnvVar("PAGODA_RELIABILITY_SERVER_ARGS", "", "tests: extra `pagoda serve` flags for every server of the "
           "reliability battery", True),
)
_BY_NAME = {v.name: v for v in ENV_VARS}


def _raw(name: str) -> str:
    """The variable's value, or its documented default when unset or empty."""
    return os.environ.get(name) or _BY_NAME[name].default


def _float(name: str) -> float:
    """A positive number of seconds (every float variable here is a duration or an interval)."""
    text = _raw(name)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"environment variable {name} must be a positive number of seconds, got {text!r}")
    return value


_TRUE = frozenset({"true", "yes", "on"})
_FALSE = frozenset({"false", "no", "off"})


def _switch(name: str) -> bool:
    """An on/off variable: an integer as vLLM reads its switches (``bool(int(value))``: 0 off, any other on), or
    true/false, yes/no, on/off in any case; anything else is an error naming the variable (so ``false`` never reads
    as on)."""
    text = _raw(name).strip()
    try:
        return bool(int(text))
    except ValueError:
        pass
    if text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    raise ValueError(f"environment variable {name} must be 0 or 1 (or true / false), got {text!r}")


def cache_root() -> str:
    """``PAGODA_CACHE``: root folder of pagoda's cache (not yet expanded)."""
    return _raw("PAGODA_CACHE")


def server_info_vars() -> dict[str, str]:
    """The ``PAGODA_*`` variables set in the environment, for GET /server_info; secrets (a name holding
    KEY) left out."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("PAGODA_") and "KEY" not in k}


def api_key() -> str | None:
    """``PAGODA_API_KEY`` (else vLLM's ``VLLM_API_KEY``): the server's API key when ``--api-key`` is not given; None
    when both are unset."""
    return os.environ.get("PAGODA_API_KEY") or os.environ.get("VLLM_API_KEY") or None


def hub_timeout_s() -> float:
    """``PAGODA_HUB_TIMEOUT``: deadline in seconds of the Hugging Face Hub probe."""
    return _float("PAGODA_HUB_TIMEOUT")


def engine_stuck_timeout_s() -> float:
    """``PAGODA_ENGINE_STUCK_TIMEOUT_S``: default of ``--engine-stuck-timeout`` (seconds)."""
    return _float("PAGODA_ENGINE_STUCK_TIMEOUT_S")


def dist_timeout_s() -> float:
    """``PAGODA_DIST_TIMEOUT_S``: timeout of tensor-parallel collectives and start-up, in seconds."""
    return _float("PAGODA_DIST_TIMEOUT_S")


def dp_rank() -> int:
    """``PAGODA_DP_RANK``: this process's data-parallel replica (0 without data parallelism)."""
    text = _raw("PAGODA_DP_RANK").strip()
    if not text.isdigit():
        raise ValueError(f"environment variable PAGODA_DP_RANK must be a replica index (0, 1, ...), got {text!r}")
    return int(text)


def log_stats_interval_s() -> float:
    """``PAGODA_LOG_STATS_INTERVAL``: seconds between periodic stats log lines."""
    return _float("PAGODA_LOG_STATS_INTERVAL")


def chunk_graphs_enabled() -> bool:
    """``PAGODA_CHUNK_GRAPHS``: False when set to ``0`` (prefill-chunk CUDA graphs off)."""
    return _switch("PAGODA_CHUNK_GRAPHS")


def prelaunch_core_enabled() -> bool:
    """``PAGODA_PRELAUNCH_CORE``: False when set to ``0`` (``pagoda serve`` spawns its core after its imports)."""
    return _switch("PAGODA_PRELAUNCH_CORE")


def mixed_graphs_enabled() -> bool:
    """``PAGODA_MIXED_GRAPHS``: False when set to ``0`` (mixed-step CUDA graphs off)."""
    return _switch("PAGODA_MIXED_GRAPHS")


def cpu_amx_enabled() -> bool:
    """``PAGODA_CPU_AMX``: False when set to ``0`` (the 4-bit CPU kernel's AMX build is not used)."""
    return _switch("PAGODA_CPU_AMX")


def pdl_enabled() -> bool:
    """``PAGODA_PDL``: False when set to ``0`` (programmatic dependent launch off)."""
    return _switch("PAGODA_PDL")


def step_timeline_path() -> str | None:
    """``PAGODA_STEP_TIMELINE``: the engine-core process's step-timeline file, or None (not recorded)."""
    return os.environ.get("PAGODA_STEP_TIMELINE") or None


def request_trace_path() -> str | None:
    """``PAGODA_REQUEST_TRACE``: the API server's per-request timing file, or None (not written)."""
    return os.environ.get("PAGODA_REQUEST_TRACE") or None


def gc_freeze_enabled() -> bool:
    """``PAGODA_GC_FREEZE``: False only when set to ``0``."""
    return _switch("PAGODA_GC_FREEZE")


def launch_pacing_enabled() -> bool:
    """``PAGODA_LAUNCH_PACING``: False only when set to ``0``."""
    return _switch("PAGODA_LAUNCH_PACING")


def log_jit_compiles() -> bool:
    """``PAGODA_LOG_JIT_COMPILES``: True when set to a value other than ``0``."""
    return _switch("PAGODA_LOG_JIT_COMPILES")


def jit_precompile_enabled() -> bool:
    """``PAGODA_JIT_PRECOMPILE``: False only when set to ``0``."""
    return _switch("PAGODA_JIT_PRECOMPILE")


def allow_runtime_lora_updating() -> bool:
    """``PAGODA_ALLOW_RUNTIME_LORA_UPDATING`` (else vLLM's ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): True when on (the
    server's /v1/load_lora_adapter and /v1/unload_lora_adapter routes exist)."""
    if os.environ.get("PAGODA_ALLOW_RUNTIME_LORA_UPDATING"):
        return _switch("PAGODA_ALLOW_RUNTIME_LORA_UPDATING")
    return _switch("VLLM_ALLOW_RUNTIME_LORA_UPDATING")


def responses_api_store() -> bool:
    """``PAGODA_ENABLE_RESPONSES_API_STORE`` (else vLLM's ``VLLM_ENABLE_RESPONSES_API_STORE``): True when the
    server keeps /v1/responses answers (``store``, ``previous_response_id``, ``background``, GET by id)."""
    if os.environ.get("PAGODA_ENABLE_RESPONSES_API_STORE"):
        return _switch("PAGODA_ENABLE_RESPONSES_API_STORE")
    return _switch("VLLM_ENABLE_RESPONSES_API_STORE")


def responses_api_store_max_entries() -> int:
    """``PAGODA_RESPONSES_API_STORE_MAX_ENTRIES``: stored responses that stay retrievable by id (a positive
    integer)."""
    text = _raw("PAGODA_RESPONSES_API_STORE_MAX_ENTRIES").strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"environment variable PAGODA_RESPONSES_API_STORE_MAX_ENTRIES must be a positive integer, "
                         f"got {text!r}")
    return int(text)


def batch_invariant() -> bool:
    """``VLLM_BATCH_INVARIANT``: True when set to a value other than ``0`` (turns on ``--deterministic``)."""
    return _switch("VLLM_BATCH_INVARIANT")


def reliability_full() -> bool:
    """``PAGODA_RELIABILITY_FULL`` (tests): run the reliability battery at full length."""
    return _switch("PAGODA_RELIABILITY_FULL")


def reliability_report() -> str | None:
    """``PAGODA_RELIABILITY_REPORT`` (tests): JSON-lines file for the battery's figures, or None."""
    return os.environ.get("PAGODA_RELIABILITY_REPORT") or None


def reliability_server_args() -> str:
    """``PAGODA_RELIABILITY_SERVER_ARGS`` (tests): extra serve flags, shell-quoted."""
    return _raw("PAGODA_RELIABILITY_SERVER_ARGS")


def pp_layer_partition() -> str | None:
    """vLLM's ``VLLM_PP_LAYER_PARTITION``: decoder layers per pipeline stage, comma-separated (e.g. ``"5,3"``);
    None when unset (an even split)."""
    return os.environ.get("VLLM_PP_LAYER_PARTITION") or None


def ray_address() -> str | None:
    """Ray's own ``RAY_ADDRESS``: the cluster ``--distributed-executor-backend ray`` joins; None when unset."""
    return os.environ.get("RAY_ADDRESS") or None


def triton_interpreter() -> bool:
    """Triton's own ``TRITON_INTERPRET``: its kernels run in its interpreter (on CPU tensors) when set to other than
    ``0``, as Triton reads it."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check() -> None:
    """Read every typed variable of :data:`ENV_VARS` once, so a malformed value (``VLLM_BATCH_INVARIANT=false`` is
    off, ``=maybe`` an error) stops start-up with its name rather than failing, or reading wrong, mid-run."""
    for read in (hub_timeout_s, engine_stuck_timeout_s, dist_timeout_s, dp_rank, log_stats_interval_s,
                 chunk_graphs_enabled, prelaunch_core_enabled, mixed_graphs_enabled, cpu_amx_enabled, pdl_enabled,
                 gc_freeze_enabled, launch_pacing_enabled, log_jit_compiles, jit_precompile_enabled, batch_invariant,
                 allow_runtime_lora_updating):
        read()


def kubernetes_api_server() -> str | None:
    """The in-cluster API server (``KUBERNETES_SERVICE_HOST``/``_PORT``, set in every pod), or None outside one."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def markdown_table() -> str:
    """The table of ``docs/cli.md`` (a test keeps the two equal)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for v in ENV_VARS:
        rows.append(f"| `{v.name}` | {f'`{v.default}`' if v.default else '—'} | {v.doc} |")
    return "\n".join(rows)
