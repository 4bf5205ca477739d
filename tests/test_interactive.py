"""``pagoda generate`` / ``pagoda chat``: streamed chat answers, Ctrl-C, labelled prompts, sampling defaults."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from engine_checks import assert_engine_clean

from pagoda import SamplingParams
from pagoda.entrypoints.cli import main
from pagoda.entrypoints.interactive import (
    CHAT_FALLBACK,
    CHAT_MAX_TOKENS,
    GENERATE_MAX_TOKENS,
    chat_loop,
    sampling_params,
    sigint_flag,
    stream_text,
)

REPO = Path(__file__).resolve().parents[1]
# Seeded sampling: reproducible, and (unlike greedy on the tiny random model) it yields visible text.
SEEDED = SamplingParams(temperature=1.0, seed=1, max_tokens=8, ignore_eos=True)


def _flags(**kw) -> argparse.Namespace:
    base = {"max_tokens": None, "temperature": None, "top_p": None, "top_k": None, "repetition_penalty": None,
            "sampling_seed": None}
    return argparse.Namespace(**{**base, **kw})


class _Recorder(io.StringIO):
    """Records each write, and can run a callback after the first non-empty one."""

    def __init__(self, after_first=None) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.after_first = after_first

    def write(self, s: str) -> int:
        if s:
            self.writes.append(s)
            if self.after_first is not None:
                cb, self.after_first = self.after_first, None
                cb()
        return super().write(s)


# ------------------------------------------------------------------ sampling defaults
def test_chat_defaults_fall_back_only_when_the_model_has_no_sampling_values():
    sp = sampling_params({}, _flags(), chat=True)
    assert (sp.temperature, sp.top_p, sp.repetition_penalty) == (
        CHAT_FALLBACK["temperature"], CHAT_FALLBACK["top_p"], CHAT_FALLBACK["repetition_penalty"])
    assert sp.max_tokens == CHAT_MAX_TOKENS
    # The model's own values win over the fallback, untouched (no repetition penalty added).
    sp = sampling_params({"temperature": 0.3, "max_tokens": 40}, _flags(), chat=True)
    assert (sp.temperature, sp.top_p, sp.repetition_penalty, sp.max_tokens) == (0.3, 1.0, 1.0, 40)
    # A max_new_tokens alone is not a sampling value: the fallback still applies.
    sp = sampling_params({"max_tokens": 40}, _flags(), chat=True)
    assert (sp.temperature, sp.max_tokens) == (CHAT_FALLBACK["temperature"], 40)
    # Flags win over everything.
    sp = sampling_params({"temperature": 0.3}, _flags(temperature=0.0, max_tokens=5, repetition_penalty=1.3,
                                                      sampling_seed=7), chat=True)
    assert (sp.temperature, sp.max_tokens, sp.repetition_penalty, sp.seed) == (0.0, 5, 1.3, 7)


def test_generate_defaults_are_the_models_without_the_chat_fallback():
    sp = sampling_params({}, _flags(), chat=False)
    assert (sp.temperature, sp.repetition_penalty, sp.max_tokens) == (1.0, 1.0, GENERATE_MAX_TOKENS)


def test_chat_help_states_the_defaults(capsys):
    try:
        main(["chat", "--help"])
    except SystemExit:
        pass
    text = " ".join(capsys.readouterr().out.split())
    assert "repetition_penalty=1.1" in text and "temperature=0.2" in text and str(CHAT_MAX_TOKENS) in text
    assert "--repetition-penalty" in text and "Ctrl-C" in text


# ------------------------------------------------------------------ chat streaming
def test_chat_streams_the_same_answer_as_llm_chat(llama_llm):
    rec = _Recorder()
    conv = chat_loop(llama_llm, SEEDED, system="Be brief.", read=_lines(["Hello there", "And again?"]), out=rec)
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant"]
    for k in (2, 4):
        ref = llama_llm.chat(conv[:k], SEEDED, use_tqdm=False)[0].outputs[0].text
        assert conv[k]["content"] == ref
    # Streamed: the first answer arrived in several writes (one per step with new text), not at the end.
    first = rec.writes[: rec.writes.index("\n")]
    assert len(first) >= 2 and "".join(first) == conv[2]["content"]
    assert_engine_clean(llama_llm)


def test_should_stop_aborts_the_request(llama_llm):
    deltas: list[str] = []
    for d in stream_text(llama_llm.llm_engine, "The quick brown fox", SamplingParams(max_tokens=50, ignore_eos=True),
                         should_stop=lambda: len(deltas) >= 1):
        deltas.append(d)
    assert len(deltas) == 1
    assert_engine_clean(llama_llm)


def test_ctrl_c_stops_one_answer_and_chat_goes_on(llama_llm):
    """A real SIGINT during an answer: that answer ends '[stopped]', the next one runs to the end."""
    rec = _Recorder(after_first=lambda: os.kill(os.getpid(), signal.SIGINT))
    params = SEEDED.clone(max_tokens=40)
    conv = chat_loop(llama_llm, params, read=_lines(["first", "second"]), out=rec)
    text = rec.getvalue()
    assert text.count(" [stopped]\n") == 1
    stopped, full = conv[1]["content"], conv[3]["content"]
    assert stopped and len(llama_llm.get_tokenizer().encode(stopped, add_special_tokens=False)) < 40
    assert full == llama_llm.chat(conv[:3], params, use_tqdm=False)[0].outputs[0].text
    assert_engine_clean(llama_llm)


def test_chat_caps_max_tokens_by_the_room_left_and_refuses_a_full_context(llama_llm):
    """A turn never fails on max_tokens (capped to the context left); a prompt that fills the context
    is refused with a message, the turn dropped, and the chat goes on."""
    L = llama_llm.llm_engine.cfg.max_model_len
    params = SEEDED.clone(max_tokens=10 * L)
    rec = _Recorder()
    conv = chat_loop(llama_llm, params, read=_lines(["word " * (2 * L), "hi"]), out=rec)
    assert [m["role"] for m in conv] == ["user", "assistant"] and conv[0]["content"] == "hi"
    assert "fills the context" in rec.getvalue() and "--max-model-len" in rec.getvalue()
    # "hi" ran with max_tokens capped to the room left (ignore_eos: it used all of it, no error)
    assert conv[1]["content"] and "error" not in rec.getvalue().split("fills the context", 1)[1]
    assert_engine_clean(llama_llm)


def test_sigint_flag_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    with sigint_flag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag[0]
    assert signal.getsignal(signal.SIGINT) is before


def test_chat_command_reads_stdin(tiny):
    """End to end: the console command, driven through stdin, prints the streamed answer."""
    model = str(tiny.path("llama"))
    proc = subprocess.run(
        [sys.executable, "-m", "pagoda", "--log-level", "WARNING", "chat", "--local", "--model", model, "--dtype",
         "float32", "--temperature", "1", "--sampling-seed", "1", "--max-tokens", "6"],
        input="Hello\n\n", capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "temperature=1.0" in proc.stderr and "max_tokens=6" in proc.stderr
    # The tiny model's generation config has no sampling values: the chat fallback applies under the flags.
    params = SamplingParams(**{**CHAT_FALLBACK, "temperature": 1.0, "seed": 1, "max_tokens": 6})
    ref = tiny.llm("llama").chat([{"role": "user", "content": "Hello"}], params, use_tqdm=False)[0].outputs[0].text
    assert ref and proc.stdout == "> " + ref + "\n> "


# ------------------------------------------------------------------ generate output
def test_generate_labels_several_prompts_and_prints_one_plainly(tiny, capsys):
    model = str(tiny.path("llama"))
    common = ["--log-level", "WARNING", "generate", "--model", model, "--dtype", "float32", "--temperature", "1",
              "--sampling-seed", "1", "--max-tokens", "5"]
    ref = tiny.llm("llama").generate(["alpha", "beta"], SamplingParams(seed=1, max_tokens=5), use_tqdm=False)
    a, b = (r.outputs[0].text for r in ref)
    assert a and b and a != b

    main([*common, "alpha"])
    assert capsys.readouterr().out == a + "\n"

    main([*common, "alpha", "beta"])
    out = capsys.readouterr().out
    assert out == (f"=== prompt 1/2 ===\nalpha\n=== answer 1/2 ===\n{a}\n\n"
                   f"=== prompt 2/2 ===\nbeta\n=== answer 2/2 ===\n{b}\n")

    main([*common, "--output-format", "jsonl", "alpha", "beta"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["prompt"], r["text"]) for r in rows] == [("alpha", a), ("beta", b)]
    assert all(r["finish_reason"] in ("length", "stop") for r in rows)


def _lines(items):
    it = iter(items)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read
