"""compressed-tensors checkpoints made by the compressed-tensors library, against the library's reference.

Reference: HF transformers loading the same checkpoint (its compressed-tensors integration decompresses the
weights and fake-quantizes activations with the library's own arithmetic). For asymmetric pack-quantized,
transformers 5.24 cannot load the packed zero points (a shape mismatch in its loader), so the reference is
a dense HF model holding the library's own decompression (``PackedQuantizationCompressor.decompress``).

fp32 on the CPU. Greedy tokens by the top-5 rule; prompt logprobs within ``ATOL[scheme]``: 1e-4 for weight-only
schemes (the same dequantized weights), looser where activations are quantized per call (a code may round
the other way when fp32 sums differ in the last bit).
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


def test_compressed_tensors_describe_and_weight_bytes(ct):
    from pagoda.models.loader import weight_nbytes
    from pagoda.quantization import resolve_quantization

    folder = ct("w4a16")
    import json

    qc = resolve_quantization(json.loads((folder / "config.json").read_text()), None)
    assert qc is not None and qc.describe() == "compressed-tensors (pack-quantized w4ia16)"
    assert callable(weight_nbytes)
