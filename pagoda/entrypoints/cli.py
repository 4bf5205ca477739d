"""The ``pagoda`` command: generate, chat, serve, bench {throughput, latency, serve}."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pagoda.arg_utils import HelpFormatter


def add_engine_args(p: argparse.ArgumentParser, positional_model: bool = False, serve: bool = False) -> None:
    """The engine flags, generated from the ``EngineArgs`` fields (name, type, default, choices, and the
    field's docstring as help), plus the vLLM flags pagoda refuses by name (:mod:`pagoda.entrypoints.vllm_flags`)."""
    from pagoda.arg_utils import add_dataclass_args
    from pagoda.config import EngineArgs
    from pagoda.entrypoints.vllm_flags import add_unsupported_args

    if positional_model:
        p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                       help="the model, as --model (default: the embedded SmolLM2-135M-Instruct)")
    add_dataclass_args(p.add_argument_group("engine"), EngineArgs)
    add_unsupported_args(p, serve=serve)


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
    parser = argparse.ArgumentParser(prog="pagoda", description="pagoda: LLM inference and serving engine",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--log-level", default="INFO", help="logging level")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text for one or more prompts", formatter_class=HelpFormatter)
    add_engine_args(g)
    g.add_argument("prompt", nargs="*", help="prompt(s); read from stdin when none")
    _sampling_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat with the model's chat template", formatter_class=HelpFormatter)
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
        s = sub.add_parser("serve", help=f"OpenAI-compatible HTTP server (unavailable: {e})",
                           formatter_class=HelpFormatter)
        s.set_defaults(func=lambda a, e=e: sys.exit(f"pagoda serve needs the server dependencies: {e}"))
    else:
        s = sub.add_parser("serve", help="OpenAI-compatible HTTP server", formatter_class=HelpFormatter)
        add_serve_args(s)
        s.set_defaults(func=run_serve)

    b = sub.add_parser("bench", help="benchmarks", formatter_class=HelpFormatter)
    bsub = b.add_subparsers(dest="bench_command", required=True)
    from pagoda.benchmarks import latency, throughput

    bt = bsub.add_parser("throughput", help="offline throughput (optionally vs HF transformers)",
                         formatter_class=HelpFormatter)
    throughput.add_args(bt)
    bt.set_defaults(func=throughput.main)
    bl = bsub.add_parser("latency", help="fixed-batch latency", formatter_class=HelpFormatter)
    latency.add_args(bl)
    bl.set_defaults(func=latency.main)
    try:
        from pagoda.benchmarks.serve import add_bench_serve_args, run_bench_serve

        bs = bsub.add_parser("serve", help="online load generator against an OpenAI-compatible server",
                             formatter_class=HelpFormatter)
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
