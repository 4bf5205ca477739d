"""`pagoda chat` / `pagoda complete` as vLLM's `vllm chat` / `vllm complete`: clients of a running server (--url,
--model-name, --api-key, -q/--quick, --system-prompt, --stats), checked against the same server's answers to the
OpenAI client; `chat --local` keeps the in-process model, and mixing the two modes' flags is refused by name."""

from __future__ import annotations

import builtins

import pytest
from server_utils import ALIAS, API_KEY, MODEL

from pagoda.entrypoints.cli import main


def _run(capsys, *argv: str) -> tuple[str, str]:
    main(["--log-level", "WARNING", *argv])
    cap = capsys.readouterr()
    return cap.out, cap.err


def _feed(monkeypatch, lines: list[str]) -> None:
    it = iter(lines)

    def fake_input(prompt: str = "") -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)


def test_chat_quick_is_the_servers_chat_answer(server, capsys):
    out, err = _run(capsys, "chat", "--url", server.url + "/v1", "--api-key", API_KEY, "-q", "Hello there",
                    "--system-prompt", "Be brief.", "--max-tokens", "6", "--temperature", "0")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    ref = server.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    assert ref.choices[0].message.content and out == ref.choices[0].message.content + "\n"
    assert f"Using model: {MODEL}" in err  # the first model of GET /v1/models, as vLLM picks it


def test_chat_keeps_the_conversation_across_turns(server, capsys, monkeypatch):
    _feed(monkeypatch, ["first question", "second question"])
    out, _ = _run(capsys, "chat", "--url", server.url + "/v1", "--api-key", API_KEY, "--model-name", ALIAS,
                  "--max-tokens", "5", "--temperature", "0")
    client = server.client()
    conv = [{"role": "user", "content": "first question"}]
    first = client.chat.completions.create(model=ALIAS, messages=conv, max_tokens=5, temperature=0)
    conv += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "second question"}]
    second = client.chat.completions.create(model=ALIAS, messages=conv, max_tokens=5, temperature=0)
    assert out == f"{first.choices[0].message.content}\n{second.choices[0].message.content}\n\n"


def test_complete_quick_and_stats(server, capsys):
    out, _ = _run(capsys, "complete", "--url", server.url + "/v1", "--api-key", API_KEY, "--quick", "The sky is",
                  "--max-tokens", "4", "--temperature", "0", "--stats")
    ref = server.client().completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0)
    text, ttft, tps = out.split("\n")[:3]
    assert text == ref.choices[0].text
    assert ttft.startswith("TTFT: ") and ttft.endswith(" ms")
    assert f"({ref.usage.completion_tokens} tokens in " in tps  # the stream's usage report


def test_complete_reads_lines_until_an_empty_one(server, capsys, monkeypatch):
    _feed(monkeypatch, ["One", "Two", "", "never sent"])
    out, _ = _run(capsys, "complete", "--url", server.url + "/v1", "--api-key", API_KEY, "--max-tokens", "3",
                  "--temperature", "0")
    client = server.client()
    refs = [client.completions.create(model=MODEL, prompt=p, max_tokens=3, temperature=0).choices[0].text
            for p in ("One", "Two")]
    assert out == refs[0] + "\n" + refs[1] + "\n"


def test_a_refused_turn_is_reported_and_the_chat_goes_on(server, capsys, monkeypatch):
    _feed(monkeypatch, ["hi", "again"])
    out, _ = _run(capsys, "chat", "--url", server.url + "/v1", "--api-key", API_KEY, "--max-tokens", "3",
                  "--temperature", "-1")
    assert out.count("error: ") == 2 and "temperature" in out  # the server's 400, once per turn
    with pytest.raises(SystemExit) as e:  # --quick: the command fails with the server's message
        _run(capsys, "chat", "--url", server.url + "/v1", "--api-key", API_KEY, "-q", "hi", "--temperature", "-1")
    assert "temperature" in str(e.value)


def test_a_wrong_key_or_no_server_is_one_line_naming_the_fix(server, capsys):
    with pytest.raises(SystemExit) as e:
        _run(capsys, "chat", "--url", server.url + "/v1", "--api-key", "wrong", "-q", "hi")
    assert "answered 401" in str(e.value) and "--api-key" in str(e.value)
    with pytest.raises(SystemExit) as e:
        _run(capsys, "complete", "--url", "http://127.0.0.1:9/v1", "-q", "hi")
    assert "cannot reach http://127.0.0.1:9/v1" in str(e.value) and "--url" in str(e.value)


def test_modes_flags_are_not_mixed(capsys):
    with pytest.raises(SystemExit) as e:  # an engine flag without --local: never a chat with another model
        _run(capsys, "chat", "--model", "some/model", "--dtype", "float32", "-q", "hi")
    assert str(e.value).startswith("error: --model, --dtype set up a model in this process: add --local")
    with pytest.raises(SystemExit) as e:
        _run(capsys, "chat", "--local", "--url", "http://x/v1", "--model-name", "m", "-q", "hi")
    assert str(e.value) == "error: --url, --model-name are for chatting with a server: drop --local, or drop them."
