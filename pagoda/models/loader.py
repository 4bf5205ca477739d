"""Build a model on its device in its dtype and fill it from safetensors or dummy values."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from pagoda.config import EngineConfig
from pagoda.layers.linear import process_weights_after_loading
from pagoda.models.registry import build_model

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
    index = folder / "model.safetensors.index.json"
    if index.exists():
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    return files


def iter_safetensors(files: list[Path]):
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_model(cfg: EngineConfig) -> nn.Module:
    t0 = time.perf_counter()
    with _default_dtype(cfg.dtype), torch.device(cfg.device):
        model = build_model(cfg.hf_config, cfg.architecture, cfg.dtype)
    model.eval()
    if cfg.load_format == "dummy":
        gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.uniform_(-0.02, 0.02, generator=gen)
    else:
        files = safetensors_files(cfg.model_path)
        if not files:
            raise FileNotFoundError(
                f"No *.safetensors weights in {cfg.model_path}. Convert the checkpoint to safetensors, "
                f"pass a .gguf file, or use --load-format dummy for random weights."
            )
        loaded = model.load_weights(iter_safetensors(files))
        missing = model.expected_weight_keys() - loaded
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
    n = sum(p.numel() for p in model.parameters())
    if cfg.device.type == "cpu" and cfg.dtype == torch.bfloat16 and hasattr(model, "pack_for_cpu"):
        packed = model.pack_for_cpu(min(cfg.max_num_seqs, 256))
        logger.debug("prepacked %d linear weights for oneDNN", packed)
    logger.info(
        "Loaded %s (%s, %.1fM parameters, %s) in %.2f s",
        cfg.architecture, cfg.load_format, n / 1e6, str(cfg.dtype).replace("torch.", ""), time.perf_counter() - t0,
    )
    return model
