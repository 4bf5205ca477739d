"""Build a model on its device in its dtype and fill it from safetensors or dummy values."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pagoda.config import EngineConfig
from pagoda.layers.linear import Linear, process_weights_after_loading
from pagoda.models.registry import build_model
from pagoda.models.weight_loading import check_scale_values
from pagoda.quantization import resolve_quantization
from pagoda.quantization.int_weight import IntWeight

logger = logging.getLogger("pagoda")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of ``folder``: those its ``model.safetensors.index.json`` names, else every
    ``*.safetensors``. An unreadable index, or one naming a file that is not there, is a ``ValueError``
    naming it."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            with open(index, encoding="utf-8") as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index} is not a safetensors index (a JSON object with a 'weight_map' of tensor -> "
                             f"file): {type(exc).__name__}: {exc}") from exc
        lost = [n for n in names if not (folder / n).is_file()]
        if lost:
            raise ValueError(f"{index} names weight file(s) missing from {folder}: {lost[:4]} (incomplete download?)")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    return files


def iter_safetensors(files: list[Path]):
    """``(name, tensor)`` of every tensor in ``files``; a truncated or corrupt file is a ``ValueError`` naming
    it (safetensors' own error names neither the file nor the tensor)."""
    from safetensors import SafetensorError, safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                names = list(f.keys())
                for name in names:
                    try:
                        tensor = f.get_tensor(name)
                    except (SafetensorError, RuntimeError, OSError) as exc:
                        raise ValueError(f"{path}: tensor {name!r} cannot be read ({exc}); the file is truncated "
                                         f"or corrupt.") from exc
                    yield name, tensor
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc}); it is truncated or corrupt: "
                             f"download or convert it again.") from exc


def checked_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``weights`` with every quantization scale checked as it passes (:func:`check_scale_values`)."""
    for name, tensor in weights:
        check_scale_values(name, tensor)
        yield name, tensor


def load_model(cfg: EngineConfig, tp: Any = None, pp: Any = None) -> nn.Module:
    """``tp``: this rank's :class:`~pagoda.distributed.parallel_state.TPGroup` (tensor parallelism), or None;
    ``pp``: its :class:`~pagoda.distributed.pipeline.PPStage` (pipeline parallelism), or None."""
    t0 = time.perf_counter()
    quant_config = resolve_quantization(cfg.hf_config, cfg.quantization, cfg.load_format)
    with _default_dtype(cfg.dtype), torch.device(cfg.device):
        if (tp is not None and tp.world_size > 1) or pp is not None:
            from pagoda.distributed.support import build_tp_model

            model = build_tp_model(cfg.hf_config, cfg.architecture, cfg.dtype, quant_config, tp, pp)
        else:
            model = build_model(cfg.hf_config, cfg.architecture, cfg.dtype, quant_config, cfg.model_impl,
                                cfg.trust_remote_code, cfg.model_path,
                                cfg.pooler.kind if cfg.pooler is not None else None)
    model.eval()
    if cfg.load_format == "dummy":
        _init_dummy(model, torch.Generator(device=cfg.device).manual_seed(cfg.seed))
    else:
        weights = quant_config.checkpoint_weights(cfg.hf_config) if quant_config is not None else None
        if weights is None:
            files = safetensors_files(cfg.model_path)
            if not files:
                raise FileNotFoundError(
                    f"No *.safetensors weights in {cfg.model_path}. Convert the checkpoint to safetensors, "
                    f"pass a .gguf file, or use --load-format dummy for random weights."
                )
            weights = iter_safetensors(files)
        loaded = model.load_weights(checked_weights(weights))
        missing = model.missing_weights(loaded)
        if missing:
            raise ValueError(f"Checkpoint in {cfg.model_path} lacks weights: {sorted(missing)[:8]} …")
    process_weights_after_loading(model)
    if cfg.device.type == "cuda" and hasattr(model, "enable_fused_kernels"):
        try:
            import triton  # noqa: F401
        except ImportError:
            logger.warning("triton is not installed; using unfused PyTorch elementwise ops on CUDA.")
        else:
            model.enable_fused_kernels()
    n = sum(p.numel() for p in model.parameters()) + sum(  # an IntWeight holds one code per weight
        m.in_features * m.out_features for m in model.modules() if isinstance(m, IntWeight))
    weight_bytes = weight_nbytes(model)
    if cfg.device.type == "cpu" and cfg.dtype == torch.bfloat16 and hasattr(model, "enable_cpu_native_kernels"):
        logger.debug("CPU: %d layers use the native norm/rotary kernels", model.enable_cpu_native_kernels())
    if cfg.device.type == "cpu" and cfg.dtype == torch.bfloat16 and hasattr(model, "pack_for_cpu"):
        packed = model.pack_for_cpu(min(cfg.max_num_seqs, 256))
        logger.debug("prepacked %d linear weights for oneDNN", packed)
    if cfg.deterministic:
        from pagoda.layers.batch_invariant import make_batch_invariant

        logger.info("deterministic mode: %d batch-invariant dense linears", make_batch_invariant(model, cfg.device))
    logger.info(
        "Loaded %s (%s implementation, %s, %.1fM parameter elements, %s, quantization: %s) in %.2f s; "
        "weights take %.3f GiB",
        cfg.architecture, cfg.model_impl, cfg.load_format, n / 1e6, str(cfg.dtype).replace("torch.", ""),
        quant_config.describe() if quant_config else "none", time.perf_counter() - t0, weight_bytes / 2**30,
    )
    return model


def weight_nbytes(model: nn.Module) -> int:
    """Bytes of the model's weights: parameters and persistent buffers, each tensor counted once (a quantized
    method keeps its packed weights there, after ``process_weights_after_loading`` too)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        tensors: list[torch.Tensor] = list(module.parameters(recurse=False))
        skip: set[str] = getattr(module, "_non_persistent_buffers_set", set())
        tensors += [b for n, b in module.named_buffers(recurse=False) if n not in skip]
        for t in tensors:
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def _init_dummy(model: nn.Module, gen: torch.Generator) -> None:
    """Random weights (``--load-format dummy``): norms 1, linear layers by their method, the rest ±0.02."""
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            if isinstance(module, Linear):
                module.linear_method.init_dummy(module, gen)
                continue
            if hasattr(module, "init_dummy"):  # a module with its own dummy weights (quantized MoE experts)
                module.init_dummy(gen)
                continue
            for p_name, p in module.named_parameters(recurse=False):
                if f"{mod_name}.{p_name}".endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.uniform_(-0.02, 0.02, generator=gen)
