"""Qwen3's per-head q/k RMSNorm fused into the rotary (+KV write) kernel, against the three launches it
replaces: ``RMSNorm(q)``, ``RMSNorm(k)`` (pagoda.layers.norm, i.e. torch's ``rms_norm``), then
``rotary_inplace`` (CPU: Triton interpreter; on a GPU compiled; tests/gpu/test_gpu_qk_norm_rope.py runs the
model shapes there).

Bitwise on inputs whose float32 sum of squares is exact in any order (multiples of 1/16 up to 4): the one
thing the fused kernel does its own way is the order of that sum, so on such inputs every rounding point
is checked. On general inputs a different order moves a row's rstd by an ulp now and then.

Half precision: float16 here, since Triton's interpreter rounds float32 -> bfloat16 toward zero (its own
bit-level cast, not the GPU's round-to-nearest-even) while float16 goes through numpy's correct cast; the
bfloat16 bitwise check runs compiled on the GPU (tests/gpu/test_gpu_qk_norm_rope.py).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from pagoda.layers import fused_kernels as fk  # noqa: E402
from pagoda.layers.norm import RMSNorm  # noqa: E402
from pagoda.layers.rotary import RotaryEmbedding  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def bits(x: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (so -0.0 and +0.0 differ, as they would in a later matmul's sign)."""
    x = x.contiguous()
    return x.view(torch.uint8) if x.element_size() == 1 else x.view(INT_VIEW[x.dtype])


def make_case(T: int, hq: int, hk: int, d: int, dtype: torch.dtype, grid: bool, seed: int, device: str = DEV):
    """qkv [T, (hq + 2 hk) d], the two norms (weights around 1), the rope table, positions."""
    g = torch.Generator().manual_seed(seed)
    n = (hq + 2 * hk) * d
    if grid:  # multiples of 1/16 in [-4, 4]: squares sum exactly in float32 in any order (<= 2^19 / 256)
        qkv = torch.randint(-64, 65, (T, n), generator=g).float() / 16
    else:
        qkv = torch.randn(T, n, generator=g) * 3
    norms = []
    for _ in range(2):
        nm = RMSNorm(d, 1e-6)
        with torch.no_grad():
            nm.weight.copy_(1 + 0.3 * torch.randn(d, generator=g))
        norms.append(nm.to(device=device, dtype=dtype))
    rope = RotaryEmbedding(d, 256, {"rope_theta": 1e6, "rope_type": "default"}, dtype).to(device)
    pos = torch.randint(0, 256, (T,), generator=g).to(device)
    return qkv.to(device=device, dtype=dtype), norms[0], norms[1], rope, pos


def run(qkv, hq, hk, d, qn, kn, rope, pos, cache_dtype, fused: bool, scales=(1.0, 1.0)):
    """One path over a copy of ``qkv``: returns (q, k, k_cache, v_cache) after it (caches None when not written).

    ``fused``: one ``rotary_inplace`` with the norms; else the norm modules, then ``rotary_inplace``."""
    qkv = qkv.clone()
    T = qkv.shape[0]
    q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    q, k, v = q.view(T, hq, d), k.view(T, hk, d), v.view(T, hk, d)
    kw: dict = {"q_norm": (qn.weight, qn.eps), "k_norm": (kn.weight, kn.eps)} if fused else {}
    if not fused:
        q, k = qn(q), kn(k)
    caches = (None, None)
    if cache_dtype is not None:
        bs = 4
        nblocks = T // bs + 2
        kc = torch.zeros(nblocks, bs, hk, d, dtype=cache_dtype, device=qkv.device)
        vc = torch.zeros_like(kc)
        slots = torch.randperm(nblocks * bs, generator=torch.Generator().manual_seed(T))[:T].to(qkv.device)
        slots[min(1, T - 1)] = -1  # a padding row: not written
        fk.rotary_inplace(q, k, rope.cos, rope.sin, pos, v, kc, vc, slots, *scales, **kw)
        caches = (kc, vc)
    else:
        fk.rotary_inplace(q, k, rope.cos, rope.sin, pos, **kw)
    return q, k, *caches


def assert_same_bits(got, want):
    for a, b in zip(got, want, strict=True):
        if b is None:
            assert a is None
            continue
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(bits(a), bits(b)), f"{(bits(a) != bits(b)).sum().item()} of {a.numel()} values differ"


HALF_DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float16


@pytest.mark.parametrize("dtype", [torch.float32, HALF_DTYPE])
@pytest.mark.parametrize("hq,hk,d", [(4, 2, 64), (6, 2, 128)])
@pytest.mark.parametrize("cache", ["none", "model", "fp8"])
def test_fused_qk_norm_equals_three_launches_bitwise(dtype, hq, hk, d, cache):
    cache_dtype = {"none": None, "model": dtype, "fp8": torch.float8_e4m3fn}[cache]
    qkv, qn, kn, rope, pos = make_case(3, hq, hk, d, dtype, grid=True, seed=d + hq)
    scales = (0.5, 0.25) if cache == "fp8" else (1.0, 1.0)
    want = run(qkv, hq, hk, d, qn, kn, rope, pos, cache_dtype, fused=False, scales=scales)
    got = run(qkv, hq, hk, d, qn, kn, rope, pos, cache_dtype, fused=True, scales=scales)
    assert_same_bits(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_qk_norm_close_on_general_inputs(dtype):
    """Any input: only the float32 sum-of-squares order differs (an ulp of rstd at most). In bfloat16 on the
    interpreter also its truncating cast of the normalised values (an ulp each, values of order 1)."""
    hq, hk, d = 6, 2, 128
    qkv, qn, kn, rope, pos = make_case(4, hq, hk, d, dtype, grid=False, seed=7)
    want = run(qkv, hq, hk, d, qn, kn, rope, pos, dtype, fused=False)
    got = run(qkv, hq, hk, d, qn, kn, rope, pos, dtype, fused=True)
    tol = {"rtol": 2**-6, "atol": 2**-5} if dtype == torch.bfloat16 else {}
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)  # else torch's per-dtype tolerances: about an ulp


def test_attention_fuses_only_plain_rmsnorm_of_q_dtype(monkeypatch):
    """The model uses the fused norm only for pagoda's RMSNorm with weights in q's dtype; Gemma's (1 + w)
    norm, or a weight of another dtype (which RMSNorm casts first), keep the norm modules."""
    from pagoda.models import llama
    from pagoda.models.gemma import GemmaRMSNorm
    from pagoda.models.llama import Attention, LlamaShape

    s = LlamaShape(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                   head_dim=16, rms_norm_eps=1e-6, max_position=64, tie_word_embeddings=False, qkv_bias=False,
                   qk_norm=True, hidden_act="silu")
    rope = RotaryEmbedding(16, 64, {"rope_theta": 1e4, "rope_type": "default"}, torch.float32)
    q = torch.zeros(1, 2, 16)
    attn = Attention(s, rope, 0)
    args = attn._fused_qk_norm_args(q)
    assert args["q_norm"][0] is attn.q_norm.weight and args["k_norm"] == (attn.k_norm.weight, 1e-6)
    assert attn._fused_qk_norm_args(q.bfloat16()) == {}
    assert Attention(s, rope, 0, norm_cls=GemmaRMSNorm)._fused_qk_norm_args(q) == {}
    monkeypatch.setattr(llama, "FUSED_QK_NORM", False)  # the benchmarks' A/B switch
    assert attn._fused_qk_norm_args(q) == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter check; tests/gpu/ covers CUDA")
def test_tiny_qwen3_fused_path_normalises_in_the_rotary_kernel(tmp_path, monkeypatch):
    """A tiny Qwen3 with the fused kernels on takes the fused norm (every layer, every step) and keeps the
    unfused model's greedy tokens (float32)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build_tiny_model

    from pagoda import LLM, SamplingParams
    from pagoda.models.llama import Attention

    calls = {"fused": 0}
    orig = Attention._fused_qk_norm_args

    def counting(self, q):
        args = orig(self, q)
        calls["fused"] += bool(args)
        return args

    monkeypatch.setattr(Attention, "_fused_qk_norm_args", counting)
    folder = build_tiny_model(tmp_path / "qwen3", "qwen3")
    prompts = ["The quick brown fox", "héllo"]
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    llm = LLM(str(folder), dtype="float32", device="cpu", num_gpu_blocks_override=32)
    base = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    assert calls["fused"] == 0  # unfused: the norm modules
    model = llm.llm_engine.core.runner.model
    model.enable_fused_kernels()
    fused = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    assert calls["fused"] >= model.shape.num_layers * sp.max_tokens
    assert fused == base
