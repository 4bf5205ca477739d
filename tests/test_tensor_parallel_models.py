"""Tensor parallelism beyond the dense Llama (CPU, gloo, fp32, greedy): a tied-embedding Llama whose vocabulary does
not split evenly (vocabulary-parallel embedding and LM head, padded), GPTQ act-order and AWQ checkpoints written by
GPTQModel, an FP8 checkpoint, a compressed-tensors asymmetric W4A16 one, Qwen3-MoE (also with GPTQ experts) and
Gemma 2. Each gives TP=2 the
same tokens as TP=1 (logprobs within 1e-4) and follows HF (or the format library's own dequantization) by the top-5
rule. Bad splits fail at start-up naming the flag.

One TP=2 engine per model (the ranks' process start dominates); the shared TP=1 engines come from ``tiny``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_checks import PROMPTS, assert_outputs_close, compare_top5, greedy, hf_greedy, our_top, top_ids

ATOL = 1e-4
KW = {"max_num_batched_tokens": 48, "max_num_seqs": 8, "device": "cpu", "dtype": "float32"}
PARAMS = greedy(max_tokens=8, logprobs=5, prompt_logprobs=2)
N_PROMPTS = 3


def _generate(folder: Path, tp: int, **kw):
    from pagoda import LLM

    llm = LLM(str(folder), tensor_parallel_size=tp, **{**KW, **kw})
    try:
        return llm.generate(PROMPTS[2:2 + N_PROMPTS], PARAMS, use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()


def _assert_tp_equal(one, two) -> None:
    """Same tokens, logprobs and prompt logprobs within ATOL."""
    assert_outputs_close(one, two, ATOL, prompt_keys="common")


def _assert_follows_hf(outs, hf_model, near_tie: float = 1e-3) -> None:
    for out in outs:
        ref = hf_greedy(hf_model, out.prompt_token_ids, len(out.outputs[0].token_ids))
        comp = out.outputs[0]
        compare_top5(comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
                     [top_ids(r) for r in ref.step_logprobs], ref.step_logprobs, near_tie, what=out.prompt[:20])


def _hf(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _check(folder: Path, ref_folder: Path | None = None) -> None:
    one, two = _generate(folder, 1), _generate(folder, 2)
    _assert_tp_equal(one, two)
    _assert_follows_hf(two, _hf(ref_folder or folder))


# --------------------------------------------------------------------------- unquantized models
def test_tied_llama_with_odd_vocab(tmp_path):
    """vocab_size 401 over 2 ranks: 201 rows each, the last rank's final row is padding; the head is the embedding."""
    from tiny_models import build_tiny_model

    folder = build_tiny_model(tmp_path / "tied-odd", "llama", tie=True, extra_vocab=1)
    _check(folder)


@pytest.mark.parametrize("arch", ["qwen3moe", "gemma2"])
def test_moe_and_gemma(tiny, arch):
    """Qwen3-MoE: every expert split along moe_intermediate_size; Gemma 2: soft-caps, sliding windows, tied head."""
    _check(tiny.path(arch))


# --------------------------------------------------------------------------- quantized checkpoints
@pytest.fixture(scope="module")
def gptq_awq(gptq_checkpoints) -> Path:
    """GPTQ act-order (4-bit, group 32, asymmetric) and AWQ (group 32) checkpoints written by GPTQModel, with the
    library's own dequantization as the dense reference (tests/conftest.py, tests/quant_checkpoints.py)."""
    return gptq_checkpoints


@pytest.mark.parametrize("variant", ["gptq-b4-g32-desc-asym", "awq-g32"])
def test_gptq_act_order_and_awq(gptq_awq, variant):
    """Act-order: o_proj/down_proj ranks regroup their columns (quantization/act_order.py)."""
    _check(gptq_awq / variant, gptq_awq / f"{variant}-dense")


def test_quantized_moe(tiny, tmp_path):
    """GPTQ 4-bit experts (groups of 8): each rank keeps its gate/up rows and its down inputs' whole groups."""
    from moe_quant_checkpoints import write_quantized

    qdir, ddir = write_quantized(tiny.path("qwen3moe"), tmp_path, "gptq-b4-g8-sym")
    _check(qdir, ddir)


def test_fp8_checkpoint(tiny, tmp_path):
    """Per-tensor weight scales (repeated per shard) and a static input scale: whole on every rank."""
    from test_quant_fp8 import _write_fp8_checkpoint

    folder = _write_fp8_checkpoint(tiny.path("llama"), tmp_path / "fp8", per_tensor=True, static=True)
    one, two = _generate(folder, 1), _generate(folder, 2)
    _assert_tp_equal(one, two)
    _assert_follows_hf(two, tiny.hf("llama"), near_tie=None)  # FP8 against the dense model: the top-5 rule


def test_compressed_tensors_asym_w4a16(tiny, tmp_path):
    """Packed zero points and group scales split with the input of row-parallel layers."""
    pytest.importorskip("compressed_tensors")
    from ct_models import build_ct_checkpoint

    folder = build_ct_checkpoint(tiny.path("llama"), tmp_path / "ct", "w4a16-asym")
    one, two = _generate(folder, 1), _generate(folder, 2)
    _assert_tp_equal(one, two)


def test_act_order_regrouping_is_exact():
    """A rank's columns of scattered groups, regrouped and padded with zero-weight columns: the same product."""
    from pagoda.quantization.act_order import regroup_columns
    from pagoda.quantization.int_weight import int_weight_linear, make_int_weight

    torch.manual_seed(0)
    n, k_full, gs, bits = 8, 64, 16, 4
    g_idx = torch.randperm(k_full) % (k_full // gs)  # act-order: every group spread over the input
    codes = torch.randint(0, 16, (n, k_full))
    zeros = torch.randint(0, 16, (n, k_full // gs))
    scales = torch.rand(n, k_full // gs) + 0.5
    dense = (codes - zeros[:, g_idx]) * scales[:, g_idx]
    x = torch.randn(3, k_full)
    for lo in (0, k_full // 2):  # the two ranks' halves of the input
        part = slice(lo, lo + k_full // 2)
        c2, groups, perm = regroup_columns(codes[:, part], zeros, g_idx[part], gs, "test")
        w = make_int_weight(c2, scales[:, groups], -zeros[:, groups].float() * scales[:, groups], bits, gs,
                            torch.float32, perm)
        torch.testing.assert_close(int_weight_linear(x[:, part], w, None), x[:, part] @ dense[:, part].t())


def _row_parallel_sum(method_factory, tensors: dict[str, torch.Tensor], k: int, n: int, x: torch.Tensor):
    """The unsharded layer's output and the sum of its two row-parallel ranks' partial outputs (no process group:
    the all-reduce is the sum taken here)."""
    from pagoda.distributed.parallel_state import TPGroup
    from pagoda.layers.linear import Linear, process_weights_after_loading
    from pagoda.layers.parallel_linear import RowParallelLinear

    full = Linear(k, n, linear_method=method_factory())
    ranks = [RowParallelLinear(k, n, TPGroup(r, 2), linear_method=method_factory()) for r in range(2)]
    for layer in (full, *ranks):
        for name, t in tensors.items():
            layer.load_shard(name, t, None)
        process_weights_after_loading(layer)
    half = k // 2  # each rank multiplies its half of the input
    return Linear.forward(full, x), sum(Linear.forward(r, x[:, i * half:(i + 1) * half]) for i, r in enumerate(ranks))


def test_compressed_tensors_act_order_row_parallel():
    """compressed-tensors pack-quantized, asymmetric, actorder group: each rank regroups its columns."""
    from pagoda.quantization.compressed_tensors_methods import PackQuantizedLinearMethod
    from pagoda.quantization.packing import pack_int32

    torch.manual_seed(1)
    n, k, gs, bits = 16, 64, 16, 4
    tensors = {
        "weight_packed": pack_int32(torch.randint(0, 16, (n, k)), bits, dim=1),
        "weight_scale": torch.rand(n, k // gs) * 0.02 + 0.01,
        "weight_zero_point": pack_int32(torch.randint(0, 16, (n, k // gs)), bits, dim=0),
        "weight_g_idx": (torch.randperm(k) % (k // gs)).to(torch.int32),
        "weight_shape": torch.tensor([n, k]),
    }
    full, parts = _row_parallel_sum(lambda: PackQuantizedLinearMethod(bits, gs, False, True, "test"), tensors, k, n,
                                    torch.randn(3, k))
    torch.testing.assert_close(parts, full, rtol=1e-5, atol=1e-6)


def test_int8_w8a8_row_and_column_parallel():
    """compressed-tensors int-quantized W8A8: per-channel scales whole on row-parallel ranks, split on column ones."""
    from pagoda.distributed.parallel_state import TPGroup
    from pagoda.layers.linear import Linear
    from pagoda.layers.parallel_linear import ColumnParallelLinear
    from pagoda.quantization.compressed_tensors_methods import Int8W8A8LinearMethod

    torch.manual_seed(2)
    n, k = 16, 32
    tensors = {"weight": torch.randint(-127, 128, (n, k), dtype=torch.int8), "weight_scale": torch.rand(n, 1) * 0.01}
    x = torch.randn(3, k)
    full, parts = _row_parallel_sum(Int8W8A8LinearMethod, tensors, k, n, x)
    # Row-parallel: each rank quantizes its own slice of x per token, so the sum differs by that rounding only.
    torch.testing.assert_close(parts, full, rtol=0.02, atol=0.02)
    cols = [ColumnParallelLinear(k, (n,), TPGroup(r, 2), linear_method=Int8W8A8LinearMethod()) for r in range(2)]
    for c in cols:
        for name, t in tensors.items():
            c.load_shard(name, t, None)
    torch.testing.assert_close(torch.cat([Linear.forward(c, x) for c in cols], dim=-1), full)


# --------------------------------------------------------------------------- bad input
def _qcfg(name: str, qcfg: dict):
    from pagoda.quantization import get_quantization_config_class

    return get_quantization_config_class(name).from_config(qcfg)


@pytest.mark.parametrize("cfg,qc,match", [
    ({"moe_intermediate_size": 51}, None, "--tensor-parallel-size 2 does not divide the model's moe_intermediate_size"),
    ({"shared_expert_intermediate_size": 31}, None, "does not divide the model's shared_expert_intermediate_size"),
    ({}, ("awq", {"bits": 4, "group_size": 64}),
     r"--tensor-parallel-size 2: each rank's o_proj input .* is 32, not a multiple of 64 \(awq group_size 64"),
    ({"intermediate_size": 96}, ("gptq", {"bits": 4, "group_size": 32}),
     r"--tensor-parallel-size 2: each rank's down_proj input .* is 48, not a multiple of 32"),
    ({"moe_intermediate_size": 48}, ("gptq", {"bits": 4, "group_size": 32}),
     r"each rank's down_proj input \(moe_intermediate_size\) is 24, not a multiple of 32"),
    ({}, ("fp8", {"quant_method": "fp8", "weight_block_size": [64, 64]}),
     r"--tensor-parallel-size 2: each rank's o_proj input .* not a multiple of 64 \(fp8 weight_block_size"),
])
def test_bad_splits_fail_at_start_up_naming_the_flag(cfg, qc, match):
    from pagoda.distributed.support import check_tensor_parallel

    hf = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64, "intermediate_size": 128, **cfg}
    with pytest.raises(ValueError, match=match):
        check_tensor_parallel(2, None, arch="Qwen2MoeForCausalLM", model_impl="pagoda", quantized=qc is not None,
                              pooling=False, device=torch.device("cpu"), hf_config=hf, kv_offloading=False,
                              async_scheduling=None, quant_config=_qcfg(*qc) if qc else None)


def test_act_order_needs_no_group_split():
    """GPTQ act-order keeps every group's scales on every rank: only the packing must divide each rank's input."""
    from pagoda.distributed.support import check_quantized_split

    hf = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64, "intermediate_size": 96}
    check_quantized_split(2, _qcfg("gptq", {"bits": 4, "group_size": 32, "desc_act": True}), hf)


def test_gguf_is_refused_naming_the_flag():
    from pagoda.distributed.support import check_quantized_split
    from pagoda.quantization.gguf import GGUFConfig

    qc = GGUFConfig.__new__(GGUFConfig)  # no GGUF file needed: the refusal depends on the format alone
    with pytest.raises(ValueError, match="--tensor-parallel-size: .*do not split over ranks yet"):
        check_quantized_split(2, qc, {"num_attention_heads": 4, "hidden_size": 64})
