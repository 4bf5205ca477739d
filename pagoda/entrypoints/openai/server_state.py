"""What the routes share: the engine and the serving objects, loaded in the background after start-up.

:class:`ServerState` lives on ``app.state.pagoda``; routes reach it through the request
(:func:`pagoda.entrypoints.openai.routes.common.server_state`). ``load_engine`` fills it (or records
why it could not), ``watch_engine`` ends the server a while after the engine core dies.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable

from pagoda import envs
from pagoda.config import EngineConfig
from pagoda.engine.async_llm import AsyncLLM
from pagoda.entrypoints.openai.api_servers import ApiServerProcesses
from pagoda.entrypoints.openai.cli_args import engine_args_from
from pagoda.entrypoints.openai.metrics import (
    LoggingStatLogger,
    PrometheusStatLogger,
    cache_config_info,
    num_speculative_tokens,
)
from pagoda.entrypoints.openai.responses_store import ResponseStore
from pagoda.entrypoints.openai.serving_chat import OpenAIServingChat
from pagoda.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagoda.entrypoints.openai.serving_engine import ServerLimits, ServingError
from pagoda.entrypoints.openai.serving_models import ServingModels
from pagoda.entrypoints.openai.serving_pooling import OpenAIServingPooling
from pagoda.entrypoints.openai.serving_responses import OpenAIServingResponses
from pagoda.entrypoints.openai.serving_tokenize import OpenAIServingTokenization
from pagoda.entrypoints.url_host import url_host
from pagoda.models.model_files import DEFAULT_MODEL_ALIASES

logger = logging.getLogger("pagoda.server")


def limits_from(args: argparse.Namespace) -> ServerLimits:
    from pagoda.entrypoints.openai.cli_args import tool_config_from

    return ServerLimits(
        max_prompts_per_request=args.max_prompts_per_request,
        max_request_body_bytes=args.max_request_body_bytes,
        trust_request_chat_template=args.trust_request_chat_template,
        chat_template_content_format=getattr(args, "chat_template_content_format", "auto"),
        enable_prompt_tokens_details=getattr(args, "enable_prompt_tokens_details", False),
        return_tokens_as_token_ids=getattr(args, "return_tokens_as_token_ids", False),
        tools=tool_config_from(args),
    )


class ServerState:
    """Invariant: ``completion``, ``chat``, ``responses`` and ``tokenization`` are set together, once the engine
    is ready. ``server_load`` counts the generation requests in flight (kept by ``ServerLoadMiddleware``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.engine_args = engine_args_from(args)
        self.limits = limits_from(args)
        self.engine: AsyncLLM | None = None
        self.metrics: PrometheusStatLogger | None = None
        self.stats_log: LoggingStatLogger | None = None
        self.completion: OpenAIServingCompletion | None = None
        self.chat: OpenAIServingChat | None = None
        self.tokenization: OpenAIServingTokenization | None = None
        self.responses: OpenAIServingResponses | None = None
        self.pooling: OpenAIServingPooling | None = None
        self.server_load = 0
        self.models: ServingModels | None = None  # the served names: the base model's and the LoRA adapters'
        self.load_error: str | None = None
        self.on_load_failure: Callable[[], None] | None = None
        self.on_engine_death: Callable[[], None] | None = None  # set by run_server: exit after a delay
        self.on_ready: Callable[[], None] | None = None  # set by run_server: once serving objects exist
        self.api_servers: ApiServerProcesses | None = None  # API servers 1.. when this is API server 0 of several
        self.on_api_server_death: Callable[[str], None] = lambda reason: None  # set by run_server

    def ready(self) -> ServerState:
        """This state, or a 503 ``ServingError`` saying why the server cannot serve yet (or any more)."""
        if self.load_error is not None:
            raise ServingError(503, f"The model failed to load: {self.load_error}", "service_unavailable",
                               None, "load_failed")
        if self.engine is None or self.completion is None:
            raise ServingError(503, "The model is still loading; retry shortly.", "service_unavailable", None,
                               "model_loading")
        self.engine.check_servable()
        return self


def model_root(cfg: EngineConfig) -> str:
    """``/v1/models``' ``root`` of the base model: the model as ``--model`` named it (a hub id stays a hub id, as
    vLLM's, so a client can load its tokenizer from it), the folder only for the embedded default model."""
    return str(cfg.model_path) if cfg.model is None or cfg.model in DEFAULT_MODEL_ALIASES else cfg.model


async def load_engine(state: ServerState) -> None:
    """Start the engine core and build the serving objects; on failure, record why and call
    ``on_load_failure``."""
    args = state.args
    try:
        engine = AsyncLLM(state.engine_args, stuck_timeout_s=args.engine_stuck_timeout,
                          prelaunched=getattr(args, "prelaunched_core", None),
                          api_server_count=getattr(args, "api_server_count", 1), attach=getattr(args, "attach", None),
                          on_launched=state.api_servers.start if state.api_servers is not None else None)
        state.engine = engine
        await engine.start()
        cfg = engine.cfg
        assert cfg is not None
        names = list(cfg.served_model_name)
        models = ServingModels(engine, names, model_root(cfg), engine.max_model_len)
        await models.init_static_loras(getattr(args, "lora_modules", None) or [])
        state.models = models
        state.metrics = PrometheusStatLogger(names[0], cfg.max_model_len, getattr(args, "metrics_prefix", "pagoda"),
                                             cache_config_info(cfg, engine), num_speculative_tokens(cfg),
                                             num_engines=cfg.data_parallel_size,
                                             multiprocess=getattr(args, "api_server_count", 1) > 1,
                                             max_loras=cfg.lora.max_loras if cfg.lora is not None else None)
        engine.stat_loggers.append(state.metrics)
        if not getattr(args, "disable_log_stats", False) and engine.client == 0:  # client 0 has the engine's stats
            state.stats_log = LoggingStatLogger(kv_offload=bool(cfg.kv_offloading_size))
            engine.stat_loggers.append(state.stats_log)
        common = dict(log_requests=not args.disable_log_requests, max_log_len=args.max_log_len)
        state.chat = OpenAIServingChat(engine, models, state.limits, **common)
        store = ResponseStore(envs.responses_api_store_max_entries()) if envs.responses_api_store() else None
        state.responses = OpenAIServingResponses(state.chat, store)
        state.completion = OpenAIServingCompletion(engine, models, state.limits, **common)
        state.pooling = OpenAIServingPooling(engine, models, state.limits, **common)
        state.tokenization = OpenAIServingTokenization(engine, models, state.limits, chat=state.chat, **common)
        if state.on_ready is not None:
            state.on_ready()
        if getattr(args, "port", None) is not None:  # an HTTP server (``pagoda run-batch`` has no port)
            scheme = "https" if getattr(args, "ssl_certfile", None) else "http"
            logger.info("serving %s on %s://%s:%d", ", ".join([*names, *models.lora_requests]), scheme,
                        url_host(args.host), args.port)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        expected = isinstance(e, (ValueError, RuntimeError, OSError))  # a clear message is enough
        logger.error("failed to load the model: %s", e, exc_info=not expected)
        state.load_error = str(e)
        if state.on_load_failure is not None:
            state.on_load_failure()


async def watch_engine(state: ServerState) -> None:
    """The engine core died: after --engine-death-exit-delay s of 503s, call ``on_engine_death``."""
    delay = getattr(state.args, "engine_death_exit_delay", -1.0)
    while not (state.engine is not None and state.engine.state == "dead"):
        await asyncio.sleep(0.2)
    if delay is None or delay < 0 or state.on_engine_death is None:
        return
    if state.completion is None and state.pooling is None:
        return  # it died while starting: the load failure's own path reports it and ends the server at once
    logger.error("engine core is dead; the server exits in %g s", delay)
    await asyncio.sleep(delay)
    state.on_engine_death()
