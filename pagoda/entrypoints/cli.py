"""The ``pagoda`` command: generate, chat, complete, serve, router, models, bench {throughput, latency, serve}."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from pagoda import envs
from pagoda.arg_utils import HelpFormatter
from pagoda.entrypoints import interactive, startup_sigint
from pagoda.entrypoints.config_file import expand_config_file


def add_engine_args(p: argparse.ArgumentParser, positional_model: bool = False, serve: bool = False) -> None:
    """The engine flags, generated from the ``EngineArgs`` fields (name, type, default, choices, and the
    field's docstring as help), plus the vLLM flags pagoda refuses by name (:mod:`pagoda.entrypoints.vllm_flags`)."""
    from pagoda.arg_utils import add_dataclass_args
    from pagoda.config import ENGINE_ARG_GROUPS, EngineArgs
    from pagoda.entrypoints.config_file import add_config_args
    from pagoda.entrypoints.vllm_flags import add_unsupported_args

    if positional_model:
        p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                       help="the model, as --model (default: the embedded SmolLM2-135M-Instruct)")
    for title, names in ENGINE_ARG_GROUPS.items():  # vLLM's help groups
        add_dataclass_args(p.add_argument_group(title), EngineArgs, only=frozenset(names))
    add_config_args(p)
    add_unsupported_args(p, serve=serve)


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """EngineArgs values from parsed flags: every EngineArgs field the parser defined.

    Flags are named after the fields (``--max-num-seqs`` -> ``max_num_seqs``), so a field
    added to EngineArgs and to a parser needs no change here.
    """
    from dataclasses import fields

    from pagoda.config import EngineArgs

    kw = {f.name: getattr(args, f.name) for f in fields(EngineArgs) if hasattr(args, f.name)}
    tag = getattr(args, "model_tag", None)
    if tag is not None and args.model is not None and tag != args.model:  # vLLM refuses a second model too
        raise ValueError(f"the model is given twice, as MODEL ({tag}) and as --model ({args.model}); give it once "
                         f"(`pagoda serve MODEL` or `pagoda serve --model MODEL`).")
    kw["model"] = tag or args.model or getattr(args, "model_from_config", None)  # the command line wins over --config
    return kw


def build_parser() -> argparse.ArgumentParser:
    parser, sub = _top_parser()

    g = sub.add_parser("generate", help="generate text for one or more prompts", formatter_class=HelpFormatter,
                       description=interactive.GENERATE_DESCRIPTION)
    add_engine_args(g)
    interactive.add_generate_args(g)
    g.set_defaults(func=interactive.cmd_generate)

    c = sub.add_parser("chat", help="chat with a running server's model (vLLM's vllm chat), or --local with a "
                                    "model in this process, streamed",
                       formatter_class=HelpFormatter, description=interactive.CHAT_DESCRIPTION,
                       conflict_handler="resolve")  # -q is vLLM chat's --quick here (--quantization keeps its name)
    add_engine_args(c)
    interactive.add_chat_args(c)
    c.set_defaults(func=interactive.cmd_chat)
    co = sub.add_parser("complete", help="complete prompts with a running server's model (vLLM's vllm complete), "
                                         "streamed", formatter_class=HelpFormatter,
                        description=interactive.COMPLETE_DESCRIPTION)
    interactive.add_complete_args(co)
    co.set_defaults(func=interactive.cmd_complete)

    try:
        import fastapi  # noqa: F401  (server-only dependencies)
        import msgspec  # noqa: F401
        import uvicorn  # noqa: F401
        import zmq  # noqa: F401

        from pagoda.entrypoints.openai.cli_args import add_serve_args, run_serve
        from pagoda.entrypoints.run_batch import add_run_batch_args, cmd_run_batch
    except ImportError as e:  # server dependencies missing (e.g. a GPU box with only torch)
        for name in ("serve", "run-batch"):
            s = sub.add_parser(name, help=f"unavailable: {e}", formatter_class=HelpFormatter)
            s.set_defaults(func=lambda a, e=e, name=name: sys.exit(f"pagoda {name} needs the server dependencies: "
                                                                    f"{e}"))
    else:
        s = sub.add_parser("serve", help="OpenAI-compatible HTTP server", formatter_class=HelpFormatter)
        add_serve_args(s)
        s.set_defaults(func=run_serve)
        rb = sub.add_parser("run-batch", help="run a file of OpenAI batch requests offline (vLLM's run-batch)",
                            formatter_class=HelpFormatter)
        add_run_batch_args(rb)
        rb.set_defaults(func=cmd_run_batch)

    m = sub.add_parser("models", help="list the architectures pagoda runs, how, and with which features",
                       formatter_class=HelpFormatter)
    m.set_defaults(func=cmd_models)

    _add_router_parser(sub)

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


def cmd_models(args: argparse.Namespace) -> None:
    """Print the registry's table (plugins included: they are loaded first)."""
    from pagoda.models.support_table import models_table
    from pagoda.plugins import load_general_plugins

    load_general_plugins()
    print(models_table(), end="")


def _add_router_parser(sub: Any) -> None:
    from pagoda.router.cli_args import add_router_args, run_router  # fastapi/uvicorn imported only when it runs

    r = sub.add_parser("router", help="route requests across several serve replicas", formatter_class=HelpFormatter)
    add_router_args(r)
    r.set_defaults(func=run_router)


def _top_parser() -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(prog="pagoda", description="pagoda: LLM inference and serving engine",
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--version", action="version", version=package_version())
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="logging level (case-insensitive)")
    return parser, parser.add_subparsers(dest="command", required=True)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def package_version() -> str:
    """The installed package's version (``pagoda --version``, as ``vllm --version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pagoda")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from pagoda import __version__

        return __version__


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (after the global ``--log-level``), if any."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-level" else 1
    return argv[i] if i < len(argv) else None


def normalize_flag_names(argv: list[str]) -> list[str]:
    """vLLM's spelling of long flags: ``--max_model_len 8`` and ``--max_model_len=8`` are ``--max-model-len``
    (underscores in the name, never in a ``=VALUE``, read as dashes). Arguments after a bare ``--`` stay as given."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


VLLM_ENV_HINTS = {
    "VLLM_LOGGING_LEVEL": "use pagoda --log-level LEVEL",
    "VLLM_ATTENTION_BACKEND": "use --attention-backend",
    "VLLM_CPU_KVCACHE_SPACE": "use --kv-cache-memory-bytes, e.g. 4G",
    "VLLM_USE_MODELSCOPE": "hub ids are read from the Hugging Face Hub only",
    "VLLM_HOST_IP": "use --host",
    "VLLM_PORT": "use --port",
}
"""What to use instead of the vLLM variables a vLLM user most often has set (``VLLM_*`` ones pagoda reads are in
:data:`pagoda.envs.ENV_VARS`)."""


def runs_engine(command: str | None, args: argparse.Namespace) -> bool:
    """Whether ``command`` runs an engine or a server here (the commands whose vLLM variables matter): not
    ``models``, ``complete``, ``chat`` without ``--local`` (clients of a server) or ``bench serve``."""
    if command in ("models", "complete") or (command == "chat" and not getattr(args, "local", False)):
        return False
    return command != "bench" or getattr(args, "bench_command", None) in ("throughput", "latency")


def check_vllm_env(args: argparse.Namespace) -> None:
    """vLLM's environment variables: those pagoda does not read are named in one warning (with what to use
    instead, where there is something), so none is ignored silently (``VLLM_API_KEY`` is read, as vLLM does:
    :func:`pagoda.envs.api_key`)."""
    from pagoda.envs import ENV_VARS

    read = {v.name for v in ENV_VARS}
    unread = sorted(k for k, v in os.environ.items() if k.startswith("VLLM_") and k not in read and v)
    if unread:
        logging.getLogger("pagoda").warning(
            "pagoda does not read these vLLM environment variables: %s (docs/cli.md, \"Environment variables\", "
            "lists the ones it reads)", "; ".join(f"{k} ({VLLM_ENV_HINTS[k]})" if k in VLLM_ENV_HINTS else k
                                                   for k in unread))


def main(argv: list[str] | None = None) -> None:
    try:
        _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # Ctrl-C before a command handles it (e.g. serve's imports and start-up): no traceback
        sys.exit(130)
    except BaseException:
        if startup_sigint.interrupted():  # a library made another error of serve's start-up Ctrl-C
            sys.exit(130)
        raise


def _main(argv: list[str]) -> None:
    argv = normalize_flag_names(argv)
    command = _command(argv)
    if command == "serve":
        startup_sigint.install()  # until uvicorn takes the signals: no library can lose a Ctrl-C
    else:
        startup_sigint.hand_over()  # the window opened by ``import pagoda`` (startup_sigint.install_if_cli) ends
    early = None
    if command == "serve" and not {"-h", "--help"} & set(argv) and envs.prelaunch_core_enabled():
        from pagoda.engine.prelaunch import prelaunch_core  # before the parser's imports (pagoda.engine.prelaunch)

        early = prelaunch_core()
    try:
        if command == "router":  # the full parser builds the engine flags (imports torch): a router needs none
            parser, sub = _top_parser()
            _add_router_parser(sub)
        else:
            parser = build_parser()
        try:
            argv = expand_config_file(argv, parser)  # vLLM's --config FILE.yaml
        except ValueError as e:
            sys.exit(f"error: {e}")
        args = parser.parse_args(argv)
        args.prelaunched_core = early
        logging.basicConfig(level=getattr(logging, args.log_level),
                            format="%(levelname)s %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        try:
            if runs_engine(command, args):
                check_vllm_env(args)
            args.func(args)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            sys.exit(f"error: {e}")
    finally:
        if early is not None:
            early.discard()  # not adopted (a flag error, --help of a subcommand, a failed load): it exits unused


if __name__ == "__main__":
    main()
