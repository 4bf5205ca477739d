"""Four server parity gaps against vLLM, each checked against a reference on a tiny model served in-process:

* chat ``echo`` + ``logprobs`` without ``prompt_logprobs``: vLLM's ``ChatCompletionRequest.to_sampling_params`` asks
  for the prompt's logprobs at ``top_logprobs``, so the response carries ``prompt_logprobs`` (the reference: the same
  request giving ``prompt_logprobs: top_logprobs`` itself);
* completions ``echo`` of a text prompt cut by ``truncate_prompt_tokens``: the echo is what the model saw (its kept
  tokens decoded), so the text, the echoed tokens' logprobs and their ``text_offset``\\ s agree;
* chat stream with ``return_token_ids`` and ``n`` > 1: ``prompt_token_ids`` in each choice's role chunk (vLLM's
  ``chat_completion_stream_generator`` builds one chunk per choice, each with the prompt's ids);
* completions without ``max_tokens`` on a model whose ``generation_config.json`` has a smaller ``max_new_tokens``:
  16 (vLLM's ``get_max_tokens`` since PR #34063: the request's value, here the field's default 16, before the
  generation config's, which is a default, not a ceiling).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build_tiny_model  # noqa: E402

MAX_NEW_TOKENS = 8  # the model's generation_config.json max_new_tokens: below completions' default of 16
PROMPT = "The quick brown fox jumps over the lazy dog and runs away"
CHAT = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "The quick brown"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = build_tiny_model(tmp_path_factory.mktemp("leftovers") / "llama")
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["max_new_tokens"] = MAX_NEW_TOKENS
    (folder / "generation_config.json").write_text(json.dumps(gen))
    return folder


@pytest.fixture(scope="module")
def client(model_dir):
    """The app in-process (its lifespan starts the engine)."""
    from fastapi.testclient import TestClient

    from pagoda.entrypoints.cli import build_parser
    from pagoda.entrypoints.openai.api_server import build_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        args = build_parser().parse_args(["serve", str(model_dir), "--served-model-name", "m",
                                          "--kv-cache-memory-bytes", "16M"])
        with TestClient(build_app(args)) as c:
            deadline = time.monotonic() + 60  # bounds a hang only: the engine loads in the background
            while c.get("/health").status_code != 200:
                assert time.monotonic() < deadline, "the in-process server never became ready"
                time.sleep(0.1)
            yield c


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _post(client, path: str, body: dict) -> dict:
    r = client.post(path, json={"model": "m", **body})
    assert r.status_code == 200, r.text
    return r.json()


def _events(client, path: str, body: dict) -> list[dict]:
    r = client.post(path, json={"model": "m", "stream": True, **body})
    assert r.status_code == 200, r.text
    lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


# ------------------------------------------------------------------------------------------------ 1
def test_chat_echo_with_logprobs_carries_prompt_logprobs_at_top_logprobs(client):
    base = {"messages": CHAT, "add_generation_prompt": False, "continue_final_message": True, "echo": True,
            "max_tokens": 3, "temperature": 0, "logprobs": True, "return_token_ids": True}
    for top in (2, 0, None):
        body = {**base, **({"top_logprobs": top} if top is not None else {})}
        got = _post(client, "/v1/chat/completions", body)
        ref = _post(client, "/v1/chat/completions", {**body, "prompt_logprobs": top or 0})
        plp = got["prompt_logprobs"]
        assert plp is not None, f"top_logprobs {top}: no prompt_logprobs"
        assert plp == ref["prompt_logprobs"]
        ids = got["prompt_token_ids"]
        assert len(plp) == len(ids) and plp[0] is None
        for pos, (d, t) in enumerate(zip(plp[1:], ids[1:], strict=True), 1):
            assert str(t) in d, pos  # the prompt's own token, then the top ones
            assert len(d) <= (top or 0) + 1
        # the echo itself and the answer are unchanged by it
        assert got["choices"] == ref["choices"]
        assert got["choices"][0]["message"]["content"].startswith("The quick brown")

    # not asked for: no echo, or echo without logprobs
    assert _post(client, "/v1/chat/completions", {**base, "echo": False, "top_logprobs": 2})["prompt_logprobs"] is None
    no_lp = {k: v for k, v in base.items() if k != "logprobs"}
    assert _post(client, "/v1/chat/completions", no_lp)["prompt_logprobs"] is None
    # a stream has nowhere to put them: it runs (not a 400, as for an explicit prompt_logprobs)
    events = _events(client, "/v1/chat/completions", {**base, "top_logprobs": 2})
    assert "".join(c["delta"].get("content") or "" for e in events for c in e["choices"]).startswith(
        "The quick brown")


# ------------------------------------------------------------------------------------------------ 2
def _check_echo(text: str, logprobs: dict, echoed: str, prompt_ids: list[int], gen_text: str) -> None:
    assert text == echoed + gen_text
    n = len(prompt_ids)
    tokens, offsets = logprobs["tokens"], logprobs["text_offset"]
    assert len(tokens) == len(offsets) > n
    for tok, off in zip(tokens[:n], offsets[:n], strict=True):  # each prompt token stands where its offset says
        assert text[off:off + len(tok)] == tok, (tok, off, text)
    assert "".join(tokens[:n]) == echoed
    assert offsets[n] == len(echoed)  # the answer's first token right after the echo


@pytest.mark.parametrize("side", [None, "right"])
def test_completion_echo_of_a_truncated_text_prompt_is_what_the_model_saw(client, tokenizer, side):
    keep = 4
    full_ids = tokenizer.encode(PROMPT)
    assert len(full_ids) > keep + 2
    body = {"prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 3, "temperature": 0,
            "truncate_prompt_tokens": keep, "return_token_ids": True,
            **({"truncation_side": side} if side else {})}
    r = _post(client, "/v1/completions", body)
    ch = r["choices"][0]
    kept = full_ids[:keep] if side == "right" else full_ids[-keep:]
    assert ch["prompt_token_ids"] == kept and r["usage"]["prompt_tokens"] == keep
    echoed = tokenizer.decode(kept, skip_special_tokens=False)
    plain = _post(client, "/v1/completions", {**body, "echo": False})["choices"][0]
    assert plain["token_ids"] == ch["token_ids"]
    gen_text = plain["text"]
    _check_echo(ch["text"], ch["logprobs"], echoed, kept, gen_text)
    # the same when streamed: the echo in the first chunk, then the tokens
    events = _events(client, "/v1/completions", body)
    text = "".join(c["text"] for e in events for c in e["choices"])
    lp: dict = {"tokens": [], "text_offset": []}
    for e in events:
        for c in e["choices"]:
            if c["logprobs"]:
                lp["tokens"] += c["logprobs"]["tokens"]
                lp["text_offset"] += c["logprobs"]["text_offset"]
    assert text == ch["text"] and lp["tokens"] == ch["logprobs"]["tokens"]
    _check_echo(text, lp, echoed, kept, gen_text)
    # a prompt that truncation leaves whole is echoed as given
    whole = _post(client, "/v1/completions", {**body, "truncate_prompt_tokens": len(full_ids)})
    assert whole["choices"][0]["text"].startswith(PROMPT)


# ------------------------------------------------------------------------------------------------ 3
def test_chat_stream_sends_prompt_token_ids_in_each_choice_role_chunk(client):
    n = 3
    body = {"messages": CHAT[:1], "n": n, "max_tokens": 4, "temperature": 0.9, "seed": 7, "return_token_ids": True}
    full = _post(client, "/v1/chat/completions", body)
    events = _events(client, "/v1/chat/completions", body)
    carriers = [e for e in events if "prompt_token_ids" in e]
    assert len(carriers) == n
    assert sorted(e["choices"][0]["index"] for e in carriers) == list(range(n))
    for e in carriers:
        assert e["prompt_token_ids"] == full["prompt_token_ids"]
        assert e["choices"][0]["delta"].get("role") == "assistant"  # the role chunk, each choice's first
    firsts = {}
    for e in events:
        for c in e["choices"]:
            firsts.setdefault(c["index"], e)
    assert all("prompt_token_ids" in e for e in firsts.values())


# ------------------------------------------------------------------------------------------------ 4
def test_completion_without_max_tokens_is_16_despite_a_smaller_generation_config_max_new_tokens(client):
    body = {"prompt": PROMPT, "temperature": 0, "ignore_eos": True}
    absent = _post(client, "/v1/completions", body)
    assert absent["usage"]["completion_tokens"] == 16
    assert absent["choices"][0]["finish_reason"] == "length"
    # the generation config's max_new_tokens is the default where the request has no value of its own
    assert _post(client, "/v1/completions", {**body, "max_tokens": None})["usage"]["completion_tokens"] == \
        MAX_NEW_TOKENS
    chat = {"messages": CHAT[:1], "temperature": 0, "ignore_eos": True}
    assert _post(client, "/v1/chat/completions", chat)["usage"]["completion_tokens"] == MAX_NEW_TOKENS
    # and never a ceiling on a value the request gives
    assert _post(client, "/v1/completions", {**body, "max_tokens": 20})["usage"]["completion_tokens"] == 20
    # greedy: the 16 tokens continue the MAX_NEW_TOKENS ones
    short = _post(client, "/v1/completions", {**body, "max_tokens": MAX_NEW_TOKENS, "return_token_ids": True})
    longer = _post(client, "/v1/completions", {**body, "return_token_ids": True})
    assert longer["choices"][0]["token_ids"][:MAX_NEW_TOKENS] == short["choices"][0]["token_ids"]
