"""MoE decode on one GPU: Qwen3-30B-A3B shape (pagoda vs HF transformers, against the floor) and a
Mixtral-8x7B shape that must fit and run. bf16 dummy weights.

Usage (GPU machine, repo root): python benchmarks/gpu/moe_bench.py [--hf-layers N] [--skip-hf] [--skip-mixtral]
[--small-moe on|off|ab]

Figures (issue 13):
* Qwen3-30B-A3B shape (48 layers, hidden 2048, 128 experts top-8, moe_intermediate 768, 32/4 heads,
  head_dim 128), decode step at batch 1 and 64 (64-token prompts): pagoda's CUDA-graph replay
  (forward + LM head) and its whole engine step, each over its floor = bytes that must move
  (attention + router + LM-head weights, the weights of the experts actually selected in that
  step — counted from the routing of an eager step of the same batch — and the KV cache read)
  divided by the copy bandwidth measured here (read+write bytes of a 2 GiB copy).
* The peer: HF transformers on the same shape (its default experts implementation, then
  ``grouped_mm`` where it has one), ``--hf-layers`` layers (default all 48), same prompt lengths,
  decode step with its DynamicCache; scaled to 48 layers when fewer are run (printed as such).
* ``--small-moe``: the fused MoE's small-batch path (pagoda/layers/fused_moe/small_moe.py) ``on`` (pagoda's
  default: it runs where ``SMALL_MOE_TABLE`` covers the step's pairs), ``off`` (the grouped path at every
  batch), or ``ab``: on, then the Qwen3 shape again at batch 1 with it off, in the same call (a new engine, so
  its CUDA graphs are captured with the switch off).
* ``--fused-qk-norm``: Qwen3's q/k RMSNorm inside the rotary kernel (``pagoda.models.llama.FUSED_QK_NORM``)
  ``on`` (default), ``off``, or ``ab``: on, then the Qwen3 shape at batch 1 again with it off (a new engine).
* ``--dense-gemv`` the same for the bf16 GEMV of few-row linears (``pagoda.layers.dense_gemv.ENABLED``), with
  ``--gemv-table JSON`` (``dense_gemv_sweep.py --json``'s winners) as its table.
* ``--short-split-tiles`` the same for the split-KV decode kernel's 32-key tiles on short splits
  (``pagoda.attention.triton_kernels.SHORT_SPLIT_TILES``).
* ``--quantization none fp8 gptq``: the Qwen3 shape once per value (``fp8``: online per-channel FP8 of every
  linear but the router and LM head, experts W8A16 in the fused MoE kernels; ``gptq``: dummy 4-bit GPTQ with
  groups of 128). The floor counts each quantized weight's bytes (codes plus scales/offsets).
* Mixtral-8x7B shape (32 layers, hidden 4096, 8 experts top-2, inter 14336, 32/8 heads): loads on
  one GPU (weights GiB printed) and runs decode steps at batch 1 and 8.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
    "moe_intermediate_size": 768, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "tie_word_embeddings": False, "attention_bias": False, "torch_dtype": "bfloat16",
    "bos_token_id": 0, "eos_token_id": 2,
}
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False, "sliding_window": None,
    "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}
PROMPT_LEN = 64
BF16 = 2


def copy_bandwidth() -> float:
    """Bytes per second of a device copy, counting read + write."""
    from bandwidth import device_copy_bandwidth  # benchmarks/gpu/bandwidth.py, beside this script

    return device_copy_bandwidth(2**30)


def model_folder(cfg: dict, name: str) -> Path:
    from tiny_models import build_tokenizer

    out = Path(tempfile.mkdtemp()) / name
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg))
    build_tokenizer(out)
    return out


WEIGHT_BYTES = {"none": 2.0, "fp8": 1.0, "gptq": 0.5 + 2 * 2 / 128}
"""Bytes per weight of a quantized linear (codes, plus per-group scale and offset in bf16 for GPTQ g128; FP8's
per-row float32 scale is under 0.3 % and left out)."""


def dense_bytes(cfg: dict, quant: str = "none") -> int:
    """Per decode step, whatever the batch: attention (qkv, o, quantized as ``quant``) and router weights of every
    layer (bf16), LM head (bf16)."""
    h, d = cfg["hidden_size"], cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    experts = cfg.get("num_experts") or cfg["num_local_experts"]
    attn = WEIGHT_BYTES[quant] * (h * (q + 2 * kv) + q * h)
    return int(cfg["num_hidden_layers"] * (attn + BF16 * experts * h) + BF16 * cfg["vocab_size"] * h)


def expert_bytes(cfg: dict, quant: str = "none") -> int:
    inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    return int(WEIGHT_BYTES[quant] * 3 * cfg["hidden_size"] * inter)


def kv_bytes(cfg: dict, batch: int, ctx: int) -> int:
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return BF16 * 2 * cfg["num_key_value_heads"] * d * cfg["num_hidden_layers"] * batch * ctx


def start_batch(eng, tag: str, b: int, max_tokens: int = 400) -> None:
    from pagoda import SamplingParams

    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
    for i in range(b):
        eng.add_request(f"{tag}-{i}", {"prompt_token_ids": [100 + (i * 7 + j) % 5000 for j in range(PROMPT_LEN)]},
                        sp, final_only=True)
    while eng.core.scheduler.waiting or any(r.num_output_tokens == 0 for r in eng.core.scheduler.running):
        eng.step()


def selected_experts_in_one_eager_step(eng, moe_layers: int) -> int:
    """Sum over layers of the distinct experts the batch's next decode step routes to (eager step)."""
    from pagoda.layers.fused_moe import triton_moe

    seen: list[int] = []
    orig = triton_moe.fused_topk

    def spy(logits, rc):
        w, ids = orig(logits, rc)
        seen.append(int(torch.unique(ids).numel()))
        return w, ids

    # Every graph kind off: a decode step otherwise replays a graph (a batch-1 one the single-request chunk graph),
    # the spy never runs and the floor counted 0 experts (the old bug).
    runner = eng.core.runner
    kinds = ("graphs", "chunk_graphs", "mixed_graphs", "verify_graphs")
    saved = {k: getattr(runner, k) for k in kinds}
    for k in kinds:
        setattr(runner, k, None)
    triton_moe.fused_topk = spy
    try:
        eng.step()
    finally:
        triton_moe.fused_topk = orig
        for k, v in saved.items():
            setattr(runner, k, v)
    if len(seen) != moe_layers:
        raise RuntimeError(f"expert count spy saw {len(seen)} MoE layers: the step did not run eagerly")
    return sum(seen)


def time_graph_and_steps(eng, b: int) -> tuple[float, float]:
    """(ms per decode-graph replay, ms per engine step) for the running batch of ``b``."""
    g = eng.core.runner.graphs
    size = next(s for s in g.sizes if s >= b)
    for _ in range(3):
        g.graphs[size].replay()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20):
        g.graphs[size].replay()
    e.record()
    torch.cuda.synchronize()
    replay = s.elapsed_time(e) / 20
    eng.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        eng.step()
    torch.cuda.synchronize()
    return replay, (time.perf_counter() - t0) / 20 * 1e3


def run_pagoda(cfg: dict, folder: Path, batches: list[int], bw: float, label: str, quant: str = "none") -> dict:
    from pagoda.config import EngineArgs
    from pagoda.engine.llm_engine import LLMEngine
    from pagoda.models.loader import weight_nbytes

    t0 = time.perf_counter()
    eng = LLMEngine.from_engine_args(EngineArgs(model=str(folder), load_format="dummy", dtype="bfloat16",
                                                max_model_len=1024, max_num_seqs=max(batches),
                                                quantization=None if quant == "none" else quant))
    print(f"[{label}] engine start {time.perf_counter() - t0:.1f} s")
    gib = weight_nbytes(eng.core.runner.model) / 2**30
    print(f"[{label}] pagoda: weights {gib:.1f} GiB on one GPU, "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB peak allocated")
    res = {"weights_gib": gib}
    for b in batches:
        start_batch(eng, f"{label}{b}", b)
        distinct = selected_experts_in_one_eager_step(eng, cfg["num_hidden_layers"])
        replay, step = time_graph_and_steps(eng, b)
        ctx = PROMPT_LEN + 30
        floor_bytes = dense_bytes(cfg, quant) + distinct * expert_bytes(cfg, quant) + kv_bytes(cfg, b, ctx)
        floor_ms = floor_bytes / bw * 1e3
        print(f"[{label}] batch {b}: decode graph {replay:.3f} ms ({replay / floor_ms:.2f}x floor), engine step "
              f"{step:.3f} ms ({step / floor_ms:.2f}x floor); floor {floor_ms:.3f} ms = {floor_bytes / 1e9:.2f} GB "
              f"({distinct / cfg['num_hidden_layers']:.1f} distinct experts/layer selected)")
        res[f"batch{b}"] = {"graph_ms": replay, "step_ms": step, "floor_ms": floor_ms, "floor_gb": floor_bytes / 1e9,
                            "distinct_experts_per_layer": distinct / cfg["num_hidden_layers"]}
        eng.abort_request([f"{label}{b}-{i}" for i in range(b)])
    release_engine(eng)
    return res


def release_engine(eng) -> None:
    """Shut ``eng`` down and give its GPU memory back before the next engine of the same process starts."""
    eng.shutdown()
    del eng
    gc.collect()
    torch.cuda.empty_cache()


def hf_decode_ms(model, b: int, steps: int = 6) -> float:
    from transformers import DynamicCache

    ids = torch.randint(100, 5000, (b, PROMPT_LEN), device="cuda")
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        times = []
        for _ in range(steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:])


def run_hf(cfg: dict, layers: int, batches: list[int]) -> dict:
    import transformers

    res: dict = {}
    for impl in (None, "grouped_mm"):
        fields = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")}
        hcfg = transformers.Qwen3MoeConfig(**{**fields, "num_hidden_layers": layers})
        kwargs = {} if impl is None else {"experts_implementation": impl}
        try:
            with torch.device("cuda"):
                model = transformers.Qwen3MoeForCausalLM._from_config(hcfg, dtype=torch.bfloat16, **kwargs).eval()
        except Exception as exc:  # an older transformers without this implementation
            print(f"[hf] experts_implementation={impl}: unavailable ({type(exc).__name__}: {exc})")
            continue
        used = getattr(model.config, "_experts_implementation", None) or "default"
        for b in batches:
            ms = hf_decode_ms(model, b)
            scaled = ms * cfg["num_hidden_layers"] / layers
            note = "" if layers == cfg["num_hidden_layers"] else f" on {layers} layers, scaled to 48: {scaled:.1f} ms"
            print(f"[hf] transformers {transformers.__version__} experts={used}: batch {b} decode step {ms:.1f} ms"
                  + note)
            res[f"{used}_batch{b}"] = {"ms": ms, "ms_48_layers": scaled, "layers": layers}
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-layers", type=int, default=48)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-mixtral", action="store_true")
    ap.add_argument("--small-moe", choices=("on", "off", "ab"), default="on")
    ap.add_argument("--fused-qk-norm", choices=("on", "off", "ab"), default="on")
    ap.add_argument("--dense-gemv", choices=("on", "off", "ab"), default="on")
    ap.add_argument("--short-split-tiles", choices=("on", "off", "ab"), default="on")
    ap.add_argument("--gemv-table", default=None)
    ap.add_argument("--quantization", nargs="+", choices=tuple(WEIGHT_BYTES), default=["none"])
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    from pagoda.attention import triton_kernels
    from pagoda.layers import dense_gemv
    from pagoda.layers.fused_moe import small_moe
    from pagoda.models import llama

    switches = {"small_moe": (small_moe, "SMALL_MOE_ENABLED"), "fused_qk_norm": (llama, "FUSED_QK_NORM"),
                "dense_gemv": (dense_gemv, "ENABLED"), "short_split_tiles": (triton_kernels, "SHORT_SPLIT_TILES")}
    for name, (module, attr) in switches.items():
        setattr(module, attr, getattr(args, name) != "off")
    if args.gemv_table:
        from dense_gemv_sweep import table_from_json  # beside this script

        dense_gemv.GEMV_TABLE = table_from_json(args.gemv_table)
    t0 = time.perf_counter()
    bw = copy_bandwidth()
    print(f"copy bandwidth (read+write): {bw / 1e9:.0f} GB/s on {torch.cuda.get_device_name()}")
    results: dict = {"copy_bw_gbs": bw / 1e9, "dense_gemv_table": len(dense_gemv.GEMV_TABLE)}
    qwen_folder = model_folder(QWEN3_30B_A3B, "qwen3-30b-a3b-shape")
    for quant in args.quantization:
        suffix = "" if quant == "none" else f"_{quant}"
        results["qwen3_30b_a3b" + suffix] = run_pagoda(QWEN3_30B_A3B, qwen_folder, [1, 64], bw,
                                                       "qwen3-30b-a3b" + suffix.replace("_", "-"), quant)
    for name, (module, attr) in switches.items():  # "ab": batch 1 again with the switch off (a new engine)
        results[name] = getattr(args, name)
        if getattr(args, name) == "ab":
            setattr(module, attr, False)
            label = "qwen3-30b-a3b-" + name.replace("_", "-") + "-off"
            results["qwen3_30b_a3b_" + name + "_off"] = run_pagoda(QWEN3_30B_A3B, qwen_folder, [1], bw, label)
            setattr(module, attr, True)
    if not args.skip_hf:
        results["hf"] = run_hf(QWEN3_30B_A3B, args.hf_layers, [1, 64])
    if not args.skip_mixtral:
        results["mixtral_8x7b"] = run_pagoda(MIXTRAL_8X7B, model_folder(MIXTRAL_8X7B, "mixtral-8x7b-shape"),
                                             [1, 8], bw, "mixtral-8x7b")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
