"""``pagoda serve [MODEL] ...``: the engine flags (generated from ``EngineArgs``) plus the server's own.

Each server flag is defined here once; its default is shown by :class:`pagoda.arg_utils.HelpFormatter`.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl

from pagoda import envs
from pagoda.arg_utils import HelpFormatter, bind_socket, check_port, json_list_or_str, non_negative_int, parse_size
from pagoda.config import EngineArgs
from pagoda.entrypoints.openai.api_servers import check_api_server_count
from pagoda.entrypoints.openai.lora_modules import LoRAModulesAction, check_lora_args
from pagoda.entrypoints.openai.responses_store import check_store_args
from pagoda.entrypoints.openai.tool_config import ToolServingConfig

DEFAULT_MAX_REQUEST_BODY_BYTES = 8 * 2**20
CORS_ANY = ["*"]
"""Default of --allowed-methods and --allowed-headers: every one, once --allowed-origins turns CORS on."""


def add_serve_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from pagoda.entrypoints.cli import add_engine_args

    parser.description = (
        "Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
        "/v1/responses, /v1/models, /tokenize, /detokenize, /health, /ping, /invocations, /metrics, /version, "
        "/server_info, /reset_prefix_cache)."
    )
    parser.formatter_class = HelpFormatter
    add_engine_args(parser, positional_model=True, serve=True)
    _add_http_args(parser.add_argument_group("HTTP"))
    _add_server_args(parser.add_argument_group("server"))
    add_tool_args(parser.add_argument_group("tool calling and reasoning"))
    return parser


def _switch(g: argparse._ArgumentGroup, flag: str, help: str) -> None:
    """An off-by-default switch with its ``--no-`` form, as vLLM's boolean flags (the help without argparse's own
    default note)."""
    action = g.add_argument(flag, action=argparse.BooleanOptionalAction, default=False, help=help)
    action.help = help


def _add_http_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 127.0.0.1 keeps the server local, 0.0.0.0 exposes it on every interface")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--api-key", action="append", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health, /ping and the chat page at / "
                        "(repeat the flag for several keys: any of them; default: $PAGODA_API_KEY, else no key)")
    g.add_argument("--root-path", default=None,
                   help="path prefix under which a proxy serves the app, which the proxy strips before forwarding "
                        "(ASGI root_path: used in the OpenAPI schema and docs; default: none)")
    g.add_argument("--ssl-keyfile", default=None, help="TLS private key file (with --ssl-certfile: serve HTTPS)")
    g.add_argument("--ssl-certfile", default=None, help="TLS certificate file (with --ssl-keyfile: serve HTTPS)")
    g.add_argument("--ssl-ca-certs", default=None,
                   help="CA certificates to verify client certificates with (with --ssl-certfile)")
    g.add_argument("--ssl-cert-reqs", type=int, default=0, choices=(0, 1, 2),
                   help="client certificates: 0 not asked, 1 optional, 2 required (Python's ssl.CERT_*; with "
                        "--ssl-certfile, and 1 or 2 with --ssl-ca-certs to verify them)")
    g.add_argument("--allowed-origins", type=json_list_or_str, default=None,
                   help="CORS: origins browsers may call from, a JSON list or one origin, e.g. "
                        "'[\"https://app.example\"]' (default: no CORS headers; vLLM allows every origin)")
    g.add_argument("--allowed-methods", type=json_list_or_str, default=CORS_ANY,
                   help="CORS: allowed methods (needs --allowed-origins)")
    g.add_argument("--allowed-headers", type=json_list_or_str, default=CORS_ANY,
                   help="CORS: allowed request headers (needs --allowed-origins)")
    _switch(g, "--allow-credentials",
            help="CORS: allow credentials, cookies and auth headers (needs --allowed-origins)")
    _switch(g, "--enable-request-id-headers",
               help="answer every request with an X-Request-Id header: the request's own, else a new one")
    _switch(g, "--disable-fastapi-docs", help="no /docs, /redoc or /openapi.json")
    g.add_argument("--max-request-body-bytes", type=parse_size, default=DEFAULT_MAX_REQUEST_BODY_BYTES,
                   help="largest request body accepted, e.g. 8M")
    g.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"], help="uvicorn's log level")
    _switch(g, "--disable-uvicorn-access-log", help="no access-log line per HTTP request")


def add_request_args(g: argparse._ArgumentGroup) -> None:
    """How requests are read, logged and answered: the flags ``pagoda serve`` and ``pagoda run-batch`` share."""
    _switch(g, "--trust-request-chat-template",
               help="allow requests to carry their own chat_template")
    g.add_argument("--max-prompts-per-request", type=int, default=64,
                   help="largest list of prompts one /v1/completions request may carry")
    g.add_argument("--enable-log-requests", dest="disable_log_requests", action="store_false",
                   help="log each request's prompt and sampling parameters (as in vLLM, requests are not logged "
                        "without it: prompts are users' data)")
    g.add_argument("--disable-log-requests", action="store_true", default=True,
                   help="do not log requests, as without --enable-log-requests (vLLM's older flag, kept for scripts "
                        "that pass it)")
    g.add_argument("--max-log-len", type=non_negative_int, default=None,
                   help="characters / token ids of each prompt shown in request logs (default: all)")
    _switch(g, "--disable-log-stats",
               help="no periodic stats log line (throughput, requests, KV-cache usage, prefix-cache hit rate; "
                    "every $PAGODA_LOG_STATS_INTERVAL seconds)")
    _switch(g, "--enable-prompt-tokens-details",
               help="report usage.prompt_tokens_details.cached_tokens (prompt tokens served from the prefix "
                    "cache) in responses")
    _switch(g, "--return-tokens-as-token-ids",
               help="show tokens in logprobs as 'token_id:N' (as a request's return_tokens_as_token_ids does), "
                    "so tokens that are not valid UTF-8 on their own stay identifiable")


def _add_server_args(g: argparse._ArgumentGroup) -> None:
    from pagoda.entrypoints.openai.metrics import PREFIXES

    add_request_args(g)
    g.add_argument("--metrics-prefix", choices=list(PREFIXES), default="pagoda",
                   help="name prefix of the vLLM metrics on /metrics: 'vllm' gives vLLM's names exactly "
                        "(vllm:num_requests_running, ...) for dashboards made for vLLM; pagoda's own metrics "
                        "stay pagoda:*")
    _switch(g, "--enable-tokenizer-info-endpoint",
               help="serve GET /tokenizer_info (the tokenizer's configuration and chat template; 404 without "
                    "this flag)")
    _switch(g, "--enable-server-load-tracking",
               help="count the generation requests in flight and serve the count at GET /load as "
                    "{\"server_load\": N} (404 without this flag)")
    g.add_argument("--lora-modules", nargs="+", action=LoRAModulesAction, default=None, metavar="MODULE",
                   help="LoRA adapters served under their own model name (needs --enable-lora): name=path, or JSON "
                        "'{\"name\": ..., \"path\": ..., \"base_model_name\": ...}'; several values, or the flag "
                        "repeated. Each folder is checked at start-up; a request whose model is the name runs with "
                        "the adapter")
    g.add_argument("--api-server-count", "-asc", type=int, default=1,
                   help="API server processes sharing the port and the engine core: HTTP, tokenization, "
                        "detokenization and streaming spread over them (use 2-4 when one process cannot keep up "
                        "with hundreds of streams, or one per few data-parallel replicas)")
    g.add_argument("--engine-stuck-timeout", type=float, default=envs.engine_stuck_timeout_s(),
                   help="/health fails when requests are pending and the engine core has sent nothing for this "
                        "many seconds (default: $PAGODA_ENGINE_STUCK_TIMEOUT_S, else 60)")
    g.add_argument("--shutdown-grace-period", type=float, default=30.0,
                   help="on SIGTERM / Ctrl-C, stop accepting connections and let in-flight requests finish for at "
                        "most this many seconds, then exit (0 after a SIGTERM)")
    g.add_argument("--engine-death-exit-delay", type=float, default=5.0,
                   help="when the engine core process dies, answer 503 for this many seconds (so in-flight "
                        "requests get their error), then exit with status 1 for a supervisor to restart the "
                        "server; a negative value keeps the server up, answering 503")


def add_tool_args(g: argparse._ArgumentGroup) -> None:
    from pagoda.entrypoints.openai.tool_parsers import TOOL_PARSERS
    from pagoda.reasoning import REASONING_PARSERS

    _switch(g, "--enable-auto-tool-choice",
               help="honour tool_choice 'auto' (the default when a request has tools): the model's own "
                    "tool-call format is parsed into tool_calls by --tool-call-parser")
    g.add_argument("--tool-call-parser", choices=list(TOOL_PARSERS), default=None,
                   help="the model's tool-call format: hermes (Qwen2.5/Qwen3, Hermes: <tool_call>{json}</tool_call>), "
                        "llama3_json (Llama 3.1/3.2: <|python_tag|> / bare JSON), mistral ([TOOL_CALLS]), "
                        "pythonic ([f(a=1)])")
    _switch(g, "--exclude-tools-when-tool-choice-none",
               help="with tool_choice 'none', do not show the tools to the chat template")
    g.add_argument("--reasoning-parser", choices=list(REASONING_PARSERS), default=None,
                   help="split the model's thinking (<think>...</think>) into the message's 'reasoning' field: "
                        "qwen3, deepseek_r1")


def tool_config_from(args: argparse.Namespace) -> ToolServingConfig:
    return ToolServingConfig(
        enable_auto_tool_choice=getattr(args, "enable_auto_tool_choice", False),
        tool_call_parser=getattr(args, "tool_call_parser", None),
        reasoning_parser=getattr(args, "reasoning_parser", None),
        exclude_tools_when_tool_choice_none=getattr(args, "exclude_tools_when_tool_choice_none", False),
    )


def engine_args_from(args: argparse.Namespace) -> EngineArgs:
    """The engine arguments of ``pagoda serve``'s flags (no torch import: the early core gets them first)."""
    from pagoda.entrypoints.cli import engine_kwargs

    kw = engine_kwargs(args)
    if getattr(args, "reasoning_parser", None):  # vLLM: --reasoning-parser is StructuredOutputsConfig.reasoning_parser
        so = dict(kw.get("structured_outputs_config") or {})
        if so.get("reasoning_parser") not in (None, args.reasoning_parser):
            raise ValueError(f"--reasoning-parser {args.reasoning_parser} and --structured-outputs-config's "
                             f"reasoning_parser {so['reasoning_parser']!r} disagree; give one of them.")
        kw["structured_outputs_config"] = {**so, "reasoning_parser": args.reasoning_parser}
    return EngineArgs(**kw)


def validate_serve_args(args: argparse.Namespace) -> None:
    """Checks that need no model: run before the port is bound and anything loads."""
    validate_request_args(args)
    from pagoda.models.local_path import check_local_path_exists

    check_local_path_exists(engine_args_from(args).model)  # before the port is bound and the server logs
    if args.max_request_body_bytes < 1024:
        raise ValueError("--max-request-body-bytes must be at least 1K.")
    check_port(args.port)
    check_ssl_files(args)
    check_cors(args)
    check_durations(args)
    check_api_server_count(args)
    check_lora_args(args, envs.allow_runtime_lora_updating())
    check_store_args(getattr(args, "api_server_count", 1))


def validate_request_args(args: argparse.Namespace) -> None:
    """The checks of the engine flags and of :func:`add_request_args`' and the tool flags (serve and run-batch)."""
    engine_args_from(args).validate()
    if args.max_prompts_per_request < 1:
        raise ValueError("--max-prompts-per-request must be at least 1.")
    tool_config_from(args).validate()


def check_cors(args: argparse.Namespace) -> None:
    """--allowed-methods, --allowed-headers and --allow-credentials shape the CORS headers that --allowed-origins
    turns on; without it there are none (unlike vLLM, which allows every origin by default), so one given alone
    would change nothing."""
    if args.allowed_origins:
        return
    given = [flag for flag, on in (("--allowed-methods", args.allowed_methods != CORS_ANY),
                                   ("--allowed-headers", args.allowed_headers != CORS_ANY),
                                   ("--allow-credentials", args.allow_credentials)) if on]
    if given:
        raise ValueError(f"CORS is off without --allowed-origins (pagoda, unlike vLLM, allows no origin unless "
                         f"named), so {' and '.join(given)} would change nothing: add --allowed-origins with the "
                         f"origins browsers call from, e.g. '[\"https://app.example\"]' ('*' for any).")


def check_durations(args: argparse.Namespace) -> None:
    """The server's time limits: a stuck timeout above 0 (at 0 /health would fail whenever a request waits), a
    grace period of 0 or more (its help's 'at most this many seconds')."""
    if not args.engine_stuck_timeout > 0:
        raise ValueError(f"--engine-stuck-timeout must be above 0 seconds, got {args.engine_stuck_timeout:g}.")
    if not args.shutdown_grace_period >= 0:
        raise ValueError(f"--shutdown-grace-period must be 0 or more seconds (0: in-flight requests are cut off at "
                         f"once), got {args.shutdown_grace_period:g}.")


def check_ssl_files(args: argparse.Namespace) -> None:
    """--ssl-keyfile / --ssl-certfile / --ssl-ca-certs: present, readable and loadable, checked before anything
    loads (uvicorn would find out only once the model is up, without naming the flag). --ssl-ca-certs and
    --ssl-cert-reqs configure TLS: without --ssl-certfile the server speaks plain HTTP and they would do nothing."""
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        raise ValueError("--ssl-keyfile and --ssl-certfile go together.")
    if not args.ssl_certfile:
        tls_only = [flag for flag, on in (("--ssl-ca-certs", args.ssl_ca_certs), ("--ssl-cert-reqs",
                                                                               args.ssl_cert_reqs)) if on]
        if tls_only:
            raise ValueError(f"TLS is off without --ssl-keyfile and --ssl-certfile (the server speaks plain HTTP), so "
                             f"{' and '.join(tls_only)} would ask for no client certificate: add them.")
    elif args.ssl_cert_reqs and not args.ssl_ca_certs:
        raise ValueError(f"--ssl-cert-reqs {args.ssl_cert_reqs} asks for client certificates, which are verified "
                         f"against --ssl-ca-certs: add it (the CA certificates that sign your clients' "
                         f"certificates).")
    given = [(flag, path) for flag, path in (("--ssl-keyfile", args.ssl_keyfile), ("--ssl-certfile", args.ssl_certfile),
                                             ("--ssl-ca-certs", args.ssl_ca_certs)) if path]
    for flag, path in given:
        if not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: {'not a file' if os.path.exists(path) else 'no such file'}.")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{flag} {path}: not readable.")
    if args.ssl_certfile:
        try:  # the certificate alone first, so a bad one is named as such
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=args.ssl_certfile)
        except (ssl.SSLError, OSError) as e:
            raise ValueError(f"--ssl-certfile {args.ssl_certfile}: not a PEM certificate ({_ssl_reason(e)}).") from None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
        except (ssl.SSLError, OSError) as e:
            raise ValueError(f"--ssl-keyfile {args.ssl_keyfile}: not the PEM private key of --ssl-certfile "
                             f"{args.ssl_certfile} ({_ssl_reason(e)}).") from None
    if args.ssl_ca_certs:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=args.ssl_ca_certs)
        except (ssl.SSLError, OSError) as e:
            raise ValueError(f"--ssl-ca-certs {args.ssl_ca_certs}: not PEM CA certificates ({_ssl_reason(e)})."
                             ) from None


def _ssl_reason(e: OSError) -> str:
    return str(getattr(e, "reason", None) or e.strerror or e)


def run_serve(args: argparse.Namespace) -> None:
    validate_serve_args(args)
    sock = bind_socket(args.host, args.port)
    early = getattr(args, "prelaunched_core", None)
    if early is not None:  # before the imports below (torch, FastAPI): the core builds its engine meanwhile
        from pagoda.engine.prelaunch import hand_over_early

        hand_over_early(early, engine_args_from(args), logging.getLogger("pagoda").getEffectiveLevel(),
                        args.api_server_count)
    from pagoda.entrypoints.openai.api_server import run_server
    from pagoda.entrypoints.openai.middleware import server_api_keys

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("pagoda.server").warning(
            "binding %s: the server is reachable from other machines%s", args.host,
            "" if server_api_keys(args) else " (consider --api-key)")
    run_server(args, sock)
