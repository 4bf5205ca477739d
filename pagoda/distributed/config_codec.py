"""An :class:`~pagoda.config.EngineConfig` as msgpack bytes (spawn argument of a worker rank), and back.

A worker rank must run exactly rank 0's resolved configuration (the same model folder, dtype,
limits), so rank 0 sends its config rather than the user's arguments. Only builtins cross the process
boundary: paths, dtypes and devices as strings, nested dataclasses as dicts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import torch

from pagoda.config import EngineConfig
from pagoda.structured_output.params import StructuredOutputsConfig

_PATHS = ("model_path", "tokenizer_path")


def encode_config(cfg: EngineConfig) -> bytes:
    if cfg.pooler is not None:
        raise ValueError("a pooling model's config is not sent to worker ranks (pooling runs on one device)")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        elif isinstance(v, torch.device):
            v = str(v)
        elif isinstance(v, StructuredOutputsConfig):
            v = dataclasses.asdict(v)
        out[f.name] = v
    return msgspec.msgpack.encode(out)


def decode_config(raw: bytes) -> EngineConfig:
    d: dict[str, Any] = msgspec.msgpack.decode(raw)
    for name in _PATHS:
        d[name] = Path(d[name])
    d["dtype"] = getattr(torch, d["dtype"])
    d["device"] = torch.device(d["device"])
    d["structured_outputs"] = StructuredOutputsConfig(**d["structured_outputs"])
    return EngineConfig(**d)
