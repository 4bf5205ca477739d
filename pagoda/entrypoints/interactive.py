"""``pagoda generate``, ``pagoda chat`` and ``pagoda complete``: models driven from a terminal.

``chat`` and ``complete`` are, as vLLM's ``vllm chat`` / ``vllm complete``, clients of a running
OpenAI-compatible server (``--url``, default ``http://localhost:8000/v1``; ``--model-name``, default the
first model it lists; ``--api-key``, else ``$OPENAI_API_KEY``, else the server's own ``$PAGODA_API_KEY``);
``chat --local`` runs the model in this process instead (the engine flags apply only then, and are refused
without it, so a chat never silently talks to another model than the one named). ``generate`` always runs locally.

``generate`` prints one prompt's answer plainly (pipe-friendly); several prompts are printed
one after another under ``=== prompt i/n ===`` / ``=== answer i/n ===`` headers, or as one
JSON object per line with ``--output-format jsonl``.

``chat`` streams each answer as the engine produces it (one engine step at a time, see
:func:`stream_text`); Ctrl-C during an answer stops it (the request is aborted) and returns
to the prompt. Its sampling defaults: the model's ``generation_config.json`` when it has
sampling values, else :data:`CHAT_FALLBACK` (a low temperature with a repetition guard, so a
small model does not ramble), and at most :data:`CHAT_MAX_TOKENS` new tokens; flags override.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from pagoda.sampling_params import SamplingParams

GENERATE_MAX_TOKENS = 256
CHAT_MAX_TOKENS = 512
CHAT_FALLBACK: dict[str, float] = {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}
"""Chat sampling when the model's generation config has none: SmolLM2-Instruct's own model card
samples at temperature 0.2, top-p 0.9; on the default model, 0.7 (Ollama's kind of default)
drifted into nonsense within a sentence, and 0.2 without the repetition penalty looped on one
phrase to the token limit (docs/design.md, "Terminal commands")."""

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
"""Generation-config fields that count as the model's own sampling values."""

_FLAG_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")


def add_sampling_args(p: argparse.ArgumentParser, chat: bool, client_only: bool = False) -> None:
    """Sampling flags shared by generate, chat and complete; the help states each default (``client_only``: the
    command only talks to a server, whose defaults apply to a flag not given)."""
    if client_only:
        model_or = "the server's"
        max_default = "the server's"
    elif chat:
        fallback = ", ".join(f"{k}={v}" for k, v in CHAT_FALLBACK.items())
        model_or = f"the model's generation config, else the chat fallback ({fallback})"
        max_default = f"the model's max_new_tokens, else {CHAT_MAX_TOKENS}"
    else:
        model_or = "the model's generation config, else vLLM's SamplingParams() default"
        max_default = f"the model's max_new_tokens, else {GENERATE_MAX_TOKENS}"
    p.add_argument("--max-tokens", type=int, default=None, help=f"new tokens at most (default: {max_default})")
    p.add_argument("--temperature", type=float, default=None, help=f"0 = greedy (default: {model_or})")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default: as --temperature)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample among the k most likely tokens (default: as --temperature)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="penalty > 1 for tokens already in prompt or output (default: as --temperature)")
    p.add_argument("--sampling-seed", type=int, default=None, help="per-request sampling seed (default: none)")


def sampling_params(model_defaults: dict[str, Any], args: argparse.Namespace, chat: bool) -> SamplingParams:
    """Flags over the chat fallback (chat, when the model has no sampling values) over the model's defaults."""
    values = dict(model_defaults)
    if chat and not any(k in values for k in SAMPLING_KEYS):
        values.update(CHAT_FALLBACK)
    values.setdefault("max_tokens", CHAT_MAX_TOKENS if chat else GENERATE_MAX_TOKENS)
    if args.max_tokens is not None:
        values["max_tokens"] = args.max_tokens
    for k in _FLAG_KEYS:
        if getattr(args, k) is not None:
            values[k] = getattr(args, k)
    if args.sampling_seed is not None:
        values["seed"] = args.sampling_seed
    return SamplingParams(**values)


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="*", help="prompt(s); stdin (as one prompt) when none")
    p.add_argument("--output-format", choices=["text", "jsonl"], default="text",
                   help="text: one prompt's answer plainly, several under '=== prompt i/n ===' headers; "
                        "jsonl: one {prompt, text, finish_reason} object per line (default: text)")
    add_sampling_args(p, chat=False)


DEFAULT_URL = "http://localhost:8000/v1"
"""vLLM's default ``--url`` of ``vllm chat`` / ``vllm complete``."""
CLIENT_FLAGS = ("url", "model_name", "api_key", "stats")
"""The flags of a server client (refused with ``chat --local``)."""


def add_client_args(p: argparse.ArgumentParser, what: str) -> None:
    """vLLM's flags of ``vllm chat`` / ``vllm complete`` (``what``: the prompt's name in the help)."""
    p.add_argument("--url", default=None,
                   help=f"the running OpenAI-compatible server's /v1 URL (default: {DEFAULT_URL})")
    p.add_argument("--model-name", default=None, help="the served model to use (default: the first of GET /models)")
    p.add_argument("--api-key", default=None,
                   help="bearer key of the server (default: $OPENAI_API_KEY, else $PAGODA_API_KEY / $VLLM_API_KEY)")
    p.add_argument("-q", "--quick", default=None, metavar=what.upper(),
                   help=f"send one {what}, print the answer and exit")
    p.add_argument("--stats", action="store_true", help="print the TTFT and tokens/s after each answer")


def add_chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", action="store_true",
                   help="chat with a model run in this process (the engine flags: --model, --dtype, ...) instead of "
                        "a server")
    add_client_args(p, "message")
    p.add_argument("--system-prompt", "--system", dest="system", default=None,
                   help="system prompt (default: none)")
    add_sampling_args(p, chat=True)


def add_complete_args(p: argparse.ArgumentParser) -> None:
    add_client_args(p, "prompt")
    add_sampling_args(p, chat=False, client_only=True)


def _make_llm(args: argparse.Namespace) -> Any:
    from pagoda import LLM
    from pagoda.entrypoints.cli import engine_kwargs

    return LLM(**engine_kwargs(args))


def _model_defaults(llm: Any) -> dict[str, Any]:
    return dict(llm.llm_engine.input_processor.sampling_defaults)


def cmd_generate(args: argparse.Namespace, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    llm = _make_llm(args)
    prompts = args.prompt or [sys.stdin.read()]
    params = sampling_params(_model_defaults(llm), args, chat=False)
    results = llm.generate(prompts, params, use_tqdm=False)
    write_generate_results(prompts, results, args.output_format, out)


def write_generate_results(prompts: list[str], results: list[Any], fmt: str, out: TextIO) -> None:
    """One answer: its text alone. Several: each under numbered headers with its prompt echoed."""
    n = len(prompts)
    for i, (prompt, res) in enumerate(zip(prompts, results, strict=True), start=1):
        comp = res.outputs[0]
        if fmt == "jsonl":
            out.write(json.dumps({"prompt": prompt, "text": comp.text, "finish_reason": comp.finish_reason},
                                 ensure_ascii=False) + "\n")
        elif n == 1:
            out.write(comp.text + "\n")
        else:
            sep = "\n" if i > 1 else ""
            out.write(f"{sep}=== prompt {i}/{n} ===\n{prompt}\n=== answer {i}/{n} ===\n{comp.text}\n")
    out.flush()


@contextlib.contextmanager
def sigint_flag() -> Iterator[list[bool]]:
    """While inside, Ctrl-C sets ``flag[0]`` instead of raising (main thread only; elsewhere a no-op).

    The engine then stops between two steps, never inside one, so its state stays consistent.
    """
    flag = [False]

    def handler(signum: int, frame: Any) -> None:
        flag[0] = True

    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


def stream_text(engine: Any, prompt: Any, params: SamplingParams,
                should_stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """Yield the new text of one request after each engine step until it finishes.

    ``engine`` is an :class:`~pagoda.engine.llm_engine.LLMEngine` running nothing else. When
    ``should_stop()`` turns true, or the consumer closes the generator, the request is aborted
    and the generator ends. A request's shown text only grows (text a stop string may still take back is
    held back until it cannot be), so each delta is the part past what was yielded before.
    """
    rid = engine.next_request_id()
    engine.add_request(rid, prompt, params)
    sent, done = "", False
    try:
        while not done and not should_stop():
            for res in engine.step():
                if res.request_id != rid:
                    continue
                if res.error:
                    raise RuntimeError(res.error)
                text = res.outputs[0].text
                if len(text) > len(sent):
                    yield text[len(sent):]
                    sent = text
                done = res.finished
            done = done or not engine.has_unfinished_requests()
    finally:
        if not done:
            engine.abort_request(rid)


def chat_loop(llm: Any, params: SamplingParams, system: str | None = None,
              read: Callable[[str], str] | None = None, out: TextIO | None = None) -> list[dict[str, str]]:
    """Read a line, stream the answer of the local ``llm``, repeat (:func:`converse`). Returns the conversation."""
    out = out or sys.stdout
    return converse(lambda conv: _answer(llm, conv, params, out), system, read, out)


def converse(answer: Callable[[list[dict[str, str]]], str], system: str | None = None,
             read: Callable[[str], str] | None = None, out: TextIO | None = None,
             first: str | None = None) -> list[dict[str, str]]:
    """Read a line, stream the answer (``answer(conversation)`` writes it and returns its text), repeat; an empty
    line, EOF or Ctrl-C at the prompt ends. ``first``: one message sent without reading, then the chat ends
    (``--quick``). Returns the conversation.

    An answer stopped with Ctrl-C stays in the conversation as far as it was shown; a refused turn (ValueError)
    is printed as ``error: ...`` and dropped, and the chat goes on.
    """
    out = out or sys.stdout
    read = read or input  # looked up at call time
    conv: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        if first is not None:
            line = first
        else:
            try:
                line = read("> ")
            except (EOFError, KeyboardInterrupt):
                out.write("\n")
                break
            if not line.strip():
                break
        conv.append({"role": "user", "content": line})
        try:
            conv.append({"role": "assistant", "content": answer(conv)})
        except ValueError as e:  # a refused turn (e.g. the conversation outgrew the context): say so, go on
            conv.pop()
            if first is not None:  # --quick: the command fails with it
                raise
            out.write(f"error: {e}\n")
            out.flush()
        if first is not None:
            break
    return conv


def _answer(llm: Any, conv: list[dict[str, str]], params: SamplingParams, out: TextIO) -> str:
    """Stream one answer to ``conv``; ``max_tokens`` is capped by the room left in the context."""
    prompt = llm.chat_prompt(conv)
    room = llm.llm_engine.cfg.max_model_len - len(prompt["prompt_token_ids"])
    if room < 1:
        raise ValueError(f"the conversation ({len(prompt['prompt_token_ids'])} tokens) fills the context of "
                         f"{llm.llm_engine.cfg.max_model_len} tokens; start a new chat or raise --max-model-len")
    if params.max_tokens is None or params.max_tokens > room:
        params = params.clone(max_tokens=room)
    parts: list[str] = []
    with sigint_flag() as stop:
        for delta in stream_text(llm.llm_engine, prompt, params, lambda: stop[0]):
            parts.append(delta)
            out.write(delta)
            out.flush()
    out.write(" [stopped]\n" if stop[0] else "\n")
    out.flush()
    return "".join(parts)


def cmd_chat(args: argparse.Namespace) -> None:
    """``pagoda chat``: a client of the server at ``--url`` (vLLM's), or with ``--local`` a model in this process."""
    if not args.local:
        given = _engine_flags_given(args)
        if given:
            raise ValueError(f"{', '.join(given)} set up a model in this process: add --local to chat with it, or "
                             f"leave {'them' if len(given) > 1 else 'it'} out to chat with the server at "
                             f"{args.url or DEFAULT_URL} (--url; pick its model with --model-name).")
        client = ServerClient.from_args(args)
        if args.quick is None:
            print("Please enter a message for the chat model (Ctrl-C stops an answer; an empty line or Ctrl-D "
                  "quits):", file=sys.stderr)
        converse(lambda conv: client.stream_answer(
            "/chat/completions", {"messages": conv, **_request_sampling(args)}, args.stats, sys.stdout),
            args.system, first=args.quick)
        return
    client_flags = [f"--{k.replace('_', '-')}" for k in CLIENT_FLAGS if getattr(args, k)]
    if client_flags:
        raise ValueError(f"{', '.join(client_flags)} {'are' if len(client_flags) > 1 else 'is'} for chatting with a "
                         f"server: drop --local, or drop {'them' if len(client_flags) > 1 else 'it'}.")
    llm = _make_llm(args)
    params = sampling_params(_model_defaults(llm), args, chat=True)
    shown = {k: getattr(params, k) for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens")}
    print("pagoda chat: " + ", ".join(f"{k}={v}" for k, v in shown.items()), file=sys.stderr)
    if args.quick is None:
        print("Ctrl-C stops an answer; an empty line or Ctrl-D quits.", file=sys.stderr)
    converse(lambda conv: _answer(llm, conv, params, sys.stdout), args.system, first=args.quick)


def cmd_complete(args: argparse.Namespace) -> None:
    """``pagoda complete`` (vLLM's ``vllm complete``): each line (or ``--quick``) completed by the server at
    ``--url``, streamed; an empty line, EOF or Ctrl-C at the prompt quits."""
    client = ServerClient.from_args(args)
    body = _request_sampling(args)
    if args.quick is not None:
        client.stream_answer("/completions", {"prompt": args.quick, **body}, args.stats, sys.stdout)
        return
    print("Please enter prompt to complete (an empty line or Ctrl-D quits):", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line.strip():
            return
        try:
            client.stream_answer("/completions", {"prompt": line, **body}, args.stats, sys.stdout)
        except ValueError as e:
            print(f"error: {e}", flush=True)


def _engine_flags_given(args: argparse.Namespace) -> list[str]:
    """The engine flags (EngineArgs fields) whose value differs from the parser's default, as ``--flag`` names."""
    from dataclasses import fields

    from pagoda.config import EngineArgs
    from pagoda.entrypoints.cli import add_engine_args

    p = argparse.ArgumentParser(add_help=False)
    add_engine_args(p)
    defaults = vars(p.parse_args([]))
    return [f"--{f.name.replace('_', '-')}" for f in fields(EngineArgs)
            if f.name in defaults and getattr(args, f.name, defaults[f.name]) != defaults[f.name]]


def _request_sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags given, as request fields (a flag not given is left to the server's defaults)."""
    body = {k: getattr(args, k) for k in ("max_tokens", *_FLAG_KEYS) if getattr(args, k) is not None}
    if args.sampling_seed is not None:
        body["seed"] = args.sampling_seed
    return body


class ServerClient:
    """A streaming client of an OpenAI-compatible server's ``/v1`` routes (what ``vllm chat`` / ``complete`` do
    with the openai package, here with httpx). Invariant: ``model`` is a name the server listed or the user gave."""

    def __init__(self, url: str, api_key: str | None, model_name: str | None) -> None:
        import httpx

        self.url = url.rstrip("/")
        key = api_key or os.environ.get("OPENAI_API_KEY") or _server_key() or "EMPTY"  # vLLM: "EMPTY" when unset
        self.headers = {"Authorization": f"Bearer {key}"}
        self.http = httpx.Client(timeout=httpx.Timeout(None, connect=10.0))
        self.model = model_name or self._first_model()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerClient:
        client = cls(args.url or DEFAULT_URL, args.api_key, args.model_name)
        print(f"Using model: {client.model}", file=sys.stderr)
        return client

    def _first_model(self) -> str:
        r = self._request("GET", "/models")
        try:
            return str(r.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise RuntimeError(f"GET {self.url}/models listed no model ({r.text[:200]!r}); name one with "
                               f"--model-name.") from None

    def _request(self, method: str, route: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, self.url + route, headers=self.headers, **kw)
        except httpx.TransportError as e:
            raise RuntimeError(_unreachable(self.url, e)) from None
        if r.status_code != 200:
            raise RuntimeError(_http_error(method, self.url + route, r.status_code, r.text))
        return r

    def stream_answer(self, route: str, body: dict[str, Any], stats: bool, out: TextIO) -> str:
        """POST ``body`` (streamed) to ``route``, write each text delta to ``out`` as it arrives, return the text.
        Ctrl-C stops the answer (the connection is closed, so the server aborts the request). A request the server
        refuses (4xx) is a ValueError with its message, the chat goes on."""
        import httpx

        payload: dict[str, Any] = {"model": self.model, **body, "stream": True}
        if stats:
            payload["stream_options"] = {"include_usage": True}
        chat = route == "/chat/completions"
        parts: list[str] = []
        start, ttft, tokens, stopped = time.perf_counter(), None, 0, False
        try:
            with self.http.stream("POST", self.url + route, headers=self.headers, json=payload) as resp:
                if resp.status_code != 200:
                    text = resp.read().decode(errors="replace")
                    if 400 <= resp.status_code < 500 and resp.status_code not in (401, 403, 404):
                        raise ValueError(_error_message(text))
                    raise RuntimeError(_http_error("POST", self.url + route, resp.status_code, text))
                for line in resp.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        raise ValueError(_error_message(json.dumps(chunk)))
                    if chunk.get("usage"):
                        tokens = chunk["usage"].get("completion_tokens", tokens)
                    for choice in chunk.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                        if delta:
                            ttft = time.perf_counter() - start if ttft is None else ttft
                            parts.append(delta)
                            out.write(delta)
                            out.flush()
        except KeyboardInterrupt:
            stopped = True
        except httpx.TransportError as e:
            raise RuntimeError(_unreachable(self.url, e)) from None
        out.write(" [stopped]\n" if stopped else "\n")
        if stats and ttft is not None:
            total = time.perf_counter() - start
            out.write(f"TTFT: {ttft * 1000:.2f} ms\nTPS:  {tokens / total:.2f} tokens/s ({tokens} tokens in "
                      f"{total:.2f}s)\n")
        out.flush()
        return "".join(parts)


def _server_key() -> str | None:
    from pagoda import envs

    return envs.api_key()


def _unreachable(url: str, e: Exception) -> str:
    return (f"cannot reach {url} ({type(e).__name__}: {e or 'no answer'}): is the server running (pagoda serve MODEL)? "
            f"Set its address with --url, or chat with a model in this process with `pagoda chat --local`.")


def _http_error(method: str, url: str, status: int, text: str) -> str:
    hint = " (set the server's key with --api-key or OPENAI_API_KEY)" if status == 401 else ""
    hint = hint or (" (is --url the server's /v1 URL, e.g. http://localhost:8000/v1?)" if status == 404 else "")
    return f"{method} {url} answered {status}: {_error_message(text)}{hint}"


def _error_message(text: str) -> str:
    """The ``error.message`` of an OpenAI error body, else the body's start."""
    try:
        err = json.loads(text)["error"]
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    except (ValueError, KeyError, TypeError):
        return text[:300]


CHAT_DESCRIPTION = (
    f"Chat with the model of a running server (vLLM's `vllm chat`: --url, default {DEFAULT_URL}, --model-name, "
    "--api-key), or with --local with a model in this process, through its chat template; answers stream as they "
    "are generated. Sampling flags not given: the server's defaults; with --local the model's generation config "
    "when it has sampling values, else "
    + ", ".join(f"{k}={v}" for k, v in CHAT_FALLBACK.items())
    + f", at most {CHAT_MAX_TOKENS} new tokens unless the model's config says otherwise. "
    "Ctrl-C stops an answer and returns to the prompt; an empty line or Ctrl-D quits."
)
COMPLETE_DESCRIPTION = (
    f"Complete each prompt line (or --quick PROMPT) with the model of a running server (vLLM's `vllm complete`: "
    f"--url, default {DEFAULT_URL}, --model-name, --api-key), streamed. Sampling flags not given: the server's "
    "defaults. Ctrl-C stops an answer; an empty line or Ctrl-D quits."
)
GENERATE_DESCRIPTION = (
    "Generate for each prompt (stdin as one prompt when none). One prompt's answer is printed alone; "
    "several are printed under '=== prompt i/n ===' and '=== answer i/n ===' headers (or as JSON lines)."
)
