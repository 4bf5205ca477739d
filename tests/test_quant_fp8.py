"""FP8: online ``--quantization fp8`` on a dense checkpoint, FP8 checkpoints (per-tensor and per-channel
``weight_scale``, static ``input_scale``, block-wise ``weight_scale_inv``) and bad input, on the CPU's
portable path (dequantize per call with the same quantized activations as ``torch._scaled_mm``).

References: online FP8 against the dense fp32 model by the top-5 rule (quantization changes the model);
an FP8 checkpoint written here against pagoda's own online FP8 of the same dense weights, which must be
the same arithmetic (logprobs within 1e-4).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from engine_checks import compare_top5, greedy, our_top

from pagoda.quantization.w8a8 import FP8_MAX, fp8_linear, quantize_weight_fp8_per_channel

PROMPTS = ["The quick brown fox", "Paris is the capital of"]
NEW = 12


def _run(llm):
    return llm.generate(PROMPTS, greedy(NEW, logprobs=5, prompt_logprobs=5), use_tqdm=False)


def test_online_fp8_matches_dense_by_top5(tiny):
    ours = _run(tiny.llm("llama", quantization="fp8"))
    dense = _run(tiny.llm("llama"))
    for a, b in zip(ours, dense, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        ref_top = [{t for t, lp in d.items() if lp.rank is not None and lp.rank <= 5} for d in cb.logprobs]
        compare_top5(ca.token_ids, cb.token_ids, [our_top(d) for d in ca.logprobs], ref_top, what=a.prompt)


def _write_fp8_checkpoint(src, dst, per_tensor: bool, static: bool, block: int | None = None):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = load_file(str(src / "model.safetensors"))
    out = {}
    for k, v in sd.items():
        if k.endswith("proj.weight"):
            base = k[: -len("weight")]
            if block:
                s = v.abs().view(v.shape[0] // block, block, -1, block).amax(dim=(1, 3)) / FP8_MAX
                full = s.repeat_interleave(block, 0).repeat_interleave(block, 1)
                out[k] = (v / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
                out[base + "weight_scale_inv"] = s
                continue
            q, s = quantize_weight_fp8_per_channel(v)
            if per_tensor:
                s = v.abs().amax() / FP8_MAX
                q = (v / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            out[k], out[base + "weight_scale"] = q, s.reshape(()) if per_tensor else s.view(-1, 1)
            if static:
                out[base + "input_scale"] = torch.tensor(4.0 / FP8_MAX)
        else:
            out[k] = v
    save_file(out, str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static" if static else "dynamic"}
    if block:
        cfg["quantization_config"]["weight_block_size"] = [block, block]
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("per_tensor,static", [(False, False), (True, False), (True, True)])
def test_fp8_checkpoint_runs_and_matches_own_arithmetic(tiny, tmp_path, per_tensor, static):
    from pagoda import LLM

    folder = _write_fp8_checkpoint(tiny.path("llama"), tmp_path / "fp8", per_tensor, static)
    outs = _run(LLM(str(folder), dtype="float32"))
    if per_tensor or static:  # a different quantization than online: only the top-5 rule against dense
        dense = _run(tiny.llm("llama"))
        for a, b in zip(outs, dense, strict=True):
            ref_top = [our_top(d) for d in b.outputs[0].logprobs]
            compare_top5(a.outputs[0].token_ids, b.outputs[0].token_ids, None, ref_top, what=a.prompt)
        return
    online = _run(tiny.llm("llama", quantization="fp8"))  # per-channel, dynamic per token: the same arithmetic
    for a, b in zip(outs, online, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for da, db in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:], strict=True):
            for t in da.keys() & db.keys():
                assert abs(da[t].logprob - db[t].logprob) < 1e-4


def test_fp8_block_checkpoint(tiny, tmp_path):
    from pagoda import LLM

    folder = _write_fp8_checkpoint(tiny.path("llama"), tmp_path / "fp8b", False, False, block=32)
    outs = _run(LLM(str(folder), dtype="float32"))
    dense = _run(tiny.llm("llama"))
    for a, b in zip(outs, dense, strict=True):
        compare_top5(a.outputs[0].token_ids, b.outputs[0].token_ids, None,
                     [our_top(d) for d in b.outputs[0].logprobs], what=a.prompt)


def test_fp8_linear_portable_matches_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=g)
    w = torch.randn(48, 64, generator=g) * 0.1
    q, s = quantize_weight_fp8_per_channel(w)
    y = fp8_linear(x, q, s, None, None, True, False)
    sx = x.abs().amax(-1, keepdim=True) / FP8_MAX
    xq = (x / sx).to(torch.float8_e4m3fn).float() * sx
    ref = xq @ (q.float() * s[:, None]).t()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert (y - x @ w.t()).abs().max() < 0.1 * (x @ w.t()).abs().max()


def test_fp8_bad_input(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from pagoda import LLM
    from pagoda.quantization.fp8 import Fp8Config

    with pytest.raises(ValueError, match="activation_scheme"):
        Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "weird"})
    with pytest.raises(ValueError, match="fmt"):
        Fp8Config.from_config({"quant_method": "fp8", "fmt": "e5m2"})
    folder = _write_fp8_checkpoint(tiny.path("llama"), tmp_path / "bad", False, False)
    sd = load_file(str(folder / "model.safetensors"))
    sd["model.layers.0.self_attn.o_proj.weight_scale"] = torch.ones(7, 1)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="o_proj.weight_scale"):
        LLM(str(folder), dtype="float32")
