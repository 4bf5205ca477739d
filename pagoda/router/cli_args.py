"""``pagoda router``: the flags (each defined here once) and ``run_router``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable

from pagoda import envs
from pagoda.arg_utils import HelpFormatter, bind_socket, check_port, parse_size
from pagoda.entrypoints.url_host import url_host
from pagoda.router.policies import ROUTING_LOGICS

logger = logging.getLogger("pagoda.router")

DESCRIPTION = (
    "Route OpenAI-compatible requests across several pagoda serve (or vLLM) replicas: /v1/completions, "
    "/v1/chat/completions, /v1/embeddings, /v1/responses, /tokenize, /detokenize proxied (streams passed "
    "through as they arrive), stored responses (/v1/responses/{id}, previous_response_id) sent to the replica "
    "holding them, /v1/models merged, its own /health and /metrics. Backends come from --backend, "
    "--backends-file and/or --k8s-service.")


def add_router_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.description = DESCRIPTION
    p.formatter_class = HelpFormatter
    g = p.add_argument_group("backends")
    g.add_argument("--backend", action="append", default=[], metavar="URL",
                   help="a replica's base URL, e.g. http://10.0.0.5:8000 (repeatable)")
    g.add_argument("--backends-file", default=None, metavar="PATH",
                   help="YAML/JSON list of replica URLs (or {backends: [...]}); re-read when it changes and on "
                        "SIGHUP")
    g.add_argument("--k8s-service", default=None, metavar="NAME",
                   help="discover replicas as the ready endpoints of this Kubernetes service (EndpointSlices, "
                        "read with the pod's service-account token)")
    g.add_argument("--k8s-namespace", default=None,
                   help="namespace of --k8s-service (default: the pod's own)")
    g.add_argument("--k8s-port", type=int, default=None,
                   help="replica port (default: the port named --k8s-port-name, else the slice's first port)")
    g.add_argument("--k8s-port-name", default=None, help="name of the service port to use")
    g.add_argument("--k8s-api-server", default=None, metavar="URL",
                   help="Kubernetes API server (default: in-cluster, from KUBERNETES_SERVICE_HOST/PORT)")
    r = p.add_argument_group("routing")
    r.add_argument("--routing-logic", choices=ROUTING_LOGICS, default="roundrobin",
                   help="roundrobin, leastloaded (replica queues from /metrics), session (consistent hashing of "
                        "--session-key / the body's user field), prefixaware (the replica that served the prompt's "
                        "prefix)")
    r.add_argument("--session-key", default=None, metavar="NAME",
                   help="session: the header (or body field) that names the session, e.g. x-user-id; the body's "
                        "'user' is used when it is absent")
    r.add_argument("--prefix-chunk-size", type=int, default=128,
                   help="prefixaware: characters per hashed prompt chunk")
    r.add_argument("--prefix-balance-threshold", type=float, default=32.0,
                   help="prefixaware: leave the prefix's replica when its queue is this many requests above the "
                        "shortest one")
    r.add_argument("--max-retries", type=int, default=2,
                   help="other replicas tried when one fails before sending anything (refused, closed, 5xx)")
    r.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a replica may stay silent (before its answer or between two chunks); then 504, "
                        "or an error event mid-stream")
    r.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to open a connection to a replica")
    r.add_argument("--health-check-interval", type=float, default=5.0,
                   help="seconds between probes of each replica's /health and /v1/models (and backend discovery)")
    r.add_argument("--health-check-timeout", type=float, default=5.0, help="seconds one probe may take")
    r.add_argument("--engine-stats-interval", type=float, default=5.0,
                   help="seconds between scrapes of each replica's /metrics (the load leastloaded and prefixaware "
                        "use)")
    h = p.add_argument_group("HTTP")
    h.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    h.add_argument("--port", type=int, default=8080, help="port to listen on")
    h.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health, and send it on to the "
                        "replicas unless --backend-api-key is given (default: $PAGODA_API_KEY, else no key)")
    h.add_argument("--backend-api-key", default=None,
                   help="the key sent to the replicas instead (default: the client's own Authorization header)")
    h.add_argument("--max-request-body-bytes", type=parse_size, default=8 * 2**20,
                   help="largest request body accepted, e.g. 8M")
    h.add_argument("--uvicorn-log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug", "trace"], help="uvicorn's log level")
    return p


def router_config(args: argparse.Namespace):  # -> RouterConfig (import kept lazy: fastapi)
    from pagoda.router.app import RouterConfig
    from pagoda.router.discovery import FileSource, KubernetesSource, StaticSource
    from pagoda.router.policies import make_policy

    if not (args.backend or args.backends_file or args.k8s_service):
        raise ValueError("pagoda router needs backends: --backend URL (repeatable), --backends-file or --k8s-service")
    check_port(args.port)
    if args.routing_logic != "session" and args.session_key:
        logger.warning("--session-key is used by --routing-logic session only")
    if args.max_retries < 0:
        raise ValueError(f"--max-retries must be >= 0, got {args.max_retries}")
    sources: list = []
    if args.backend:
        _check_urls(args.backend, lambda url: f"--backend {url}")
        sources.append(StaticSource(args.backend))
    if args.backends_file:
        f = FileSource(args.backends_file)
        _check_urls(f.load(), lambda url: f"--backends-file {args.backends_file}")  # a bad file, or a bad URL in it
        sources.append(f)
    if args.k8s_service:
        sources.append(KubernetesSource(args.k8s_service, args.k8s_namespace,
                                        args.k8s_api_server or envs.kubernetes_api_server(),
                                        args.k8s_port, args.k8s_port_name))
    policy = make_policy(args.routing_logic, args.session_key, args.prefix_chunk_size, args.prefix_balance_threshold)
    return RouterConfig(policy=policy, sources=sources, api_key=args.api_key or envs.api_key(),
                        backend_api_key=args.backend_api_key, max_request_body_bytes=args.max_request_body_bytes,
                        max_retries=args.max_retries, request_timeout_s=args.request_timeout,
                        connect_timeout_s=args.connect_timeout, health_check_interval_s=args.health_check_interval,
                        health_check_timeout_s=args.health_check_timeout,
                        engine_stats_interval_s=args.engine_stats_interval)


def _check_urls(urls: list[str], where: Callable[[str], str]) -> None:
    """A bad backend URL stops start-up, naming where it came from (``where(url)``: the flag); at run time it would
    only be refused."""
    from pagoda.router.backends import normalize_url

    for url in urls:
        try:
            normalize_url(url)
        except ValueError as e:
            raise ValueError(f"{where(url)}: {e}") from None


def run_router(args: argparse.Namespace) -> None:
    import uvicorn

    from pagoda.router.app import build_app

    cfg = router_config(args)
    sock = bind_socket(args.host, args.port)  # a bad --host / busy --port: a one-line error, as serve's
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per proxied request otherwise
    app = build_app(cfg)
    logger.info("pagoda router on http://%s:%d, routing logic %s", url_host(args.host), args.port,
                args.routing_logic)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.uvicorn_log_level, access_log=False))
    if hasattr(signal, "SIGHUP"):  # until the app's start-up takes it (a reload): its default action ends the process
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown (as uvicorn.run swallows it)
        pass
    finally:
        sock.close()
    if not server.started:
        sys.exit(3)  # uvicorn.run's status when start-up failed
