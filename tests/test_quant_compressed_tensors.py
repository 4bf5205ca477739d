"""compressed-tensors checkpoints made by the compressed-tensors library, against the library's reference.

Reference: HF transformers loading the same checkpoint (its compressed-tensors integration decompresses the
weights and fake-quantizes activations with the library's own arithmetic). For asymmetric pack-quantized,
transformers 5.24 cannot load the packed zero points (a shape mismatch in its loader), so the reference is
a dense HF model holding the library's own decompression (``PackedQuantizationCompressor.decompress``).

fp32 on the CPU. Greedy tokens by the top-5 rule; prompt logprobs within ``ATOL[scheme]``: 1e-4 for weight-only
schemes (the same dequantized weights; measured 0 to 1e-6), 2e-2 where activations are quantized per call:
a single int8 activation code rounding the other way (fp32 sums differing in the last bit) moves a logprob by
~1e-2 after two layers (measured 1.6e-2 for w8a8-int, 0 for FP8; the single layer matches to 5e-7).
"""

from __future__ import annotations

import pytest
import torch
from ct_models import build_ct_checkpoint
from engine_checks import compare_top5, greedy, hf_greedy, our_top, top_ids

PROMPTS = ["The quick brown fox", "Paris is the capital of",
           "PagedAttention stores the key value cache in fixed size blocks so that"]
NEW = 12
ATOL = {"w4a16": 1e-4, "w4a16-asym": 1e-4, "w8a16": 1e-4, "w8a8-int": 2e-2, "fp8-static": 2e-2,
        "fp8-dynamic": 2e-2}


@pytest.fixture(scope="module")
def ct(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    cache: dict[str, object] = {}

    def get(scheme: str):
        if scheme not in cache:
            cache[scheme] = build_ct_checkpoint(tiny.path("llama"), root / scheme, scheme)
        return cache[scheme]

    return get


def _reference_model(folder, scheme: str, base):
    from transformers import AutoModelForCausalLM

    if scheme != "w4a16-asym":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors.torch import load_file

    from pagoda.quantization.compressed_tensors import CompressedTensorsConfig  # noqa: F401 (import check)

    sd = load_file(str(folder / "model.safetensors"))
    qs = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", strategy="group", group_size=32, symmetric=False))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if f"{name}.weight_packed" in sd:
                local = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}
                mod.weight.copy_(PackedQuantizationCompressor.decompress(local, qs)["weight"])
    return model


@pytest.mark.parametrize("scheme", list(ATOL))
def test_compressed_tensors_matches_reference(tiny, ct, scheme):
    from pagoda import LLM

    folder = ct(scheme)
    ref_model = _reference_model(folder, scheme, tiny.path("llama"))
    llm = LLM(str(folder), dtype="float32")
    outs = llm.generate(PROMPTS, greedy(NEW, logprobs=5, prompt_logprobs=5), use_tqdm=False)
    worst = 0.0
    for out in outs:
        ref = hf_greedy(ref_model, out.prompt_token_ids, NEW)
        comp = out.outputs[0]
        compare_top5(comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
                     [top_ids(r) for r in ref.step_logprobs], what=f"{scheme} {out.prompt[:16]!r}")
        for i, d in enumerate(out.prompt_logprobs[1:]):
            for tid, lp in d.items():
                worst = max(worst, abs(lp.logprob - float(ref.prompt_logprobs[i, tid])))
    assert worst <= ATOL[scheme], f"{scheme}: prompt logprobs differ from the reference by {worst:.2e}"

    if scheme == "w4a16":  # the packed checkpoint tensors became an IntWeight
        qkv = next(m for n, m in llm.llm_engine.core.runner.model.named_modules() if n.endswith("0.self_attn.qkv_proj"))
        assert not hasattr(qkv, "weight_packed") and qkv.int_weight.bits == 4


def _corrupt(folder, tmp_path, name, edit):
    import shutil

    from safetensors.torch import load_file, save_file

    dst = tmp_path / name
    shutil.copytree(folder, dst)
    sd = load_file(str(dst / "model.safetensors"))
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"))
    return dst


def test_compressed_tensors_bad_input(ct, tmp_path):
    import json

    from pagoda import LLM
    from pagoda.quantization.compressed_tensors import CompressedTensorsConfig

    cfg = json.loads((ct("w4a16") / "config.json").read_text())["quantization_config"]
    for path, value, field in [(("format",), "marlin-24", "format"),
                               (("config_groups", "group_0", "format"), "sparse-24-bitmask", "format"),
                               (("config_groups", "group_0", "weights", "num_bits"), 3, "num_bits"),
                               (("config_groups", "group_0", "weights", "strategy"), "block", "strategy"),
                               (("kv_cache_scheme",), {"num_bits": 8, "type": "float"}, "kv_cache_scheme")]:
        bad = json.loads(json.dumps(cfg))
        d = bad
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value
        if path == ("format",):
            bad["config_groups"]["group_0"].pop("format")
        with pytest.raises(ValueError, match=field):
            CompressedTensorsConfig.from_config(bad)
    w8 = json.loads((ct("w8a8-int") / "config.json").read_text())["quantization_config"]
    w8["config_groups"]["group_0"]["input_activations"]["symmetric"] = False
    with pytest.raises(ValueError, match="input_activations.symmetric"):
        CompressedTensorsConfig.from_config(w8)

    def short_scale(sd):
        sd["model.layers.0.mlp.down_proj.weight_scale"] = sd["model.layers.0.mlp.down_proj.weight_scale"][:, :1]

    def truncated(sd):
        sd["model.layers.1.self_attn.k_proj.weight_packed"] = sd["model.layers.1.self_attn.k_proj.weight_packed"][:-1]

    for name, edit, tensor in [("scale", short_scale, "down_proj.weight_scale"),
                               ("packed", truncated, "k_proj.weight_packed")]:
        with pytest.raises(ValueError, match=tensor):
            LLM(str(_corrupt(ct("w4a16"), tmp_path, name, edit)), dtype="float32")


@pytest.mark.parametrize("scheme", ["fp8-online", "w8a8-int", "w4a16-asym", "fp8-static"])
def test_dummy_weights_quantized(tiny, ct, scheme):
    """``--load-format dummy`` gives valid codes and scales for every method (the GPU benchmarks use it)."""
    from pagoda import LLM

    online = scheme == "fp8-online"
    folder = tiny.path("llama") if online else ct(scheme)
    llm = LLM(str(folder), dtype="float32", load_format="dummy", **({"quantization": "fp8"} if online else {}))
    out = llm.generate(["Hi"], greedy(4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
