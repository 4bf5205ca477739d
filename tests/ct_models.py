"""Tiny compressed-tensors checkpoints made by the compressed-tensors library itself.

The tiny random Llama (tiny_models.py) is calibrated on one random batch (input absmax per linear, taken
before quantization is attached), then ``apply_quantization_config`` attaches the scheme, the weight
scales/zero points come from the library's ``calculate_qparams`` (the rule llm-compressor's min-max observer
applies), and ``ModelCompressor`` compresses and writes the checkpoint and its ``quantization_config``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

SCHEMES: dict[str, tuple[str, dict, dict | None]] = {
    # name: (format, weights args, input_activations args)
    "w4a16": ("pack-quantized", dict(num_bits=4, type="int", strategy="group", group_size=32, symmetric=True), None),
    "w4a16-asym": ("pack-quantized",
                   dict(num_bits=4, type="int", strategy="group", group_size=32, symmetric=False), None),
    "w8a16": ("pack-quantized", dict(num_bits=8, type="int", strategy="channel", symmetric=True), None),
    "w8a8-int": ("int-quantized", dict(num_bits=8, type="int", strategy="channel", symmetric=True),
                 dict(num_bits=8, type="int", strategy="token", symmetric=True, dynamic=True)),
    "fp8-static": ("float-quantized", dict(num_bits=8, type="float", strategy="tensor", symmetric=True),
                   dict(num_bits=8, type="float", strategy="tensor", symmetric=True, dynamic=False)),
    "fp8-dynamic": ("float-quantized", dict(num_bits=8, type="float", strategy="channel", symmetric=True),
                    dict(num_bits=8, type="float", strategy="token", symmetric=True, dynamic=True)),
}


def _observe(args, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if args.strategy == "group":
        wg = w.view(w.shape[0], -1, args.group_size)
        return wg.amin(-1), wg.amax(-1)
    if args.strategy == "channel":
        return w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    return w.amin().reshape(1), w.amax().reshape(1)


def build_ct_checkpoint(base: Path, folder: Path, scheme: str) -> Path:
    """Quantize the dense tiny model in ``base`` with ``SCHEMES[scheme]`` into ``folder`` (tokenizer copied)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils.helpers import calculate_qparams
    from transformers import AutoModelForCausalLM

    fmt, wargs, aargs = SCHEMES[scheme]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    amax: dict[str, float] = {}

    def hook(name):
        return lambda mod, args: amax.__setitem__(name, max(amax.get(name, 0.0), float(args[0].abs().max())))

    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1)))
    for h in hooks:
        h.remove()
    qs = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**wargs),
                            input_activations=QuantizationArgs(**aargs) if aargs else None)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": qs}, ignore=["lm_head"],
                                                        quantization_status="frozen"))
    with torch.no_grad():
        for name, m in model.named_modules():
            if not hasattr(m, "quantization_scheme"):
                continue
            args = m.quantization_scheme.weights
            scale, zp = calculate_qparams(*_observe(args, m.weight.data), args)
            m.weight_scale.copy_(scale.to(m.weight_scale.dtype))
            if hasattr(m, "weight_zero_point"):
                m.weight_zero_point.copy_(zp.to(m.weight_zero_point.dtype))
            ia = m.quantization_scheme.input_activations
            if ia is not None and not ia.dynamic:
                a = torch.tensor([amax[name]])
                m.input_scale.copy_(calculate_qparams(-a, a, ia)[0].to(m.input_scale.dtype))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(str(folder))
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copy(f, folder / f.name)
    return folder
