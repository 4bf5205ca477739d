"""The ``pagoda`` command: generate, chat, serve, bench {throughput, latency, serve}."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pagoda.entrypoints import interactive


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagoda", description="pagoda: LLM inference and serving engine")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text for one or more prompts",
                       description=interactive.GENERATE_DESCRIPTION)
    add_engine_args(g)
    interactive.add_generate_args(g)
    g.set_defaults(func=interactive.cmd_generate)

    c = sub.add_parser("chat", help="interactive chat with the model's chat template, streamed",
                       description=interactive.CHAT_DESCRIPTION)
    add_engine_args(c)
    interactive.add_chat_args(c)
    c.set_defaults(func=interactive.cmd_chat)

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
