"""``pagoda generate`` and ``pagoda chat``: the offline engine driven from a terminal.

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
import signal
import sys
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


def add_sampling_args(p: argparse.ArgumentParser, chat: bool) -> None:
    """Sampling flags shared by generate and chat; the help states each default."""
    if chat:
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


def add_chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default=None, help="system prompt (default: none)")
    add_sampling_args(p, chat=True)


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
              read: Callable[[str], str] = input, out: TextIO | None = None) -> list[dict[str, str]]:
    """Read a line, stream the answer, repeat; an empty line, EOF or Ctrl-C at the prompt ends.

    Returns the conversation.

    An answer stopped with Ctrl-C stays in the conversation as far as it was shown.
    """
    out = out or sys.stdout
    conv: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = read("> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            break
        if not line.strip():
            break
        conv.append({"role": "user", "content": line})
        try:
            answer = _answer(llm, conv, params, out)
        except ValueError as e:  # a refused turn (e.g. the conversation outgrew the context): say so, go on
            conv.pop()
            out.write(f"error: {e}\n")
            out.flush()
            continue
        conv.append({"role": "assistant", "content": answer})
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
    llm = _make_llm(args)
    params = sampling_params(_model_defaults(llm), args, chat=True)
    shown = {k: getattr(params, k) for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens")}
    print("pagoda chat: " + ", ".join(f"{k}={v}" for k, v in shown.items()), file=sys.stderr)
    print("Ctrl-C stops an answer; an empty line or Ctrl-D quits.", file=sys.stderr)
    chat_loop(llm, params, args.system)


CHAT_DESCRIPTION = (
    "Chat with the model through its chat template; answers stream as they are generated. "
    "Sampling: the model's generation config when it has sampling values, else "
    + ", ".join(f"{k}={v}" for k, v in CHAT_FALLBACK.items())
    + f"; at most {CHAT_MAX_TOKENS} new tokens unless the model's config says otherwise. "
    "Ctrl-C stops an answer and returns to the prompt; an empty line or Ctrl-D quits."
)
GENERATE_DESCRIPTION = (
    "Generate for each prompt (stdin as one prompt when none). One prompt's answer is printed alone; "
    "several are printed under '=== prompt i/n ===' and '=== answer i/n ===' headers (or as JSON lines)."
)
