"""Which engines tensor parallelism covers, checked at start-up (before any process starts), and the
sharded model's construction.

Covered: the Llama family of :mod:`pagoda.models.llama` (Llama, Mistral, Qwen2, Qwen3, Phi-3), the MoE models
(Mixtral, Qwen2-MoE, Qwen3-MoE) and Gemma 2/3, unquantized or GPTQ / AWQ / compressed-tensors / FP8 (GGUF
not), generating (not pooling), with the multiprocessing executor. Everything else with
``--tensor-parallel-size`` above 1 is a start-up error naming what is not covered.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pagoda.quantization.base import QuantizationConfig

TP_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                    "Phi3ForCausalLM", "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM",
                    "Gemma2ForCausalLM", "Gemma3ForCausalLM")
"""Architectures whose layers shard over ranks."""

DISTRIBUTED_EXECUTOR_BACKENDS = ("mp", "ray")

_SPLIT_SIZES = ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size")


def check_tensor_parallel(tp: int, backend: str | None, *, arch: str, model_impl: str, quantized: bool,
                          pooling: bool, device: torch.device, hf_config: dict[str, Any],
                          kv_offloading: bool, async_scheduling: bool | None, speculative: bool = False,
                          quant_config: QuantizationConfig | None = None) -> None:
    """Raise ``ValueError`` naming the flag when ``--tensor-parallel-size tp`` cannot run this engine."""
    flag = f"--tensor-parallel-size {tp}"
    if backend == "ray":
        raise ValueError("--distributed-executor-backend ray is not supported yet; use mp (the default: one process "
                         "per rank on this machine).")
    if tp == 1:
        return
    if tp < 1:
        raise ValueError(f"--tensor-parallel-size must be at least 1, got {tp}.")
    if model_impl != "pagoda" or arch not in TP_ARCHITECTURES:
        raise ValueError(f"{flag}: {arch} ({model_impl} implementation) has no tensor-parallel layers; tensor "
                         f"parallelism covers {', '.join(TP_ARCHITECTURES)}. Use --tensor-parallel-size 1.")
    if quantized and quant_config is None:
        raise ValueError(f"{flag}: quantized checkpoints need their quantization config to shard; use "
                         f"--tensor-parallel-size 1.")
    if pooling:
        raise ValueError(f"{flag}: pooling models (--runner pooling) run on one device; use --tensor-parallel-size 1.")
    if speculative:
        raise ValueError(f"{flag}: speculative decoding (--speculative-config) runs on one device for now; drop one "
                         f"of the two.")
    if kv_offloading:
        raise ValueError(f"{flag}: the host KV tier (--kv-offloading-size) is not sharded yet; drop one of the two.")
    if device.type == "cuda" and tp > torch.cuda.device_count():
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
    for checks, unit in ((ins, unit_in), (outs, unit_out)):
        for name, size in checks.items():
            if size and size % unit:
                raise ValueError(f"{flag}: each rank's {name} is {size}, not a multiple of {unit} ({what}: a "
                                 f"quantization group or packed word would be cut). Use a smaller "
                                 f"--tensor-parallel-size.")


def build_tp_model(hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                   quant_config: QuantizationConfig | None, tp: Any) -> Any:
    """This rank's shard of the model (``check_tensor_parallel`` has passed)."""
    from pagoda.models.registry import model_class, native_architectures

    cls = model_class(arch)
    if f"{cls.__module__}:{cls.__name__}" != native_architectures().get(arch):
        # a plugin replaced the class: it did not declare sharded layers
        raise ValueError(f"--tensor-parallel-size {tp.world_size}: {arch} is served by {cls.__name__}, which has no "
                         f"tensor-parallel layers.")
    return cls(hf_config, arch, dtype, quant_config, tp=tp)
