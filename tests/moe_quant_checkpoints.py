"""Quantized checkpoints of the tiny MoE models, and their dequantized references (for test_moe_quantized.py).

:func:`write_quantized` rounds the chosen linear weights of a tiny random checkpoint to nearest (no calibration:
the formats' layouts are under test, not a quantizer) and writes them in a format's layout, with its
``quantization_config``; beside it a dense folder holds every quantized weight dequantized by the format's plain
formula (``scale * (q - zero)`` for GPTQ, ``fp8 * scale`` for FP8), which HF transformers loads as the reference.
The dense layers' readers (GPTQ packing, v1 zero points, FP8 scale forms) are checked against the reference
libraries elsewhere (test_quant_gptq_awq.py, test_quant_fp8.py); here the experts' handling is under test.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

_ATTN = r"self_attn\.[qkvo]_proj"
_EXPERT = r"(?:mlp|block_sparse_moe)\.experts\.\d+\.(?:gate_proj|up_proj|down_proj|w1|w2|w3)"
_SHARED = r"mlp\.shared_expert\.(?:gate|up|down)_proj"

SCHEMES: dict[str, dict] = {
    # GPTQ v1 (zero points stored minus one), 4-bit asymmetric, groups of 16, every decoder linear but the router
    "gptq-b4-g16-asym": {"qcfg": {"quant_method": "gptq", "bits": 4, "group_size": 16, "desc_act": False,
                                  "sym": False, "checkpoint_format": "gptq"}, "which": [_ATTN, _EXPERT, _SHARED]},
    # GPTQ 4-bit symmetric, groups of 8 (tensor parallelism: each rank's 24 expert inputs hold 3 whole groups)
    "gptq-b4-g8-sym": {"qcfg": {"quant_method": "gptq", "bits": 4, "group_size": 8, "desc_act": False,
                                "sym": True, "checkpoint_format": "gptq"}, "which": [_ATTN, _EXPERT, _SHARED]},
    # GPTQ 8-bit symmetric, one group per row
    "gptq-b8-gall-sym": {"qcfg": {"quant_method": "gptq", "bits": 8, "group_size": -1, "desc_act": False,
                                  "sym": True, "checkpoint_format": "gptq"}, "which": [_ATTN, _EXPERT, _SHARED]},
    # block-wise FP8 (weight_scale_inv per 16 x 16 block), every decoder linear but the router
    "fp8-block16": {"qcfg": {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [16, 16]},
                    "which": [_ATTN, _EXPERT, _SHARED]},
    # per-tensor FP8 experts only (attention listed in ignored_layers stays dense)
    "fp8-tensor-experts": {"qcfg": {"quant_method": "fp8", "activation_scheme": "dynamic",
                                    "ignored_layers": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                           "which": [_EXPERT]},
}


def _gptq(w: torch.Tensor, bits: int, group: int, sym: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    from pagoda.quantization.gptq import pack_qzeros
    from pagoda.quantization.packing import pack_int32

    n, k = w.shape
    g = k if group == -1 else group
    wg = w.float().view(n, k // g, g)
    top = 2**bits - 1
    if sym:
        scale = wg.abs().amax(-1) / (top / 2)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
        scale = (hi - lo) / top
        zero = torch.round(-lo / scale).clamp(0, top)
    scale = scale.half().float()  # the checkpoint stores fp16 scales: the reference uses the stored value
    q = torch.clamp(torch.round(wg / scale[..., None]) + zero[..., None], 0, top)
    dense = (scale[..., None] * (q - zero[..., None])).view(n, k)
    codes = q.view(n, k).to(torch.int64)
    tensors = {"qweight": pack_int32(codes.t().contiguous(), bits, dim=0),
               "qzeros": pack_qzeros(zero.t().to(torch.int64).contiguous(), bits, "gptq"),
               "scales": scale.t().contiguous().half(),
               "g_idx": (torch.arange(k) // g).to(torch.int32)}
    return tensors, dense


def _fp8(w: torch.Tensor, block: list[int] | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    fmax = float(torch.finfo(torch.float8_e4m3fn).max)
    n, k = w.shape
    if block is None:
        scale = w.abs().amax() / fmax
        q = (w / scale).to(torch.float8_e4m3fn)
        return {"weight": q, "weight_scale": scale.reshape(1).float()}, q.float() * scale
    bn, bk = block
    blocks = w.float().view(n // bn, bn, k // bk, bk)
    scale = blocks.abs().amax(dim=(1, 3)) / fmax
    full = scale.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    q = (w / full).to(torch.float8_e4m3fn)
    return {"weight": q, "weight_scale_inv": scale.float()}, q.float() * full


def write_quantized(src: Path, out: Path, scheme: str) -> tuple[Path, Path]:
    """``out/<scheme>`` (the quantized checkpoint) and ``out/<scheme>-dense`` (its dequantized reference)."""
    from safetensors.torch import load_file, save_file

    spec = SCHEMES[scheme]
    qcfg = spec["qcfg"]
    pattern = re.compile(rf"^model\.layers\.\d+\.(?:{'|'.join(spec['which'])})\.weight$")
    qdir, ddir = out / scheme, out / f"{scheme}-dense"
    for d in (qdir, ddir):
        shutil.copytree(src, d, dirs_exist_ok=True)
    tensors = load_file(str(src / "model.safetensors"))
    quant: dict[str, torch.Tensor] = {}
    dense: dict[str, torch.Tensor] = {}
    for name, w in tensors.items():
        if not pattern.match(name):
            quant[name] = dense[name] = w
            continue
        prefix = name.removesuffix(".weight")
        if qcfg["quant_method"] == "gptq":
            parts, deq = _gptq(w, qcfg["bits"], qcfg["group_size"], qcfg["sym"])
        else:
            parts, deq = _fp8(w, qcfg.get("weight_block_size"))
        quant.update({f"{prefix}.{k}": v for k, v in parts.items()})
        dense[name] = deq.to(w.dtype)
    save_file(quant, str(qdir / "model.safetensors"), metadata={"format": "pt"})
    save_file(dense, str(ddir / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    (qdir / "config.json").write_text(json.dumps({**cfg, "quantization_config": qcfg}))
    return qdir, ddir
