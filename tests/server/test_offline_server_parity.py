"""Parity fuzz: the OpenAI server against the offline API on the same requests.

Seeded random combinations of vLLM's sampling fields go to ``/v1/completions`` and ``/v1/chat/completions``
of a real server, and the same prompt through ``LLM.generate`` / ``LLM.chat`` with ``SamplingParams`` built
from the same fields as vLLM's ``to_sampling_params`` maps them: the request's value, else the model's
``generation_config.json`` default (this model's are non-trivial), else OpenAI's. Text, token ids, logprobs
(1e-4), finish and stop reasons must agree, and a request one side refuses the other must refuse too,
naming the same field.

Left out on purpose (documented differences, not mapping bugs): a ``max_tokens`` past the context (the offline
``LLM`` cuts it to fit, the server refuses it, both as vLLM); with a ``max_completion_tokens`` of 0 the server
refuses rather than falling back to ``max_tokens`` as vLLM's ``or`` does, so the reference maps it to
``max_tokens=0`` (refused offline too). ``PAGODA_PARITY_CASES`` / ``PAGODA_PARITY_SEED`` widen the search.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from server_utils import MODEL, RemoteServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build_tiny_model  # noqa: E402

from pagoda import LLM, SamplingParams  # noqa: E402
from pagoda.errors import ValidationError  # noqa: E402

GEN_DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.02, "repetition_penalty": 1.3}
MAX_NEW_TOKENS = 10  # generation_config.json's max_new_tokens: the max_tokens of a request that gives none
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
PROMPTS = ["Paris is the capital", "The quick brown fox", "Large language models generate"]
CHATS = [[{"role": "user", "content": "Paris is"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]]
TOL = 1e-4
NUM_CASES = int(os.environ.get("PAGODA_PARITY_CASES", "80"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = build_tiny_model(tmp_path_factory.mktemp("parity") / "llama")
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.update(GEN_DEFAULTS, max_new_tokens=MAX_NEW_TOKENS)
    (folder / "generation_config.json").write_text(json.dumps(gen))
    return folder


@pytest.fixture(scope="module")
def srv(model_dir):
    s = RemoteServer(str(model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "16M"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def llm(model_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        engine = LLM(model=str(model_dir), kv_cache_memory_bytes=16 * 2**20)
    yield engine
    engine.shutdown()


# ------------------------------------------------------------------------------------------ requests
def _maybe(rng: random.Random, p: float = 0.35) -> bool:
    return rng.random() < p


VALID_CHOICES: list[tuple[str, float, list[Any]]] = [
    # (field, how often it is set, the values it takes)
    ("temperature", 0.6, [0, 0.0, 1e-6, 0.5, 1.0, 1.3]), ("top_p", 0.35, [0.5, 0.9, 1.0]),
    ("top_k", 0.35, [-1, 0, 1, 5, 50]), ("min_p", 0.35, [0.0, 0.1, 0.3]), ("seed", 0.5, [0, 7, 1234, -1]),
    ("n", 0.25, [1, 2, 3]), ("presence_penalty", 0.25, [-1.0, 0.0, 0.8, 2.0]),
    ("frequency_penalty", 0.25, [-1.0, 0.0, 0.8, 2.0]), ("repetition_penalty", 0.3, [1.0, 1.2, 0.8]),
    ("bad_words", 0.2, [["the"], [" capital", "fox"]]), ("min_tokens", 0.25, [0, 2, 5]),
    ("stop", 0.3, ["e", [" the", "a"], ["\n"], []]), ("include_stop_str_in_output", 0.2, [True, False]),
    ("ignore_eos", 0.2, [True, False]), ("skip_special_tokens", 0.2, [True, False]),
    ("spaces_between_special_tokens", 0.2, [True, False]), ("prompt_logprobs", 0.2, [0, 1, 3, -1]),
    ("truncate_prompt_tokens", 0.15, [2, 3, -1]),
]


def random_fields(rng: random.Random, vocab: int) -> dict[str, Any]:
    """Valid sampling fields (an invalid one is added by :func:`invalid_field`)."""
    f: dict[str, Any] = {name: rng.choice(values) for name, p, values in VALID_CHOICES if _maybe(rng, p)}
    if _maybe(rng, 0.25):
        f["logit_bias"] = {str(rng.randrange(vocab)): rng.choice([-100, -5, 5, 100]) for _ in range(2)}
    if _maybe(rng, 0.2):
        f["allowed_token_ids"] = rng.sample(range(vocab), 8)
    if _maybe(rng, 0.25):
        f["stop_token_ids"] = [rng.randrange(vocab) for _ in range(rng.choice([0, 1, 3]))]
    if f.get("skip_special_tokens") is False and f.get("spaces_between_special_tokens") is False:
        del f["spaces_between_special_tokens"]  # refused offline and served alike: one of invalid_field's
    return f


def invalid_field(rng: random.Random, vocab: int, chat: bool) -> dict[str, Any]:
    """One field out of range (only one per request: with two, which one is named first is not a contract)."""
    options: list[dict[str, Any]] = [
        {"temperature": -0.5}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -3}, {"min_p": 1.5}, {"n": 0},
        {"presence_penalty": 2.5}, {"frequency_penalty": -3.0}, {"repetition_penalty": 0.0},
        {"logit_bias": {"x": 1}}, {"logit_bias": {"-1": 1}}, {"logit_bias": {"5.0": 1}},
        {"skip_special_tokens": False, "spaces_between_special_tokens": False},
        {"logit_bias": {str(vocab + 50): 1}}, {"logit_bias": {"5": 200}},
        {"bad_words": [""]}, {"allowed_token_ids": []}, {"allowed_token_ids": [vocab + 3]},
        {"min_tokens": -1}, {"min_tokens": 20, "max_tokens": 8}, {"stop": [""]}, {"stop_token_ids": [-1]},
        {"prompt_logprobs": 25},
        {"prompt_logprobs": -2}, {"truncate_prompt_tokens": 0}, {"truncate_prompt_tokens": 10_000},
        {"seed": 2**64}, {"max_tokens": 0}, {"max_tokens": -1},
    ]
    options += [{"max_completion_tokens": 0}, {"logprobs": True, "top_logprobs": 25}] if chat else [
        {"logprobs": 25}, {"logprobs": -1}]
    return rng.choice(options)


def random_completion(rng: random.Random, vocab: int) -> dict[str, Any]:
    prompt: Any = rng.choice(PROMPTS)
    if _maybe(rng, 0.2):
        prompt = [rng.randrange(vocab) for _ in range(rng.choice([3, 6]))]
    elif _maybe(rng, 0.2):  # several prompts: n choices each, in order
        k = rng.choice([2, 3])
        prompt = rng.choice([[rng.choice(PROMPTS) for _ in range(k)],
                             [[rng.randrange(vocab) for _ in range(4)] for _ in range(k)]])
    body = {"model": MODEL, "prompt": prompt, **random_fields(rng, vocab)}
    if _maybe(rng, 0.85):
        body["max_tokens"] = rng.choice([1, 4, 8, 12, 20, None])
    if _maybe(rng, 0.4):
        body["logprobs"] = rng.choice([0, 1, 3])
    if _maybe(rng, 0.25):
        body["echo"] = True
        if _maybe(rng, 0.3):
            body["max_tokens"] = 0  # score the prompt alone
    if body.get("min_tokens", 0) > (body.get("max_tokens") or MAX_NEW_TOKENS):
        del body["min_tokens"]
    if _maybe(rng, 0.3):
        body.update(invalid_field(rng, vocab, False))
    return body


def random_chat(rng: random.Random, vocab: int) -> dict[str, Any]:
    body = {"model": MODEL, "messages": rng.choice(CHATS), **random_fields(rng, vocab)}
    key = rng.choice(["max_tokens", "max_completion_tokens"])
    if _maybe(rng, 0.85):
        body[key] = rng.choice([1, 4, 8, 12, 20])
    if _maybe(rng, 0.4):
        body["logprobs"] = True
        if _maybe(rng, 0.8):
            body["top_logprobs"] = rng.choice([0, 2, 5])
    if body.get("min_tokens", 0) > (body.get(key) or MAX_NEW_TOKENS):
        del body["min_tokens"]
    if _maybe(rng, 0.3):
        body.update(invalid_field(rng, vocab, True))
    return body


# ------------------------------------------------------------------- vLLM's mapping of a request
def vllm_params(body: dict[str, Any], chat: bool, defaults: dict[str, Any]) -> dict[str, Any]:
    """The SamplingParams fields vLLM's ``to_sampling_params`` builds from ``body`` (the server's defaults:
    ``defaults``, from generation_config.json)."""
    p: dict[str, Any] = {}
    for name, fallback in OPENAI_DEFAULTS.items():
        v = body.get(name)
        p[name] = v if v is not None else defaults.get(name, fallback)
    for name in ("n", "presence_penalty", "frequency_penalty", "seed", "stop", "stop_token_ids", "ignore_eos",
                 "min_tokens", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
                 "logit_bias", "allowed_token_ids", "bad_words", "prompt_logprobs", "truncate_prompt_tokens"):
        if body.get(name) is not None:
            p[name] = body[name]
    if chat:
        # vLLM writes ``max_completion_tokens or max_tokens``; a 0 there is refused (by both sides here), not ignored
        mct = body.get("max_completion_tokens")
        p["max_tokens"] = mct if mct is not None else body.get("max_tokens")
        if p["max_tokens"] is None:  # the context's room (ample here), capped by the generation config's
            p["max_tokens"] = defaults["max_tokens"]
        if body.get("logprobs"):
            p["logprobs"] = body.get("top_logprobs") or 0
    else:
        # absent: 16 (vLLM since PR #34063: the generation config's max_new_tokens is a default, not a ceiling);
        # null: the generation config's max_new_tokens (the context's room is ample here)
        p["max_tokens"] = 16 if "max_tokens" not in body else body["max_tokens"]
        if p["max_tokens"] is None:
            p["max_tokens"] = defaults["max_tokens"]
        if body.get("logprobs") is not None:
            p["logprobs"] = body["logprobs"]
        if p.get("prompt_logprobs") is None and body.get("echo"):
            p["prompt_logprobs"] = body.get("logprobs")
        if body.get("echo") and body.get("max_tokens") == 0:
            p["max_tokens"] = 1
    return {k: v for k, v in p.items() if v is not None}


# ------------------------------------------------------------------------------------ comparison
def offline_run(llm: LLM, body: dict[str, Any], chat: bool) -> tuple[list[Any], str | None]:
    """(the RequestOutputs, one per prompt, None) or ([], the refused field)."""
    try:
        params = SamplingParams(**vllm_params(body, chat, llm.llm_engine.input_processor.sampling_defaults))
        if chat:
            return llm.chat(body["messages"], params, use_tqdm=False), None
        prompt = body["prompt"]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            prompt = [{"prompt_token_ids": prompt}]
        elif isinstance(prompt, list):
            prompt = [p if isinstance(p, str) else {"prompt_token_ids": p} for p in prompt]
        return llm.generate(prompt, params, use_tqdm=False), None
    except ValidationError as e:
        return [], e.parameter


SERVER_NAMES = {"top_logprobs": "logprobs", "max_completion_tokens": "max_tokens", "messages": "prompt"}


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    a, b = max(a, -9999.0), max(b, -9999.0)
    return math.isclose(a, b, abs_tol=TOL)


def compare_refusals(resp: Any, refused: str | None) -> list[str]:
    """A request one side refused: the other must refuse it too, naming the same field."""
    if resp.status_code not in (200, 400):
        return [f"server status {resp.status_code}: {resp.text[:300]}"]
    if resp.status_code == 200:
        return [f"offline refused {refused}, server ran"]
    err = resp.json()["error"]
    if refused is None:
        return [f"server refused ({err.get('param')}: {err['message']}), offline ran"]
    if SERVER_NAMES.get(err.get("param"), err.get("param")) != refused:
        return [f"refused fields differ: server {err.get('param')}, offline {refused}"]
    return []


def compare(llm: LLM, body: dict[str, Any], resp: Any, chat: bool) -> list[str]:
    outs, refused = offline_run(llm, body, chat)
    if resp.status_code != 200 or refused is not None:
        return compare_refusals(resp, refused)
    data = resp.json()
    choices = sorted(data["choices"], key=lambda c: c["index"])
    if [c["index"] for c in choices] != list(range(sum(len(out.outputs) for out in outs))):
        return [f"choice indexes {[c['index'] for c in choices]} vs {[len(out.outputs) for out in outs]} outputs"]
    diffs: list[str] = []
    for p, out in enumerate(outs):  # prompt p's samples are choices p * n ... p * n + n - 1
        mine = choices[p * len(out.outputs):(p + 1) * len(out.outputs)]
        diffs += compare_prompt_logprobs(data if chat else mine[0], out, body)
        for ch, o in zip(mine, out.outputs, strict=True):
            diffs += compare_choice(ch, o, out, body, chat, llm.get_tokenizer())
    return diffs


def compare_choice(ch: dict[str, Any], o: Any, out: Any, body: dict[str, Any], chat: bool, tok: Any) -> list[str]:
    i = ch["index"]
    if not chat and body.get("echo") and body.get("max_tokens") == 0:  # the engine drew a token no choice shows
        o = dataclasses.replace(o, text="", token_ids=[], logprobs=None if o.logprobs is None else [],
                                finish_reason="length", stop_reason=None)
    if ch["token_ids"] != list(o.token_ids):
        return [f"choice {i} tokens {ch['token_ids']} vs {list(o.token_ids)}"]
    diffs = []
    text = ch["message"]["content"] if chat else ch["text"]
    want = o.text
    if not chat and body.get("echo"):  # a prompt of token ids, or one truncate_prompt_tokens cut, is echoed decoded
        # (as the model saw it)
        whole = out.prompt is not None and len(tok.encode(out.prompt)) == len(out.prompt_token_ids)
        prompt = out.prompt if whole else tok.decode(out.prompt_token_ids, skip_special_tokens=False)
        want = prompt + o.text
    if (text or "") != want:
        diffs.append(f"choice {i} text {text!r} vs {want!r}")
    if ch["finish_reason"] != o.finish_reason:
        diffs.append(f"choice {i} finish_reason {ch['finish_reason']} vs {o.finish_reason}")
    if ch.get("stop_reason") != o.stop_reason:
        diffs.append(f"choice {i} stop_reason {ch.get('stop_reason')!r} vs {o.stop_reason!r}")
    lp = ch.get("logprobs")
    if (o.logprobs is None) != (lp is None):
        return diffs + [f"choice {i} logprobs: server {lp is not None}, offline {o.logprobs is not None}"]
    if lp is not None:
        diffs += chat_logprobs_diff(lp, o, body) if chat else completion_logprobs_diff(lp, o, out, body)
    return diffs


def compare_prompt_logprobs(holder: dict[str, Any], out: Any, body: dict[str, Any]) -> list[str]:
    got = holder.get("prompt_logprobs")
    want = out.prompt_logprobs
    if body.get("prompt_logprobs") is None:
        return [] if got is None else ["server prompt_logprobs, none asked"]  # echo's: in the choice's logprobs
    if want is None or got is None:
        return [] if want is got else [f"prompt_logprobs {got is None} vs {want is None}"]
    if len(got) != len(want):
        return [f"prompt_logprobs length {len(got)} vs {len(want)}"]
    for pos, (g, w) in enumerate(zip(got, want, strict=True)):
        if (g is None) != (w is None):
            return [f"prompt_logprobs[{pos}] None-ness"]
        if g is None:
            continue
        if set(map(int, g)) != set(w):
            return [f"prompt_logprobs[{pos}] ids {sorted(map(int, g))} vs {sorted(w)}"]
        for t, v in w.items():
            if not close(g[str(t)]["logprob"], v.logprob) or g[str(t)]["rank"] != v.rank:
                return [f"prompt_logprobs[{pos}][{t}] {g[str(t)]} vs {v}"]
    return []


def chat_logprobs_diff(lp: dict[str, Any], o: Any, body: dict[str, Any]) -> list[str]:
    content = lp["content"]
    if len(content) != len(o.token_ids):
        return [f"logprobs length {len(content)} vs {len(o.token_ids)}"]
    for j, (c, t, d) in enumerate(zip(content, o.token_ids, o.logprobs, strict=True)):
        if not close(c["logprob"], d[t].logprob):
            return [f"logprob[{j}] {c['logprob']} vs {d[t].logprob}"]
        tops = [v.logprob for v in d.values()][: body.get("top_logprobs") or 0]
        if len(c["top_logprobs"]) != len(tops) or not all(
                close(x["logprob"], y) for x, y in zip(c["top_logprobs"], tops, strict=True)):
            return [f"top_logprobs[{j}] {[x['logprob'] for x in c['top_logprobs']]} vs {tops}"]
    return []


def legacy_logprobs_diff(what: str, values: list[float | None], tops: list[dict[str, float] | None],
                         ids: list[int], dicts: list[Any], num: int) -> list[str]:
    """Completions' legacy logprobs of ``ids`` against the offline dicts: the chosen token's logprob, and the
    chosen plus the top ``num`` (vLLM's: ``num`` + 1 at most) in ``top_logprobs``."""
    if not len(values) == len(tops) == len(ids) == len(dicts):
        return [f"{what}: {len(values)} logprobs vs {len(ids)} tokens"]
    for j, (g, top, t, d) in enumerate(zip(values, tops, ids, dicts, strict=True)):
        if d is None:  # the first prompt token: nothing predicts it
            if g is not None or top is not None:
                return [f"{what}[{j}]: {g}, {top} where nothing predicts the token"]
            continue
        if not close(g, d[t].logprob):
            return [f"{what}[{j}] {g} vs {d[t].logprob}"]
        want = sorted(v.logprob for v in list(d.values())[: num + 1])
        if top is None or len(top) != len(want) or not all(
                close(x, y) for x, y in zip(sorted(top.values()), want, strict=True)):
            return [f"{what} top_logprobs[{j}] {top} vs {want}"]
    return []


def completion_logprobs_diff(lp: dict[str, Any], o: Any, out: Any, body: dict[str, Any]) -> list[str]:
    n_prompt = len(out.prompt_token_ids) if body.get("echo") else 0
    diffs = []
    if n_prompt:
        diffs += legacy_logprobs_diff("echo", lp["token_logprobs"][:n_prompt], lp["top_logprobs"][:n_prompt],
                                      out.prompt_token_ids, out.prompt_logprobs, body["logprobs"])
    return diffs + legacy_logprobs_diff("output", lp["token_logprobs"][n_prompt:], lp["top_logprobs"][n_prompt:],
                                        list(o.token_ids), o.logprobs, body["logprobs"])


def send(srv: RemoteServer, body: dict[str, Any], chat: bool) -> Any:
    return srv.post("/v1/chat/completions" if chat else "/v1/completions", {**body, "return_token_ids": True})


def deterministic(body: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Random sampling is compared only with a seed (greedy needs none)."""
    t = body.get("temperature", defaults.get("temperature", 1.0))
    if (t is None or t > 0) and body.get("seed") in (None, -1):
        body = {**body, "seed": 11}
    return body


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_fuzz_parity(srv, llm, chat):
    vocab = len(llm.get_tokenizer())
    defaults = llm.llm_engine.input_processor.sampling_defaults
    assert {k: defaults[k] for k in GEN_DEFAULTS} == GEN_DEFAULTS  # the model's defaults are in force
    rng = random.Random(int(os.environ.get("PAGODA_PARITY_SEED", "1234")) + chat)
    failures = []
    for case in range(NUM_CASES):
        body = deterministic(random_chat(rng, vocab) if chat else random_completion(rng, vocab), defaults)
        diffs = compare(llm, body, send(srv, body, chat), chat)
        if diffs:
            failures.append(f"case {case}: {json.dumps(body)}\n    " + "\n    ".join(diffs))
    assert not failures, "\n".join(failures)


PINNED = [
    # echo + logprobs with a smaller prompt_logprobs: the prompt's logprobs are the prompt_logprobs asked for (vLLM's
    # mapping), not max(logprobs, prompt_logprobs) (the response's prompt_logprobs then held more than asked)
    {"model": MODEL, "prompt": PROMPTS[0], "temperature": 0, "max_tokens": 3, "logprobs": 3, "echo": True,
     "prompt_logprobs": 1},
    {"model": MODEL, "prompt": PROMPTS[1], "temperature": 0, "max_tokens": 0, "logprobs": 2, "echo": True,
     "prompt_logprobs": 0},
    # an invalid prompt_logprobs beside echo + logprobs is refused, never replaced by logprobs
    {"model": MODEL, "prompt": PROMPTS[2], "temperature": 0, "max_tokens": 3, "logprobs": 3, "echo": True,
     "prompt_logprobs": -2},
    {"model": MODEL, "prompt": PROMPTS[2], "temperature": 0, "max_tokens": 3, "logprobs": 1, "echo": True,
     "prompt_logprobs": -1},
    # the generation config's defaults under an explicit 0 / 1.0 (a falsy value is the request's, not absent)
    {"model": MODEL, "prompt": PROMPTS[0], "temperature": 0, "top_k": 0, "min_p": 0.0, "max_tokens": 6},
    {"model": MODEL, "prompt": PROMPTS[1], "seed": 3, "top_p": 1.0, "repetition_penalty": 1.0, "max_tokens": 6},
]


@pytest.mark.parametrize("case", range(len(PINNED)))
def test_pinned_cases(srv, llm, case):
    body = PINNED[case]
    assert compare(llm, body, send(srv, body, False), False) == []


def test_defaults_agree(srv, llm):
    """A request with no sampling field and ``LLM.generate(prompt)`` with no SamplingParams both sample with
    the generation config's defaults: same seed, same tokens."""
    default = llm.get_default_sampling_params()
    for k, v in {**GEN_DEFAULTS, "max_tokens": MAX_NEW_TOKENS}.items():
        assert getattr(default, k) == v
    offline = llm.generate(PROMPTS[0], default.clone(seed=5), use_tqdm=False)[0].outputs[0]
    # max_tokens null: the generation config's max_new_tokens (an absent one is completions' 16, see vllm_params)
    r = send(srv, {"model": MODEL, "prompt": PROMPTS[0], "seed": 5, "max_tokens": None},
             chat=False).json()["choices"][0]
    assert r["token_ids"] == list(offline.token_ids)
    assert r["text"] == offline.text
    assert len(offline.token_ids) == MAX_NEW_TOKENS  # ignore_eos is not set: this model and seed run to the cap
    chat = llm.chat(CHATS[0], default.clone(seed=5), use_tqdm=False)[0].outputs[0]
    r = send(srv, {"model": MODEL, "messages": CHATS[0], "seed": 5}, chat=True).json()["choices"][0]
    assert r["token_ids"] == list(chat.token_ids)
    assert r["message"]["content"] == chat.text
