"""``pagoda bench throughput``: offline throughput of a seeded workload, optionally vs HF.

All requests are submitted at once (``ignore_eos``, fixed output lengths). Prints
requests/s, output tokens/s and total tokens/s; ``--backend hf`` runs the same token
ids through HF transformers ``generate`` in batches of ``--hf-batch-size`` for a
side-by-side ratio.
"""

from __future__ import annotations

import argparse
import json
import time


def add_args(p: argparse.ArgumentParser) -> None:
    from pagoda.entrypoints.cli import add_engine_args

    add_engine_args(p)
    p.add_argument("--dataset", choices=["random", "sharegpt"], default="random", help="workload shape")
    p.add_argument("--num-prompts", type=int, default=32, help="number of requests")
    p.add_argument("--input-len", type=int, default=56, help="prompt length (random dataset)")
    p.add_argument("--output-len", type=int, default=128, help="output length (random dataset)")
    p.add_argument("--range-ratio", type=float, default=0.0, help="lengths drawn from [len*(1-r), len*(1+r)]")
    p.add_argument("--backend", choices=["pagoda", "hf", "both"], default="pagoda", help="engine(s) to run")
    p.add_argument("--hf-batch-size", type=int, default=None, help="HF generate batch size (default: all)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up iterations (small, untimed)")
    p.add_argument("--output-json", type=str, default=None, help="write results to this JSON file")


def _workload(args, vocab_size: int):
    from pagoda.benchmarks.datasets import random_requests, sharegpt_like_requests

    if args.dataset == "sharegpt":
        return sharegpt_like_requests(args.num_prompts, vocab_size, args.seed)
    r = args.range_ratio

    def rng(n: int) -> tuple[int, int]:
        return max(1, int(n * (1 - r))), max(1, int(n * (1 + r)))

    return random_requests(args.num_prompts, rng(args.input_len), rng(args.output_len), vocab_size, args.seed)


def _report(name: str, reqs, seconds: float) -> dict:
    n_in = sum(len(r.prompt_token_ids) for r in reqs)
    n_out = sum(r.output_len for r in reqs)
    res = {
        "backend": name,
        "requests": len(reqs),
        "seconds": round(seconds, 3),
        "requests_per_s": len(reqs) / seconds,
        "output_tokens_per_s": n_out / seconds,
        "total_tokens_per_s": (n_in + n_out) / seconds,
        "prompt_tokens": n_in,
        "output_tokens": n_out,
    }
    print(
        f"[{name}] {len(reqs)} requests in {seconds:.2f} s: {res['requests_per_s']:.2f} req/s, "
        f"{res['output_tokens_per_s']:.1f} output tok/s, {res['total_tokens_per_s']:.1f} total tok/s"
    )
    return res


def run_pagoda(args, reqs, llm=None) -> dict:
    from pagoda import LLM, SamplingParams
    from pagoda.entrypoints.cli import engine_kwargs

    if llm is None:
        llm = LLM(**engine_kwargs(args))
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = [SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True, detokenize=True) for r in reqs]
    if args.warmup:
        # Warm up on prompts outside the workload, so the prefix cache holds none of it.
        warm = [{"prompt_token_ids": [7 + i] * 24} for i in range(2)]
        llm.generate(warm, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    assert all(len(o.outputs[0].token_ids) == r.output_len for o, r in zip(outs, reqs))
    return _report("pagoda", reqs, dt)


def run_hf(args, reqs) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from pagoda.config import EngineArgs

    cfg = EngineArgs(model=args.model, dtype=args.dtype, load_format="dummy" if args.load_format == "dummy" else "auto",
                     device=args.device).create_config()
    if args.load_format == "dummy":
        from transformers import AutoConfig

        hf_cfg = AutoConfig.from_pretrained(str(cfg.model_path))
        with torch.device(cfg.device):
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=cfg.dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(cfg.model_path), dtype=cfg.dtype).to(cfg.device)
    model.eval()
    bsz = args.hf_batch_size or len(reqs)
    pad = 0
    t_total = 0.0
    with torch.inference_mode():
        # warm-up
        model.generate(torch.tensor([reqs[0].prompt_token_ids], device=cfg.device), max_new_tokens=2, do_sample=False,
                       pad_token_id=pad)
        for i in range(0, len(reqs), bsz):
            chunk = reqs[i : i + bsz]
            L = max(len(r.prompt_token_ids) for r in chunk)
            ids = torch.full((len(chunk), L), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for j, r in enumerate(chunk):  # left padding
                ids[j, L - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
                mask[j, L - len(r.prompt_token_ids) :] = 1
            new = max(r.output_len for r in chunk)
            t0 = time.perf_counter()
            model.generate(ids.to(cfg.device), attention_mask=mask.to(cfg.device), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=pad)
            if cfg.device.type == "cuda":
                torch.cuda.synchronize()
            t_total += time.perf_counter() - t0
    return _report("hf", reqs, t_total)


def main(args: argparse.Namespace) -> None:
    from pagoda.config import EngineArgs

    cfg_probe = EngineArgs(model=args.model, load_format=args.load_format).create_config()
    reqs = _workload(args, int(cfg_probe.hf_config["vocab_size"]))
    results = []
    if args.backend in ("pagoda", "both"):
        results.append(run_pagoda(args, reqs))
    if args.backend in ("hf", "both"):
        results.append(run_hf(args, reqs))
    if len(results) == 2:
        ratio = results[0]["output_tokens_per_s"] / results[1]["output_tokens_per_s"]
        print(f"pagoda / hf output throughput: {ratio:.2f}x")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "func"}, "results": results}, f, indent=2)
