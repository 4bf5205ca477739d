"""``pagoda run-batch``: vLLM's batch runner. Reads a file in OpenAI's Batch API format (one JSON request a line:
``{"custom_id", "method": "POST", "url", "body"}``), runs every request through the same serving code as
``pagoda serve`` (no HTTP), and writes one result a line in the input's order:
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`` (vLLM's shape; a refused
request has ``body`` null and its OpenAI error object in ``error``).

Invariants: the file is checked whole before the model loads (a line that is not a JSON object with those four
fields, a method other than POST, a URL that is not served, a repeated ``custom_id``: an error naming the lines,
nothing run); a request's own faults (a body the endpoint refuses, ``stream: true``, a task the model does not
serve) become that line's error, the others still run; the output appears complete or not at all (written beside
it, then renamed).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

logger = logging.getLogger("pagoda.run_batch")

MAX_LISTED_LINES = 5
"""Faults of the input file named in its error (the count of the rest follows)."""


@functools.cache
def _routes() -> dict[str, tuple[type[BaseModel], Callable[[Any, Any], Awaitable[Any]]]]:
    """URL -> (its request model, the serving call on the ready ``ServerState``): the server's own routes."""
    from pagoda.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
    from pagoda.entrypoints.openai.protocol_pooling import EmbeddingRequest, RerankRequest, ScoreRequest

    score = (ScoreRequest, lambda s, b: s.pooling.create_score(b))
    rerank = (RerankRequest, lambda s, b: s.pooling.create_rerank(b))
    return {
        "/v1/chat/completions": (ChatCompletionRequest, lambda s, b: s.chat.create_chat_completion(b)),
        "/v1/completions": (CompletionRequest, lambda s, b: s.completion.create_completion(b)),
        "/v1/embeddings": (EmbeddingRequest, lambda s, b: s.pooling.create_embedding(b)),
        "/score": score, "/v1/score": score, "/rerank": rerank, "/v1/rerank": rerank, "/v2/rerank": rerank,
    }


@functools.cache
def supported_urls() -> tuple[str, ...]:
    """The URLs a batch line may name."""
    return tuple(_routes())


@dataclass
class BatchLine:
    number: int  # 1-based line of the input file
    custom_id: str
    url: str
    body: dict[str, Any]


class BatchFileError(ValueError):
    """The input file cannot be run as it is; the message names the lines."""


def read_batch_file(path: str) -> list[BatchLine]:
    """Every request of the file at ``path`` (blank lines skipped), or :class:`BatchFileError` naming each faulty
    line (the first :data:`MAX_LISTED_LINES`)."""
    if path.startswith(("http://", "https://")):
        raise BatchFileError(f"--input-file {path}: pagoda run-batch reads a local file; download it first.")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BatchFileError(f"--input-file {path}: cannot be read ({e}).") from e
    lines: list[BatchLine] = []
    faults: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        line, fault = _parse_line(number, raw)
        if line is not None and line.custom_id in seen:
            fault = f"custom_id {line.custom_id!r} repeats line {seen[line.custom_id]}'s (each must be unique)"
        if fault is not None:
            faults.append(f"line {number}: {fault}")
            continue
        assert line is not None
        seen[line.custom_id] = number
        lines.append(line)
    if faults:
        more = f" (and {len(faults) - MAX_LISTED_LINES} more)" if len(faults) > MAX_LISTED_LINES else ""
        raise BatchFileError(f"--input-file {path} is not a valid batch file: "
                             f"{'; '.join(faults[:MAX_LISTED_LINES])}{more}.")
    if not lines:
        raise BatchFileError(f"--input-file {path} holds no request.")
    return lines


def _parse_line(number: int, raw: str) -> tuple[BatchLine | None, str | None]:
    try:
        obj = json.loads(raw)
    except ValueError as e:
        return None, f"not valid JSON ({e})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    unknown = sorted(set(obj) - {"custom_id", "method", "url", "body"})
    if unknown:
        return None, f"unknown field(s) {', '.join(unknown)} (a line has custom_id, method, url and body)"
    custom_id, method, url, body = (obj.get(k) for k in ("custom_id", "method", "url", "body"))
    if not isinstance(custom_id, str) or not custom_id:
        return None, "custom_id must be a non-empty string"
    if method != "POST":
        return None, f"method must be \"POST\", got {method!r}"
    if url not in supported_urls():
        return None, f"url {url!r} is not served; use one of {', '.join(supported_urls())}"
    if not isinstance(body, dict):
        return None, "body must be a JSON object (the request)"
    return BatchLine(number, custom_id, url, body), None


def _output(line: BatchLine, status: int, body: Any, error: Any) -> dict[str, Any]:
    return {"id": f"pagoda-{uuid.uuid4().hex}", "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": f"pagoda-batch-{uuid.uuid4().hex}", "body": body},
            "error": error}


async def run_line(state: Any, line: BatchLine) -> dict[str, Any]:
    """One request through the server's serving code: its output line (never raises)."""
    from pydantic import ValidationError as SchemaError

    from pagoda.entrypoints.openai.error_handlers import validation_message
    from pagoda.entrypoints.openai.serving_engine import error_body, serving_error_response

    model, call = _routes()[line.url]
    try:
        req = model.model_validate(line.body)
    except SchemaError as e:
        msg, param = validation_message(e.errors())
        return _output(line, 400, None, error_body(400, msg, "invalid_request_error", param))
    if getattr(req, "stream", False):
        return _output(line, 400, None, error_body(400, "A batch request must not be sent in stream mode "
                                                        "(set stream to false).", "invalid_request_error", "stream"))
    try:
        res = await call(state.ready(), req)
    except Exception as e:  # the server answers these as JSON errors too
        res = serving_error_response(e)
    payload = json.loads(bytes(res.body))
    if res.status_code == 200:
        return _output(line, 200, payload, None)
    return _output(line, res.status_code, None, payload)


async def run_batch(args: argparse.Namespace, lines: list[BatchLine]) -> tuple[int, int]:
    """Load the model, run ``lines`` (at most twice ``max_num_seqs`` at a time, as vLLM's runner) and write the
    output file; returns (succeeded, failed)."""
    from tqdm import tqdm

    from pagoda.entrypoints.openai.server_state import ServerState, load_engine

    state = ServerState(args)
    await load_engine(state)
    if state.load_error is not None:
        raise RuntimeError(f"the model failed to load: {state.load_error}")
    assert state.engine is not None and state.engine.cfg is not None
    limit = asyncio.Semaphore(2 * state.engine.cfg.max_num_seqs)
    out_path = Path(args.output_file)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".part", dir=out_path.parent)
    done: dict[int, dict[str, Any]] = {}
    counts = [0, 0]
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f, tqdm(total=len(lines), unit="req", desc="Running batch",
                                                             disable=None) as bar:
            next_index = 0

            async def one(i: int, line: BatchLine) -> None:
                nonlocal next_index
                async with limit:
                    result = await run_line(state, line)
                counts[result["response"]["status_code"] != 200] += 1
                done[i] = result
                bar.update()
                while next_index in done:  # in the input's order, as results arrive
                    f.write(json.dumps(done.pop(next_index), ensure_ascii=False) + "\n")
                    next_index += 1

            await asyncio.gather(*(one(i, line) for i, line in enumerate(lines)))
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        await state.engine.shutdown()  # until the core has exited (asyncio.run's end would cut its stop short)
    return counts[0], counts[1]


def add_run_batch_args(parser: argparse.ArgumentParser) -> None:
    from pagoda import envs
    from pagoda.entrypoints.cli import add_engine_args
    from pagoda.entrypoints.openai.cli_args import DEFAULT_MAX_REQUEST_BODY_BYTES, add_request_args, add_tool_args

    parser.description = (
        "Run a batch file in OpenAI's Batch API format (one {\"custom_id\", \"method\": \"POST\", \"url\", "
        "\"body\"} a line; urls: the server's /v1/chat/completions, /v1/completions, /v1/embeddings, score and "
        "rerank routes) and write one result a line, in the input's order, as vLLM's run-batch does.")
    io = parser.add_argument_group("batch files")
    io.add_argument("-i", "--input-file", required=True, help="the batch file (JSON Lines; a local path)")
    io.add_argument("-o", "--output-file", required=True,
                    help="where the results go (JSON Lines; a local path, replaced only once the batch has run)")
    add_engine_args(parser, serve=True)
    add_request_args(parser.add_argument_group("requests"))
    add_tool_args(parser.add_argument_group("tool calling and reasoning"))
    # What the serving code reads of the server's other flags, at their serve defaults.
    parser.set_defaults(max_request_body_bytes=DEFAULT_MAX_REQUEST_BODY_BYTES,
                        engine_stuck_timeout=envs.engine_stuck_timeout_s())


def cmd_run_batch(args: argparse.Namespace) -> None:
    """Check the input file and the flags (nothing loads before), run the batch, report the counts."""
    from pagoda.entrypoints.openai.cli_args import validate_request_args

    lines = read_batch_file(args.input_file)
    validate_request_args(args)
    if args.output_file.startswith(("http://", "https://")):
        raise ValueError(f"--output-file {args.output_file}: pagoda run-batch writes a local file; upload it after.")
    out_dir = Path(args.output_file).resolve().parent
    if not out_dir.is_dir():
        raise ValueError(f"--output-file {args.output_file}: the folder {out_dir} does not exist.")
    ok, failed = asyncio.run(run_batch(args, lines))
    logger.info("run-batch: %d requests, %d succeeded, %d failed; results in %s", len(lines), ok, failed,
                args.output_file)
