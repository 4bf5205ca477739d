"""One PEFT LoRA adapter folder, read and checked against the model (vLLM's ``PEFTHelper`` + ``LoRAModel``).

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``adapter_model.bin``, read with
``torch.load(weights_only=True)``). Each target module ``M`` of the base model has ``M.lora_A.weight`` [r, in] and
``M.lora_B.weight`` [out, r]; its output gains ``scale * (x A^T) B^T`` with ``scale = lora_alpha / r`` (rsLoRA:
``lora_alpha / sqrt(r)``), ``r`` and ``lora_alpha`` per module where ``rank_pattern`` / ``alpha_pattern`` name it.

Everything the folder asks for that pagoda does not apply is a ``ValueError`` naming the adapter and the field:
DoRA, biases, ``modules_to_save``, embedding / LM-head targets, a rank over ``--max-lora-rank``, an unknown module,
a tensor of the wrong shape, a missing file. Invariant of a returned :class:`LoRAWeights`: every (layer, module) it
holds has ``A`` [r, in] and ``B`` [out, r] (scale folded into B) in the requested dtype, ``1 <= r <= max rank``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pagoda.lora.request import LoRARequest

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The Llama-family linears an adapter may target (in pagoda: fused into qkv_proj / gate_up_proj, or o/down)."""
_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}

_MUST_BE_OFF = ("use_dora", "modules_to_save", "trainable_token_indices", "layer_replication", "target_parameters",
                "alora_invocation_tokens", "lora_bias", "use_qalora", "use_bdlora", "arrow_config")
"""adapter_config.json fields that change what the adapter computes and that pagoda does not apply: each must be
absent, null, false or empty."""

_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class ModelShape:
    """What an adapter is checked against: decoder layers, hidden size and each module's (in, out)."""

    num_layers: int
    dims: dict[str, tuple[int, int]]


@dataclass
class LoRAWeights:
    """A loaded adapter: ``modules[(layer, name)] = (A [r, in], B [out, r] * scale)``, host tensors."""

    request: LoRARequest
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.modules.values())


class LoRANotFoundError(ValueError):
    """No adapter at ``lora_path``: the folder or its ``adapter_config.json`` does not exist (vLLM's "No adapter
    found"; the server's ``/v1/load_lora_adapter`` answers it with a 404, as vLLM's)."""


def _fail(req: LoRARequest, what: str, error: type[ValueError] = ValueError) -> ValueError:
    return error(f"LoRA adapter {req.lora_name!r} (lora_int_id {req.lora_int_id}, {req.lora_path}): {what}")


def _pattern_value(patterns: dict[str, Any], module_key: str, default: Any) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup: the first pattern ``p`` with ``(.*\\.)?(p)$`` matching the
    module's name, else ``default``."""
    for pat, value in patterns.items():
        if re.match(rf"(.*\.)?({pat})$", module_key):
            return value
    return default


def read_config(req: LoRARequest, folder: Path) -> dict[str, Any]:
    """``adapter_config.json``, with every field pagoda does not apply refused (module docstring)."""
    path = folder / "adapter_config.json"
    if not folder.exists():
        raise _fail(req, "No adapter found: lora_path is not a folder (nothing exists there; it must hold a PEFT "
                         "adapter: adapter_config.json and adapter_model.safetensors)", LoRANotFoundError)
    if not folder.is_dir():
        raise _fail(req, "lora_path is not a folder (it must hold a PEFT adapter: adapter_config.json and "
                         "adapter_model.safetensors)")
    if not path.is_file():
        raise _fail(req, f"No adapter found: no adapter_config.json in {folder} (save the adapter with PEFT's "
                         f"save_pretrained)", LoRANotFoundError)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise _fail(req, f"adapter_config.json cannot be read: {exc}") from None
    if not isinstance(cfg, dict):
        raise _fail(req, "adapter_config.json is not a JSON object")
    peft_type = cfg.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise _fail(req, f"adapter_config.json peft_type {peft_type!r}: only LORA adapters are supported")
    for name in ("r", "lora_alpha", "target_modules"):
        if cfg.get(name) is None:
            raise _fail(req, f"adapter_config.json lacks {name!r}")
    if cfg.get("bias", "none") != "none":
        raise _fail(req, f"adapter_config.json bias={cfg['bias']!r}: adapter biases are not supported (only "
                         f"bias='none')")
    for name in _MUST_BE_OFF:
        if cfg.get(name):
            raise _fail(req, f"adapter_config.json {name}={cfg[name]!r} is not supported (pagoda applies plain "
                             f"LoRA to {', '.join(MODULES)})")
    _check_targets(req, cfg)
    return cfg


def _check_targets(req: LoRARequest, cfg: dict[str, Any]) -> None:
    """``target_modules`` (a list of names, or a regex string) and the rank / alpha patterns' shape."""
    targets = cfg["target_modules"]
    if isinstance(targets, list):
        unknown = [t for t in targets if not isinstance(t, str) or t.rsplit(".", 1)[-1] not in MODULES]
        if unknown:
            raise _fail(req, f"adapter_config.json target_modules {unknown} not supported (pagoda applies adapters "
                             f"to {', '.join(MODULES)}; embeddings and the LM head are not supported)")
    elif not isinstance(targets, str):
        raise _fail(req, f"adapter_config.json target_modules must be a list or a regex string, got {targets!r}")
    for name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(cfg.get(name) or {}, dict):
            raise _fail(req, f"adapter_config.json {name} must be an object")


def _read_tensors(req: LoRARequest, folder: Path) -> dict[str, torch.Tensor]:
    st, pt = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st), device="cpu")
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise _fail(req, f"adapter_model.safetensors cannot be read ({exc}); it is truncated or corrupt") from None
    if pt.is_file():
        try:
            sd = torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickled code: a clear error, never an execution
            raise _fail(req, f"adapter_model.bin cannot be read safely (torch.load weights_only=True: "
                             f"{type(exc).__name__}: {exc}); convert it to adapter_model.safetensors") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise _fail(req, "adapter_model.bin does not hold a dict of tensors")
        return sd
    raise _fail(req, f"no adapter_model.safetensors (or adapter_model.bin) in {folder}")


def load_adapter(req: LoRARequest, shape: ModelShape, max_rank: int, dtype: torch.dtype) -> LoRAWeights:
    """Read and check ``req``'s folder against the model (module docstring); raises ``ValueError``."""
    if req.tensorizer_config_dict is not None:
        raise _fail(req, "tensorizer_config_dict is not supported (pagoda reads PEFT folders)")
    if req.load_inplace:
        raise _fail(req, "load_inplace=True is not supported (an id names one adapter for the engine's life: give "
                         "the new weights a new lora_int_id)")
    folder = Path(req.lora_path).expanduser()
    cfg = read_config(req, folder)
    tensors = _read_tensors(req, folder)
    r0, alpha0 = cfg["r"], cfg["lora_alpha"]
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    rslora = bool(cfg.get("use_rslora", False))
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            what = "embedding" if "embed" in key else "LM head" if "lm_head" in key else \
                "DoRA magnitude" if "magnitude" in key else "bias" if key.endswith(".bias") else None
            why = f" (a {what} weight: not supported)" if what else \
                f" (pagoda applies adapters to model.layers.N.{{self_attn,mlp}}.{{{','.join(MODULES)}}})"
            raise _fail(req, f"tensor {key!r} is not a LoRA weight of a supported module{why}")
        layer, parent, name, ab = int(m[1]), m[2], m[3], m[4]
        if name not in MODULES or _PARENT[name] != parent:
            raise _fail(req, f"tensor {key!r} targets module {parent}.{name}, which pagoda does not adapt (supported: "
                             f"{', '.join(MODULES)})")
        if layer >= shape.num_layers:
            raise _fail(req, f"tensor {key!r} names layer {layer}; the model has {shape.num_layers} layers (an "
                             f"adapter of another base model?)")
        pairs.setdefault((layer, name), {})[ab] = t
    if not pairs:
        raise _fail(req, "adapter_model holds no LoRA weights")
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, name), ab in sorted(pairs.items()):
        mod_key = f"model.layers.{layer}.{_PARENT[name]}.{name}"
        if set(ab) != {"A", "B"}:
            raise _fail(req, f"{mod_key} has lora_{'B' if 'A' in ab else 'A'}.weight missing")
        a, b = ab["A"], ab["B"]
        n_in, n_out = shape.dims[name]
        r = a.shape[0] if a.dim() == 2 else -1
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != n_in or b.shape != (n_out, r):
            raise _fail(req, f"{mod_key}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the model's "
                             f"module (in {n_in}, out {n_out}): expected [r, {n_in}] and [{n_out}, r] (an adapter of "
                             f"another base model?)")
        rank = int(_pattern_value(rank_pattern, mod_key, r0))
        if r != rank:
            raise _fail(req, f"{mod_key}: lora_A has rank {r} but adapter_config.json says r={rank}")
        if r > max_rank:
            raise _fail(req, f"{mod_key} has rank {r}, over max_lora_rank {max_rank}; start the engine with "
                             f"--max-lora-rank {r} (LLM(max_lora_rank={r})) or more")
        if not (a.is_floating_point() and b.is_floating_point()):
            raise _fail(req, f"{mod_key}: LoRA weights must be floating point, got {a.dtype} / {b.dtype}")
        alpha = float(_pattern_value(alpha_pattern, mod_key, alpha0))
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        a32, b32 = a.float(), b.float() * scale
        if not (torch.isfinite(a32).all() and torch.isfinite(b32).all()):
            raise _fail(req, f"{mod_key}: LoRA weights hold inf or NaN")
        modules[(layer, name)] = (a32.to(dtype).contiguous(), b32.to(dtype).contiguous())
    return LoRAWeights(req, modules)
