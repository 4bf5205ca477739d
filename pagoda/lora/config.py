"""The engine's LoRA limits (vLLM's ``LoRAConfig``) and the start-up checks of ``--enable-lora``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays unimported until an engine is built (the CLI checks flags before: test_prelaunch)
    import torch

LORA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
"""Architectures whose adapters pagoda applies: the native Llama family with q/k/v and gate/up fused in
pagoda (pagoda/models/llama.py)."""

LORA_DTYPES = ("auto", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class LoRAConfig:
    """``max_loras``: adapters one step may use (device slots); ``max_lora_rank``: the largest rank an adapter may
    have (slots are padded to it); ``max_cpu_loras``: adapters kept loaded in host memory (least recently used
    dropped first, read again from their folder when a request needs them); ``dtype``: the adapters' dtype."""

    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int
    dtype: torch.dtype


def lora_config(enable_lora: bool, max_loras: int, max_lora_rank: int, max_cpu_loras: int | None, lora_dtype: str,
                model_dtype: torch.dtype, device_type: str = "cuda") -> LoRAConfig | None:
    """The checked :class:`LoRAConfig` (None without ``enable_lora``). A LoRA flag given without ``--enable-lora``
    is an error naming it (it would do nothing). ``lora_dtype`` auto: the model's dtype (vLLM's), but float32 on the
    CPU for a 16-bit model: the adapters' small matmuls ran 1.4x faster there in float32 than in bf16, with the same
    greedy tokens (benchmarks/RESULTS.md, session 44)."""
    if not enable_lora:
        flags = (("--max-loras", max_loras, 1), ("--max-lora-rank", max_lora_rank, 16),
                 ("--max-cpu-loras", max_cpu_loras, None), ("--lora-dtype", lora_dtype, "auto"))
        given = [flag for flag, value, default in flags if value != default]
        if given:
            raise ValueError(f"{', '.join(given)} configure LoRA adapters: add --enable-lora (LLM(enable_lora=True)), "
                             f"or drop {'them' if len(given) > 1 else 'it'}.")
        return None
    if max_loras < 1:
        raise ValueError(f"max_loras (--max-loras) must be at least 1, got {max_loras}.")
    if max_lora_rank < 1:
        raise ValueError(f"max_lora_rank (--max-lora-rank) must be at least 1, got {max_lora_rank}.")
    cpu = max_loras if max_cpu_loras is None else max_cpu_loras
    if cpu < max_loras:
        raise ValueError(f"max_cpu_loras (--max-cpu-loras) {cpu} must be at least max_loras (--max-loras) "
                         f"{max_loras}.")
    if lora_dtype not in LORA_DTYPES:
        raise ValueError(f"lora_dtype (--lora-dtype) must be one of {LORA_DTYPES}, got {lora_dtype!r}.")
    import torch

    if lora_dtype != "auto":
        dtype = getattr(torch, lora_dtype)
    else:
        dtype = torch.float32 if device_type == "cpu" and model_dtype.itemsize < 4 else model_dtype
    return LoRAConfig(max_loras, max_lora_rank, cpu, dtype)


def check_lora_supported(arch: str, model_impl: str, *, pooling: bool, tp: int, pp: int, speculative: bool,
                         deterministic: bool) -> None:
    """Start-up refusals of ``--enable-lora``: what its adapters cannot be applied to, named with the blocker."""
    def refuse(blocker: str, fix: str) -> None:
        raise ValueError(f"--enable-lora: {blocker}; {fix}.")

    if pooling:
        refuse("pooling models (--runner pooling) take no adapters", "drop --enable-lora")
    if model_impl != "pagoda" or arch not in LORA_ARCHITECTURES:
        refuse(f"adapters apply to pagoda's native {', '.join(LORA_ARCHITECTURES)}; this model is {arch} "
               f"({model_impl} implementation)", "drop --enable-lora or serve the adapter merged into the weights")
    if tp > 1 or pp > 1:
        refuse(f"adapters are not split over ranks (--tensor-parallel-size {tp}, --pipeline-parallel-size {pp})",
               "use one device")
    if speculative:
        refuse("speculative decoding (--speculative-config) does not apply adapters to its proposals",
               "drop one of the two")
    if deterministic:
        refuse("the adapters' per-request matmuls are not batch-invariant (--deterministic)", "drop one of the two")
