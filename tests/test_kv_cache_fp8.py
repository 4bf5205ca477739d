"""``--kv-cache-dtype fp8`` end to end on the CPU: capacity, tokens, checkpoint scales, bad input.

Tokens of an FP8-KV run are compared with the same engine's model-dtype-KV run by the top-5 rule
(GUIDE section 4: FP8 rounding may flip near-ties, never produce a token outside the top 5).
Kernel-level checks of the FP8 rule are in tests/kernels/test_kv_fp8_kernels.py.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from engine_checks import PROMPTS, assert_engine_clean, compare_top5, greedy, our_top

from pagoda import LLM, SamplingParams
from pagoda.attention import kv_quant
from pagoda.config import KV_CACHE_DTYPES, EngineArgs

KV_BYTES = 1 << 20


def _runner(llm):
    return llm.llm_engine.core.runner


@pytest.mark.parametrize("kv_dtype", ["fp8", "fp8_e5m2"])
def test_fp8_kv_doubles_blocks_and_keeps_greedy_tokens(tiny, kv_dtype):
    base = tiny.llm("llama", dtype="bfloat16", kv_cache_memory_bytes=KV_BYTES)
    fp8 = tiny.llm("llama", dtype="bfloat16", kv_cache_memory_bytes=KV_BYTES, kv_cache_dtype=kv_dtype)
    r8, rb = _runner(fp8), _runner(base)
    assert r8.kv_caches[0][0].dtype == kv_quant.FP8_KV_DTYPES[kv_dtype]
    assert rb.kv_caches[0][0].dtype == torch.bfloat16
    assert r8.bytes_per_block() * 2 == rb.bytes_per_block()
    assert r8.num_blocks == 2 * rb.num_blocks  # 1 MiB: both divide exactly
    sp = greedy(max_tokens=16, logprobs=5)
    prompts = PROMPTS[2:9]
    want = base.generate(prompts, sp, use_tqdm=False)
    got = fp8.generate(prompts, sp, use_tqdm=False)
    compared = 0
    for prompt, a, b in zip(prompts, got, want, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        compared += compare_top5(ca.token_ids, cb.token_ids, [our_top(d) for d in ca.logprobs],
                                 [our_top(d) for d in cb.logprobs], what=f"{kv_dtype} {prompt[:20]!r}")
    assert compared >= len(prompts) * 4  # drift, but not from the first tokens of every sequence
    assert_engine_clean(fp8)


def test_fp8_outputs_unchanged_by_prefix_caching_and_the_host_tier(tiny):
    """Prefix hits read FP8 blocks, and blocks round-trip through the host tier as bytes: the tokens
    equal those of a run with prefix caching off."""
    ref = tiny.llm("llama", kv_cache_dtype="fp8", enable_prefix_caching=False)
    probe = _runner(tiny.llm("llama", kv_cache_dtype="fp8", num_gpu_blocks_override=8))
    size_gib = 64 * probe.bytes_per_block() / 2**30
    llm = tiny.llm("llama", kv_cache_dtype="fp8", num_gpu_blocks_override=16, max_num_seqs=6,
                   kv_offloading_size=size_gib)
    prompts = [p * 3 for p in PROMPTS[:6]]
    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in ref.generate(prompts, sp, use_tqdm=False)]
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    again = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]  # prefix / host hits
    core = llm.llm_engine.core
    assert core.kv.host.num_loaded > 0, "the test wants blocks loaded back from the host tier"
    assert got == want and again == want
    assert_engine_clean(llm)


def _with_scales(tiny, tmp_path, name: str, tensors: dict[str, torch.Tensor]):
    folder = tmp_path / name
    shutil.copytree(tiny.path("llama"), folder)
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "kv_scales.safetensors"))
    return folder


def _layer0_kv(llm):
    k, v = _runner(llm).kv_caches[0]
    return k.float(), v.float()


def test_checkpoint_kv_scales_are_loaded_and_used(tiny, tmp_path):
    """``self_attn.k_scale`` / ``k_proj.output_scale`` tensors reach every layer; the cache holds K/V divided
    by them (power-of-two scales: exactly the unscaled bytes shifted), and reads multiply them back."""
    scales = {"model.layers.0.self_attn.k_scale": torch.tensor(4.0),
              "model.layers.0.self_attn.v_scale": torch.tensor([0.5]),
              "model.layers.1.self_attn.k_proj.output_scale": torch.tensor([4.0], dtype=torch.bfloat16),
              "model.layers.1.self_attn.v_proj.output_scale": torch.tensor(0.5)}
    folder = _with_scales(tiny, tmp_path, "scaled", scales)
    kw = dict(dtype="float32", device="cpu", kv_cache_dtype="fp8", num_gpu_blocks_override=32, seed=0)
    plain, scaled = LLM(str(tiny.path("llama")), **kw), LLM(str(folder), **kw)
    for layer in _runner(scaled).model.layers:
        assert layer.self_attn.kv_scales == (4.0, 0.5)
    sp = greedy(max_tokens=8, logprobs=5)
    a = plain.generate(PROMPTS[6], sp, use_tqdm=False)[0].outputs[0]
    b = scaled.generate(PROMPTS[6], sp, use_tqdm=False)[0].outputs[0]
    (pk, pv), (sk, sv) = _layer0_kv(plain), _layer0_kv(scaled)
    assert not torch.equal(sk, pk)
    # Same values, shifted by the scale (only FP8 subnormals, |x| < 2^-6, may round differently).
    torch.testing.assert_close(sk * 4.0, pk, rtol=0, atol=2.0**-6 * 4)
    torch.testing.assert_close(sv * 0.5, pv, rtol=0, atol=2.0**-6)
    assert compare_top5(b.token_ids, a.token_ids, [our_top(d) for d in b.logprobs],
                        [our_top(d) for d in a.logprobs], what="scaled") >= 4
    first_a, first_b = a.logprobs[0], b.logprobs[0]
    for tid, lp in first_a.items():
        if tid in first_b:
            assert abs(first_b[tid].logprob - lp.logprob) < 0.05
    plain.shutdown()
    scaled.shutdown()


@pytest.mark.parametrize("tensor,match", [
    (torch.tensor([1.0, 2.0]), "shape mismatch"),
    (torch.tensor(-1.0), "positive finite"),
])
def test_bad_checkpoint_scale_names_the_tensor(tiny, tmp_path, tensor, match):
    folder = _with_scales(tiny, tmp_path, "bad", {"model.layers.1.self_attn.v_scale": tensor})
    with pytest.raises(ValueError, match=match) as exc:
        LLM(str(folder), dtype="float32", device="cpu", kv_cache_dtype="fp8", num_gpu_blocks_override=8)
    assert "model.layers.1.self_attn.v_scale" in str(exc.value)


def test_unknown_kv_cache_dtype_names_the_flag(tiny, capsys):
    with pytest.raises(ValueError, match="kv_cache_dtype .*--kv-cache-dtype"):
        EngineArgs(model=str(tiny.path("llama")), kv_cache_dtype="int8").validate()
    from pagoda.entrypoints.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--kv-cache-dtype", "fp4", "hi"])
    assert "--kv-cache-dtype" in capsys.readouterr().err
    assert EngineArgs(kv_cache_dtype="fp8_e4m3").kv_cache_dtype == "fp8_e4m3"
    assert set(kv_quant.FP8_KV_DTYPES) | {"auto"} == set(KV_CACHE_DTYPES)


def test_fp8_on_a_gpu_without_fp8_conversions_is_a_startup_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match="--kv-cache-dtype fp8_e4m3 needs a GPU of compute capability >= 8.9"):
        kv_quant.check_supported(torch.float8_e4m3fn, torch.device("cuda"), "triton")
    kv_quant.check_supported(torch.float8_e4m3fn, torch.device("cuda"), "torch")  # the torch backend can
    kv_quant.check_supported(torch.bfloat16, torch.device("cuda"), "triton")
