"""``pagoda serve [MODEL] ...``: flags with vLLM's names, plus the server's own limits."""

from __future__ import annotations

import argparse
import logging
import os

from pagoda.sampling_params import MAX_LOGPROBS


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if "%(default)" in h or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return h
        return h + " (default: %(default)s)"


def add_serve_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from pagoda.engine.async_llm import DEFAULT_STUCK_TIMEOUT_S
    from pagoda.entrypoints.cli import add_engine_args, parse_size

    parser.description = (
        "Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
        "/v1/models, /tokenize, /detokenize, /health, /metrics, /version, /reset_prefix_cache)."
    )
    parser.formatter_class = _HelpFormatter
    add_engine_args(parser, positional_model=True)
    for action in parser._actions:
        if action.dest == "model_tag":
            action.metavar = "MODEL"

    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 127.0.0.1 keeps the server local, 0.0.0.0 exposes it on every interface")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--served-model-name", nargs="+", default=None,
                   help="name(s) clients use in the 'model' field; the first is reported in responses "
                        "(default: the model argument, or SmolLM2-135M-Instruct for the embedded default)")
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health "
                        "(also read from the PAGODA_API_KEY environment variable)")
    g.add_argument("--chat-template", default=None,
                   help="Jinja chat template (a file path or the template itself) replacing the model's")
    g.add_argument("--trust-request-chat-template", action="store_true",
                   help="allow requests to carry their own chat_template")
    g.add_argument("--generation-config", default="auto",
                   help="'auto': sampling defaults from the model's generation_config.json; 'vllm': ignore it; "
                        "or a folder holding a generation_config.json")
    g.add_argument("--max-logprobs", type=int, default=MAX_LOGPROBS,
                   help=f"largest logprobs / top_logprobs / prompt_logprobs a request may ask for (at most "
                        f"{MAX_LOGPROBS})")
    g.add_argument("--max-prompts-per-request", type=int, default=64,
                   help="largest list of prompts one /v1/completions request may carry")
    g.add_argument("--max-request-body-bytes", type=parse_size, default=8 * 2**20,
                   help="largest request body accepted, e.g. 8M")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="accepted for compatibility with vLLM; remote code is never executed")
    g.add_argument("--disable-log-requests", action="store_true",
                   help="do not log each request's prompt and sampling parameters")
    g.add_argument("--enable-log-requests", dest="disable_log_requests", action="store_false",
                   help="log each request's prompt and sampling parameters (the default)")
    g.add_argument("--max-log-len", type=int, default=None,
                   help="characters / token ids of each prompt shown in request logs (default: all)")
    g.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"], help="uvicorn's log level")
    g.add_argument("--disable-uvicorn-access-log", action="store_true", help="no access-log line per HTTP request")
    g.add_argument("--disable-log-stats", action="store_true",
                   help="no periodic stats log line (throughput, requests, KV-cache usage, prefix-cache hit rate; "
                        "every PAGODA_LOG_STATS_INTERVAL seconds, 10 by default)")
    g.add_argument("--enable-prompt-tokens-details", action="store_true",
                   help="report usage.prompt_tokens_details.cached_tokens (prompt tokens served from the prefix "
                        "cache) in responses")
    g.add_argument("--engine-stuck-timeout", type=float, default=DEFAULT_STUCK_TIMEOUT_S,
                   help="/health fails when requests are pending and the engine core has sent nothing for this "
                        "many seconds (env PAGODA_ENGINE_STUCK_TIMEOUT_S)")
    g.add_argument("--shutdown-grace-period", type=float, default=30.0,
                   help="on SIGTERM / Ctrl-C, stop accepting connections and let in-flight requests finish for at "
                        "most this many seconds, then exit (0 after a SIGTERM)")
    g.add_argument("--engine-death-exit-delay", type=float, default=5.0,
                   help="when the engine core process dies, answer 503 for this many seconds (so in-flight "
                        "requests get their error), then exit with status 1 for a supervisor to restart the "
                        "server; a negative value keeps the server up, answering 503")
    return parser


def validate_serve_args(args: argparse.Namespace) -> None:
    if not 0 <= args.max_logprobs <= MAX_LOGPROBS:
        raise ValueError(f"--max-logprobs must be in [0, {MAX_LOGPROBS}], got {args.max_logprobs}.")
    if args.max_prompts_per_request < 1:
        raise ValueError("--max-prompts-per-request must be at least 1.")
    if args.max_request_body_bytes < 1024:
        raise ValueError("--max-request-body-bytes must be at least 1K.")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}.")


def run_serve(args: argparse.Namespace) -> None:
    from pagoda.entrypoints.openai.api_server import run_server

    validate_serve_args(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("pagoda.server").warning(
            "binding %s: the server is reachable from other machines%s", args.host,
            "" if (args.api_key or os.environ.get("PAGODA_API_KEY")) else " (consider --api-key)")
    run_server(args)
