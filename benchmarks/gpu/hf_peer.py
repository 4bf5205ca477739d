"""The HF transformers peer of ``pagoda bench throughput``, run in its own process.

It runs exactly pagoda's request list: built by the same code from the same flags
(``--dataset sharegpt --num-prompts 500 --seed 0`` is the ShareGPT-like run of RESULTS), or
read from the JSON that ``pagoda bench throughput --save-requests FILE`` wrote
(``--requests FILE``). Every request keeps its own output length; EOS is off. The printed
``digest`` equals the one pagoda printed for the same list. Crediting and the two HF modes:
``pagoda/benchmarks/hf_peer.py``.

    python benchmarks/gpu/hf_peer.py --model M --dataset sharegpt --num-prompts 500 \\
        [--hf-impl generate_batch|generate] [--device cuda] [--dtype bfloat16] [--output-json F]
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoConfig

from pagoda.benchmarks.datasets import load_requests, requests_digest, workload_from_args
from pagoda.benchmarks.hf_peer import (
    cb_attn_implementation,
    load_hf_model,
    run_hf_generate,
    run_hf_generate_batch,
)
from pagoda.benchmarks.throughput import add_dataset_args


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF folder (random weights from its config unless --load-weights)")
    p.add_argument("--load-weights", action="store_true", help="load the checkpoint's weights")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (pagoda's --seed)")
    p.add_argument("--requests", default=None, help="request list written by pagoda bench throughput --save-requests")
    p.add_argument("--hf-impl", choices=["generate_batch", "generate"], default="generate_batch")
    p.add_argument("--hf-batch-size", type=int, default=None, help="generate: batch size (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--output-json", default=None)
    add_dataset_args(p)
    args = p.parse_args(argv)
    if args.requests:
        reqs = load_requests(args.requests)
    else:
        reqs = workload_from_args(args, int(AutoConfig.from_pretrained(args.model).vocab_size))
    device = torch.device(args.device)
    cb = args.hf_impl == "generate_batch"
    model = load_hf_model(args.model, getattr(torch, args.dtype), device, not args.load_weights,
                          attn=cb_attn_implementation() if cb else None)
    run = run_hf_generate_batch(model, reqs, device) if cb else run_hf_generate(model, reqs, args.hf_batch_size,
                                                                                device)
    requested = sum(r.output_len for r in reqs)
    res = {"backend": f"hf-{args.hf_impl}", "requests": len(reqs), "requests_digest": requests_digest(reqs),
           "seconds": run.seconds, "output_tokens": run.generated_tokens, "requested_output_tokens": requested,
           "requests_per_s": len(reqs) / run.seconds, "output_tokens_per_s": run.generated_tokens / run.seconds}
    print(f"[hf {args.hf_impl}] {len(reqs)} requests (digest {res['requests_digest']}), {run.generated_tokens} "
          f"output tokens generated ({requested} requested) in {run.seconds:.1f} s: "
          f"{res['output_tokens_per_s']:.1f} output tok/s, {res['requests_per_s']:.2f} req/s")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
