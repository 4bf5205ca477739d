"""Which engines tensor and pipeline parallelism cover, checked at start-up (before any process starts), and the
sharded model's construction.

Covered by tensor parallelism: the Llama family of :mod:`pagoda.models.llama` (Llama, Mistral, Qwen2, Qwen3,
Phi-3), the MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE) and Gemma 2/3, unquantized or GPTQ / AWQ /
compressed-tensors / FP8 (GGUF not), generating (not pooling), with the mp or the ray executor. Pipeline
parallelism (alone or times tensor parallelism) covers the dense Llama family, unquantized, without CUDA graphs or
async scheduling. Everything else with ``--tensor-parallel-size`` or ``--pipeline-parallel-size`` above 1 is a
start-up error naming what is not covered.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pagoda.config import DISTRIBUTED_EXECUTOR_BACKENDS
from pagoda.quantization.base import QuantizationConfig

TP_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                    "Phi3ForCausalLM", "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM",
                    "Gemma2ForCausalLM", "Gemma3ForCausalLM")
"""Architectures whose layers shard over ranks."""

PP_ARCHITECTURES = TP_ARCHITECTURES[:5]
"""Architectures split into pipeline stages: the dense Llama family (MoE and Gemma models: not yet)."""


_SPLIT_SIZES = ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size")


def check_tensor_parallel(tp: int, backend: str | None, *, arch: str, model_impl: str, quantized: bool,
                          pooling: bool, device: torch.device, hf_config: dict[str, Any],
                          kv_offloading: bool, async_scheduling: bool | None, speculative: bool = False,
                          quant_config: QuantizationConfig | None = None, pp: int = 1) -> None:
    """Raise ``ValueError`` naming the flag when ``--tensor-parallel-size tp`` (x ``--pipeline-parallel-size pp``)
    cannot run this engine."""
    if tp < 1:
        raise ValueError(f"--tensor-parallel-size must be at least 1, got {tp}.")
    check_executor_backend(backend)
    if backend == "ray":
        check_ray_installed()
    if tp * pp == 1:
        return
    flag = " ".join(([f"--tensor-parallel-size {tp}"] if tp > 1 else [])
                    + ([f"--pipeline-parallel-size {pp}"] if pp > 1 else []))
    if model_impl != "pagoda" or arch not in TP_ARCHITECTURES:
        raise ValueError(f"{flag}: {arch} ({model_impl} implementation) has no tensor-parallel layers; tensor "
                         f"parallelism covers {', '.join(TP_ARCHITECTURES)}. Drop {flag}.")
    if quantized and quant_config is None:
        raise ValueError(f"{flag}: quantized checkpoints need their quantization config to shard; drop "
                         f"{flag}.")
    if quant_config is not None and tp > 1:
        _split_units(quant_config)  # a format that does not shard at all is named before any size check
    if pooling:
        raise ValueError(f"{flag}: pooling models (--runner pooling) run on one device; drop {flag}.")
    if speculative:
        raise ValueError(f"{flag}: speculative decoding (--speculative-config) runs on one device for now; drop one "
                         f"of the two.")
    if kv_offloading:
        raise ValueError(f"{flag}: the host KV tier (--kv-offloading-size) is not sharded yet; drop one of the two.")
    if pp > 1:
        check_pipeline_parallel(flag, pp, arch=arch, quantized=quantized, async_scheduling=async_scheduling,
                                hf_config=hf_config)
    if device.type == "cuda" and backend != "ray" and tp * pp > torch.cuda.device_count():
        raise ValueError(f"{flag}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                         f"(CUDA_VISIBLE_DEVICES); one rank needs one device.")
    from pagoda.distributed.parallel_state import TPGroup
    from pagoda.layers.parallel_linear import attention_heads

    heads = int(hf_config["num_attention_heads"])
    attention_heads(heads, int(hf_config.get("num_key_value_heads") or heads), TPGroup(0, tp))
    for key in _SPLIT_SIZES:  # MLPs, experts and shared experts split along their intermediate dim
        size = int(hf_config.get(key) or 0)
        if size % tp:
            raise ValueError(f"{flag} does not divide the model's {key} ({size}).")
    if quant_config is not None:
        check_quantized_split(tp, quant_config, hf_config)


def check_pipeline_parallel(flag: str, pp: int, *, arch: str, quantized: bool, async_scheduling: bool | None,
                            hf_config: dict[str, Any]) -> None:
    """What ``--pipeline-parallel-size pp`` above 1 adds to the tensor-parallel checks (module docstring)."""
    if arch not in PP_ARCHITECTURES:
        raise ValueError(f"{flag}: {arch} has no pipeline stages yet; pipeline parallelism covers "
                         f"{', '.join(PP_ARCHITECTURES)}. Use --pipeline-parallel-size 1.")
    if quantized:
        raise ValueError(f"{flag}: quantized checkpoints are not split into pipeline stages yet; use "
                         f"--pipeline-parallel-size 1.")
    if async_scheduling:
        raise ValueError(f"{flag}: --async-scheduling is not implemented across pipeline stages; use "
                         f"--no-async-scheduling.")
    from pagoda.distributed.pipeline import layer_partition

    layer_partition(int(hf_config["num_hidden_layers"]), pp)  # raises naming the flag or the variable


def _split_units(qc: QuantizationConfig) -> tuple[int, int, str]:
    """``(input unit, output unit, what)``: each rank's share of a row-parallel layer's input must be a multiple of
    the first (quantization groups, packed words), of a column-parallel layer's output of the second."""
    from pagoda.quantization.awq import AWQConfig
    from pagoda.quantization.compressed_tensors import CompressedTensorsConfig
    from pagoda.quantization.fp8 import Fp8Config
    from pagoda.quantization.gptq import GPTQConfig

    if isinstance(qc, GPTQConfig | AWQConfig):
        pack = 32 // getattr(qc, "bits", 4)
        grouped = qc.group_size > 0 and not getattr(qc, "desc_act", False)  # act-order keeps every group's scales
        return math.lcm(pack, qc.group_size if grouped else 1), pack, f"{qc.name} group_size {qc.group_size}"
    if isinstance(qc, Fp8Config):
        bn, bk = qc.block or (1, 1)
        return bk, bn, f"fp8 weight_block_size {[bn, bk]}"
    if isinstance(qc, CompressedTensorsConfig):
        unit_in, unit_out = 1, 1
        for sc in qc.schemes:
            w = sc.weights
            if sc.format == "pack-quantized":
                pf = 32 // w.num_bits
                group = w.group_size if w.strategy == "group" and w.actorder != "group" else 1
                unit_in, unit_out = math.lcm(unit_in, pf, group or 1), math.lcm(unit_out, pf)
        return unit_in, unit_out, "compressed-tensors group_size / packing"
    raise ValueError(f"--tensor-parallel-size: {qc.name} checkpoints do not split over ranks yet; use "
                     f"--tensor-parallel-size 1.")


def check_quantized_split(tp: int, qc: QuantizationConfig, hf_config: dict[str, Any]) -> None:
    """Raise naming the flag when a rank's share of a quantized layer would cut a quantization group or a packed
    word (row-parallel inputs: ``o_proj``, ``down_proj``; column-parallel outputs: q/k/v heads, gate/up)."""
    flag = f"--tensor-parallel-size {tp}"
    unit_in, unit_out, what = _split_units(qc)
    heads = int(hf_config["num_attention_heads"])
    kv = int(hf_config.get("num_key_value_heads") or heads)
    head_dim = int(hf_config.get("head_dim") or int(hf_config["hidden_size"]) // heads)
    inter = int(hf_config.get("intermediate_size") or 0)
    ins = {"o_proj input (heads x head_dim)": heads * head_dim // tp,
           "down_proj input (intermediate_size)": inter // tp}
    outs = {"q_proj output": heads * head_dim // tp, "k/v_proj output": max(kv // tp, 1) * head_dim,
            "gate/up_proj output": inter // tp}
    for key in ("moe_intermediate_size", "shared_expert_intermediate_size"):  # MoE experts, shared expert
        size = int(hf_config.get(key) or 0)
        ins[f"down_proj input ({key})"] = size // tp
        outs[f"gate/up_proj output ({key})"] = size // tp
    for checks, unit in ((ins, unit_in), (outs, unit_out)):
        for name, size in checks.items():
            if size and size % unit:
                raise ValueError(f"{flag}: each rank's {name} is {size}, not a multiple of {unit} ({what}: a "
                                 f"quantization group or packed word would be cut). Use a smaller "
                                 f"--tensor-parallel-size.")


def check_executor_backend(backend: str | None) -> None:
    """Raise naming the flag unless ``backend`` is one of :data:`DISTRIBUTED_EXECUTOR_BACKENDS` (or None: mp).
    ``LLM(distributed_executor_backend=...)`` passes the value unparsed, so the CLI's choices do not guard it; an
    unknown value (vLLM's ``uni`` / ``external_launcher`` included) would otherwise run the mp executor silently."""
    if backend is not None and backend not in DISTRIBUTED_EXECUTOR_BACKENDS:
        raise ValueError(f"--distributed-executor-backend must be one of {', '.join(DISTRIBUTED_EXECUTOR_BACKENDS)} "
                         f"(or left out: mp), got {backend!r}.")


def check_ray_installed() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError("--distributed-executor-backend ray needs the ray package (pip install 'pagoda[ray]').") \
            from None


def build_tp_model(hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                   quant_config: QuantizationConfig | None, tp: Any, pp: Any = None) -> Any:
    """This rank's shard of the model (``check_tensor_parallel`` has passed); ``pp``: its pipeline stage."""
    from pagoda.models.registry import model_class, native_architectures

    cls = model_class(arch)
    if f"{cls.__module__}:{cls.__name__}" != native_architectures().get(arch):
        # a plugin replaced the class: it did not declare sharded layers
        raise ValueError(f"--tensor-parallel-size {tp.world_size}: {arch} is served by {cls.__name__}, which has no "
                         f"tensor-parallel layers.")
    extra = {"pp": pp} if pp is not None else {}  # only the dense Llama family takes a stage (PP_ARCHITECTURES)
    return cls(hf_config, arch, dtype, quant_config, tp=tp, **extra)
