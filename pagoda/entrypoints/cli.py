"""The ``pagoda`` command: generate, chat, serve, bench {throughput, latency, serve}."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def parse_size(text: str) -> int:
    """'2G', '512M', '1.5GiB' or a plain byte count."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(float(t))


def add_engine_args(p: argparse.ArgumentParser, positional_model: bool = False) -> None:
    """Engine flags with vLLM's names; help texts come from EngineArgs' field docs."""
    if positional_model:
        p.add_argument("model_tag", nargs="?", default=None, help="model (folder, .gguf, hub id); default: embedded SmolLM2-135M-Instruct")
    p.add_argument("--model", default=None, help="model (folder, .gguf file or hub id); default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or id (default: the model's)")
    p.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32")
    p.add_argument("--max-model-len", type=int, default=None, help="maximum context length (prompt + output)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    p.add_argument("--max-num-seqs", type=int, default=None, help="maximum requests per step (default 1024 GPU, 256 CPU)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="token budget per step (default 16384 GPU, 2048 CPU)")
    p.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True,
                   help="split long prompts into chunks sharing steps with decodes")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the KV blocks of repeated prompt prefixes (automatic prefix caching)")
    p.add_argument("--kv-offloading-size", type=float, default=None,
                   help="GiB of host memory for a second KV tier: evicted and preempted blocks are kept there "
                        "and copied back on a prefix hit (off by default)")
    p.add_argument("--kv-offloading-backend", default="native", choices=["native"], help="host KV tier implementation")
    p.add_argument("--seed", type=int, default=0, help="seed for unseeded sampling and dummy weights")
    p.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "gguf", "dummy"],
                   help="weights format; dummy = random weights of the configured shape")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--kv-cache-memory-bytes", type=parse_size, default=None,
                   help="KV-cache size, e.g. 2G (CPU default 2 GiB; on GPU overrides --gpu-memory-utilization)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="fraction of GPU memory to use")
    p.add_argument("--num-gpu-blocks-override", type=int, default=None, help="use exactly this many KV blocks")
    p.add_argument("--enforce-eager", action="store_true", help="disable CUDA graphs")
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="schedule and prepare the next step on the host while the GPU runs the current one "
                        "(default: on for CUDA, off for CPU)")
    p.add_argument("--attention-backend", default=None, choices=["torch", "triton"], help="attention implementation")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """EngineArgs values from parsed flags: every EngineArgs field the parser defined.

    Flags are named after the fields (``--max-num-seqs`` -> ``max_num_seqs``), so a field
    added to EngineArgs and to a parser needs no change here.
    """
    from dataclasses import fields

    from pagoda.config import EngineArgs

    kw = {f.name: getattr(args, f.name) for f in fields(EngineArgs) if hasattr(args, f.name)}
    kw["model"] = getattr(args, "model_tag", None) or args.model
    return kw


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens at most")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: model's generation config)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--sampling-seed", type=int, default=None, help="per-request sampling seed")


def _params(llm, args):
    sp = llm.get_default_sampling_params()
    changes = {"max_tokens": args.max_tokens}
    for k in ("temperature", "top_p", "top_k"):
        if getattr(args, k) is not None:
            changes[k] = getattr(args, k)
    if args.sampling_seed is not None:
        changes["seed"] = args.sampling_seed
    return sp.clone(**changes)


def cmd_generate(args: argparse.Namespace) -> None:
    from pagoda import LLM

    llm = LLM(**engine_kwargs(args))
    prompts = args.prompt or [sys.stdin.read()]
    outs = llm.generate(prompts, _params(llm, args), use_tqdm=False)
    for o in outs:
        print(o.outputs[0].text)


def cmd_chat(args: argparse.Namespace) -> None:
    from pagoda import LLM

    llm = LLM(**engine_kwargs(args))
    sp = _params(llm, args)
    conv: list[dict[str, str]] = []
    if args.system:
        conv.append({"role": "system", "content": args.system})
    print("pagoda chat — empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        conv.append({"role": "user", "content": line})
        out = llm.chat(conv, sp, use_tqdm=False)[0].outputs[0].text
        print(out)
        conv.append({"role": "assistant", "content": out})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagoda", description="pagoda: LLM inference and serving engine")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text for one or more prompts")
    add_engine_args(g)
    g.add_argument("prompt", nargs="*", help="prompt(s); read from stdin when none")
    _sampling_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat with the model's chat template")
    add_engine_args(c)
    c.add_argument("--system", default=None, help="system prompt")
    _sampling_args(c)
    c.set_defaults(func=cmd_chat)

    try:
        import fastapi  # noqa: F401  (server-only dependencies)
        import msgspec  # noqa: F401
        import uvicorn  # noqa: F401
        import zmq  # noqa: F401

        from pagoda.entrypoints.openai.cli_args import add_serve_args, run_serve
    except ImportError as e:  # server dependencies missing (e.g. a GPU box with only torch)
        s = sub.add_parser("serve", help=f"OpenAI-compatible HTTP server (unavailable: {e})")
        s.set_defaults(func=lambda a, e=e: sys.exit(f"pagoda serve needs the server dependencies: {e}"))
    else:
        s = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
        add_serve_args(s)
        s.set_defaults(func=run_serve)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    from pagoda.benchmarks import latency, throughput

    bt = bsub.add_parser("throughput", help="offline throughput (optionally vs HF transformers)")
    throughput.add_args(bt)
    bt.set_defaults(func=throughput.main)
    bl = bsub.add_parser("latency", help="fixed-batch latency")
    latency.add_args(bl)
    bl.set_defaults(func=latency.main)
    try:
        from pagoda.benchmarks.serve import add_bench_serve_args, run_bench_serve

        bs = bsub.add_parser("serve", help="online load generator against an OpenAI-compatible server")
        add_bench_serve_args(bs)
        bs.set_defaults(func=run_bench_serve)
    except ImportError:
        pass
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(levelname)s %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
