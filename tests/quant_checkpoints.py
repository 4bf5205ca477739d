"""GPTQ and AWQ checkpoints of the tiny random Llama, written by GPTQModel itself, and their references.

Run as a script (``python quant_checkpoints.py SRC OUT``, in its own process: importing GPTQModel takes
~15 s and configures global logging). For each variant in ``VARIANTS`` it quantizes ``SRC`` with
``GPTQModel.quantize`` on the CPU (a few calibration sentences) and saves the checkpoint in
``OUT/<variant>``; then it writes ``OUT/<variant>-dense``: the same model with every quantized linear
replaced by the library's own dequantization of the saved tensors (GPTQ: ``TorchLinear.dequantize_weight``
after GPTQModel's own v1 -> v2 zero-point conversion; AWQ: ``dequantize_gemm``), which HF transformers
loads as the reference.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "gptq-b4-g32-desc-asym": {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": False},
    "gptq-b8-gall-sym": {"quant_method": "gptq", "bits": 8, "group_size": -1, "desc_act": False, "sym": True,
                         "act_group_aware": False},
    "gptq-b4-gall-desc-sym": {"quant_method": "gptq", "bits": 4, "group_size": -1, "desc_act": True, "sym": True,
                              "act_group_aware": False},
    "gptq-b8-g32-asym": {"quant_method": "gptq", "bits": 8, "group_size": 32, "desc_act": False, "sym": False},
    "awq-g32": {"quant_method": "awq", "bits": 4, "group_size": 32, "format": "gemm"},
    "awq-g64": {"quant_method": "awq", "bits": 4, "group_size": 64, "format": "gemm"},
}


def _calibration(src: Path) -> list[dict]:
    from tiny_models import CORPUS
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    ids = [tok(s).input_ids for s in CORPUS[:6]]
    return [{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids * 4]


def quantize(src: Path, dst: Path, spec: dict) -> None:
    from gptqmodel import GPTQModel, QuantizeConfig

    if spec["quant_method"] == "awq":
        _no_awq_clip_search()
    model = GPTQModel.load(str(src), QuantizeConfig(**spec), device="cpu")
    model.quantize(_calibration(src), batch_size=1)
    model.save(str(dst))


def _no_awq_clip_search() -> None:
    """AWQ's clip search needs output sizes that are multiples of 64 (the tiny v_proj has 32): skip it. It only
    picks the weights' clipping range; the packing under test is unchanged."""
    from gptqmodel.looper.awq_processor import AWQProcessor

    init = AWQProcessor.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.apply_clip = False

    AWQProcessor.__init__ = patched


def _gptq_dense(t: dict, prefix: str, qcfg: dict):
    import torch
    from gptqmodel.nn_modules.qlinear import PackableQuantLinear
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module

    qweight, scales = t[f"{prefix}.qweight"], t[f"{prefix}.scales"]
    bits = qcfg["bits"]
    in_f, out_f = qweight.shape[0] * 32 // bits, qweight.shape[1]
    m = TorchLinear(bits=bits, group_size=qcfg["group_size"], sym=qcfg["sym"], desc_act=qcfg["desc_act"],
                    in_features=in_f, out_features=out_f, bias=False)
    for name in ("qweight", "qzeros", "g_idx"):
        getattr(m, name).data.copy_(t[f"{prefix}.{name}"])
    m.register_buffer("scales", scales.float())  # fp32, so the dequantized product is not rounded to fp16
    if qcfg.get("checkpoint_format", "gptq") == "gptq":
        convert_gptq_v1_to_v2_format_module(m, bits, torch.int32)
    m.eval()
    w = PackableQuantLinear.dequantize_weight(m)  # the library's generic torch dequantization, [in, out]
    assert w.shape == (in_f, out_f) and scales.shape[1] == out_f
    return w.t().float().contiguous()


def _awq_dense(t: dict, prefix: str, qcfg: dict):
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

    scales = t[f"{prefix}.scales"]
    group = qcfg["group_size"]
    w = dequantize_gemm(t[f"{prefix}.qweight"], t[f"{prefix}.qzeros"], scales.float(), 4, group)
    return w.t().float().contiguous()


def write_dense(qdir: Path, ddir: Path) -> None:
    """``ddir``: ``qdir`` with every quantized linear replaced by the library's dequantized weight."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((qdir / "config.json").read_text())
    qcfg = cfg.pop("quantization_config")
    shutil.copytree(qdir, ddir, dirs_exist_ok=True)
    # The reference generates past EOS: GPTQModel's generation_config (do_sample, pad_token_id) otherwise
    # fills in the EOS that the test's GenerationConfig leaves unset.
    cfg.pop("eos_token_id", None)
    (ddir / "config.json").write_text(json.dumps(cfg))
    (ddir / "generation_config.json").write_text(json.dumps({"bos_token_id": cfg.get("bos_token_id")}))
    t: dict = {}
    for f in sorted(qdir.glob("*.safetensors")):
        t.update(load_file(f))
        (ddir / f.name).unlink()
    dense = {k: v.float() for k, v in t.items() if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
    to_dense = _awq_dense if qcfg["quant_method"] == "awq" else _gptq_dense
    for k in t:
        if k.endswith(".qweight"):
            prefix = k[: -len(".qweight")]
            dense[f"{prefix}.weight"] = to_dense(t, prefix, qcfg)
    save_file(dense, ddir / "model.safetensors")


NO_GPTQMODEL = 3  # the script's exit status when gptqmodel does not import (tests/conftest.py skips then)


def main(src: Path, out: Path, names: list[str]) -> None:
    try:
        import gptqmodel  # noqa: F401
    except Exception as exc:  # the --no-deps install lacks a dependency
        print(" ".join(f"gptqmodel does not import ({type(exc).__name__}: {exc})".split()), file=sys.stderr)
        sys.exit(NO_GPTQMODEL)
    for name in names:
        quantize(src, out / name, VARIANTS[name])
        write_dense(out / name, out / f"{name}-dense")


if __name__ == "__main__":
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    sys.path.insert(0, str(Path(__file__).parent))
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:] or list(VARIANTS))
