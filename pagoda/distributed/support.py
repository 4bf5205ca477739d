"""Which engines tensor and pipeline parallelism cover, checked at start-up (before any process starts), and the
sharded model's construction.

Covered: the dense Llama family of :mod:`pagoda.models.llama` (Llama, Mistral, Qwen2, Qwen3, Phi-3),
unquantized, generating (not pooling), with the mp or the ray executor. Everything else with
``--tensor-parallel-size`` or ``--pipeline-parallel-size`` above 1 is a start-up error naming what is not covered.
"""

from __future__ import annotations

from typing import Any

import torch

from pagoda.quantization.base import QuantizationConfig

TP_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                    "Phi3ForCausalLM")
"""Architectures whose layers shard over ranks."""

DISTRIBUTED_EXECUTOR_BACKENDS = ("mp", "ray")


def check_tensor_parallel(tp: int, backend: str | None, *, arch: str, model_impl: str, quantized: bool,
                          pooling: bool, device: torch.device, hf_config: dict[str, Any],
                          kv_offloading: bool, async_scheduling: bool | None, speculative: bool = False,
                          pp: int = 1) -> None:
    """Raise ``ValueError`` naming the flag when ``--tensor-parallel-size tp`` (x ``--pipeline-parallel-size pp``)
    cannot run this engine."""
    if tp < 1:
        raise ValueError(f"--tensor-parallel-size must be at least 1, got {tp}.")
    if backend == "ray":
        check_ray_installed()
    if tp * pp == 1:
        return
    flag = " ".join(([f"--tensor-parallel-size {tp}"] if tp > 1 else [])
                    + ([f"--pipeline-parallel-size {pp}"] if pp > 1 else []))
    if model_impl != "pagoda" or arch not in TP_ARCHITECTURES:
        raise ValueError(f"{flag}: {arch} ({model_impl} implementation) has no tensor-parallel layers; tensor "
                         f"parallelism covers {', '.join(TP_ARCHITECTURES)}. Use --tensor-parallel-size 1.")
    if quantized:
        raise ValueError(f"{flag}: quantized checkpoints do not shard yet (their packed weights and scales carry no "
                         f"tensor-parallel slicing); use --tensor-parallel-size 1.")
    if pooling:
        raise ValueError(f"{flag}: pooling models (--runner pooling) run on one device; use --tensor-parallel-size 1.")
    if speculative:
        raise ValueError(f"{flag}: speculative decoding (--speculative-config) runs on one device for now; drop one "
                         f"of the two.")
    if kv_offloading:
        raise ValueError(f"{flag}: the host KV tier (--kv-offloading-size) is not sharded yet; drop one of the two.")
    if async_scheduling:
        raise ValueError(f"{flag}: --async-scheduling needs the sampled tokens on every rank, which is not "
                         f"implemented; use --no-async-scheduling.")
    if device.type == "cuda" and backend != "ray" and tp * pp > torch.cuda.device_count():
        raise ValueError(f"{flag}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                         f"(CUDA_VISIBLE_DEVICES); one rank needs one device.")
    if pp > 1:
        from pagoda.distributed.pipeline import layer_partition

        layer_partition(int(hf_config["num_hidden_layers"]), pp)  # raises naming the flag or the variable
    from pagoda.distributed.parallel_state import TPGroup
    from pagoda.layers.parallel_linear import attention_heads

    heads = int(hf_config["num_attention_heads"])
    attention_heads(heads, int(hf_config.get("num_key_value_heads") or heads), TPGroup(0, tp))
    inter = int(hf_config["intermediate_size"])
    if inter % tp:
        raise ValueError(f"{flag} does not divide the model's intermediate_size ({inter}).")


def check_ray_installed() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError("--distributed-executor-backend ray needs the ray package (pip install 'pagoda[ray]').") \
            from None


def build_tp_model(hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                   quant_config: QuantizationConfig | None, tp: Any, pp: Any = None) -> Any:
    """This rank's shard of the model (``check_tensor_parallel`` has passed); ``pp``: its pipeline stage."""
    from pagoda.models.llama import LlamaForCausalLM
    from pagoda.models.registry import model_class

    cls = model_class(arch)
    if cls is not LlamaForCausalLM:  # a plugin replaced the class: it did not declare sharded layers
        raise ValueError(f"--tensor-parallel-size {tp.world_size}: {arch} is served by {cls.__name__}, which has no "
                         f"tensor-parallel layers.")
    return cls(hf_config, arch, dtype, quant_config, tp=tp, pp=pp)
