"""LoRA adapters over HTTP (vLLM's ``--enable-lora --lora-modules`` and runtime loading), against PEFT.

One server on the tiny fp32 Llama with two adapters from ``--lora-modules`` (``name=path`` and the JSON form) and
runtime loading on (``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``). The reference is ``PeftModel`` greedy on the same weights
(tests/test_lora.py's adapters and helpers). Covered: completions and chat through the OpenAI client for each
adapter and for the base names, adapters and base interleaved concurrently, ``/v1/models``, vLLM's errors (unknown
model, pooling and beam search with an adapter, load / unload refusals), runtime load / unload / reload, the
``lora_requests_info`` gauge, the routes' absence without the variable, and the start-up errors of
``--lora-modules``; the server serves on after each error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from server_utils import RemoteServer, free_port
from test_lora import NEW, PROMPTS, _make_adapter, _peft_greedy, _variant

BASE, ALIAS = "tiny", "tiny-alias"
LORA_FLAGS = ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """Adapters a (plain) and b (rsLoRA, patterns) of the server's model, and their PEFT references (cached)."""
    root = tmp_path_factory.mktemp("lora_server")
    a = _make_adapter(tiny_model_dir, root / "a", 1, r=8, lora_alpha=16)
    b = _make_adapter(tiny_model_dir, root / "b", 2, r=4, lora_alpha=8, use_rslora=True, rank_pattern={"down_proj": 6},
                      alpha_pattern={"o_proj": 3})
    refs: dict[tuple[str, tuple[int, ...]], list[int]] = {}

    def ref(which: str, prompt: list[int]) -> list[int]:
        key = (which, tuple(prompt))
        if key not in refs:
            refs[key] = _peft_greedy(tiny_model_dir, {"a": a, "b": b, "base": None}[which], prompt)
        return refs[key]

    return {"base": tiny_model_dir, "a": a, "b": b, "root": root, "ref": ref}


@pytest.fixture(scope="module")
def srv(setup):
    b_json = json.dumps({"name": "b", "path": str(setup["b"]), "base_model_name": ALIAS})
    s = RemoteServer(str(setup["base"]), ["--served-model-name", BASE, ALIAS, "--dtype", "float32",
                                          "--kv-cache-memory-bytes", "32M", *LORA_FLAGS,
                                          "--lora-modules", f"a={setup['a']}", b_json],
                     env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}, log_level="INFO")
    yield s
    s.stop()


def _complete(srv, model: str, prompt: list[int]) -> list[int]:
    r = srv.client().completions.create(model=model, prompt=prompt, max_tokens=NEW, temperature=0.0,
                                        extra_body={"ignore_eos": True, "return_token_ids": True})
    assert r.model == model
    return r.choices[0].token_ids  # type: ignore[attr-defined]


def _error(r) -> dict:
    return r.json()["error"]


def test_completions_match_peft(srv, setup):
    """Each adapter's name runs with it, the base names without: greedy tokens equal PEFT's (fp32)."""
    ref = setup["ref"]
    for model, which in (("a", "a"), ("b", "b"), (BASE, "base"), (ALIAS, "base")):
        for p in PROMPTS[:2]:
            assert _complete(srv, model, p) == ref(which, p), (model, p)
    assert ref("a", PROMPTS[0]) != ref("base", PROMPTS[0]) != ref("b", PROMPTS[0])  # the adapters matter


def test_chat_tokenize_detokenize_take_adapter_names(srv, setup):
    """Chat with an adapter equals PEFT on the prompt the chat template renders (read back from /tokenize, which
    takes the adapter's name too, as /detokenize does)."""
    messages = [{"role": "user", "content": "Hello there"}]
    tok = srv.post("/tokenize", {"model": "b", "messages": messages})
    assert tok.status_code == 200, tok.text
    ids = tok.json()["tokens"]
    r = srv.client().chat.completions.create(model="b", messages=messages, max_tokens=NEW, temperature=0.0,
                                             extra_body={"ignore_eos": True, "return_token_ids": True})
    assert r.model == "b"
    assert r.prompt_token_ids == ids  # type: ignore[attr-defined]
    assert r.choices[0].token_ids == setup["ref"]("b", ids)  # type: ignore[attr-defined]
    d = srv.post("/detokenize", {"model": "a", "tokens": PROMPTS[0]})
    assert d.status_code == 200 and d.json()["prompt"] == srv.post("/detokenize", {"tokens": PROMPTS[0]}).json()[
        "prompt"]


def test_adapters_and_base_interleaved_concurrently(srv, setup):
    ref = setup["ref"]
    plan = [("a", "a"), (BASE, "base"), ("b", "b"), ("a", "a"), ("b", "b"), (ALIAS, "base")]

    async def run() -> list[list[int]]:
        client = srv.async_client()
        rs = await asyncio.gather(*[
            client.completions.create(model=m, prompt=PROMPTS[i % 3], max_tokens=NEW, temperature=0.0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
            for i, (m, _) in enumerate(plan)])
        return [r.choices[0].token_ids for r in rs]  # type: ignore[attr-defined]

    got = asyncio.run(run())
    assert got == [ref(w, PROMPTS[i % 3]) for i, (_, w) in enumerate(plan)]


def test_models_lists_adapters(srv, setup):
    """vLLM's cards: the base names, then each adapter with ``root`` its folder and ``parent`` its base model."""
    data = srv.client().models.list().data
    assert [m.id for m in data] == [BASE, ALIAS, "a", "b"]
    cards = {m.id: m.model_dump() for m in data}
    assert cards["a"]["root"] == str(setup["a"]) and cards["a"]["parent"] == BASE
    assert cards["b"]["root"] == str(setup["b"]) and cards["b"]["parent"] == ALIAS  # its base_model_name
    assert cards[BASE]["parent"] is None and cards["a"]["max_model_len"] is None
    assert srv.client().models.retrieve("b").root == str(setup["b"])


def test_unknown_model_and_refusals(srv, setup):
    """An unknown name is the 404 of any unknown model; an adapter on routes that take none is a 400 naming why;
    the engine serves on."""
    with pytest.raises(openai.NotFoundError) as exc:
        srv.client().completions.create(model="nope", prompt="hi", max_tokens=2)
    assert "The model `nope` does not exist." in str(exc.value)
    r = srv.post("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and _error(r)["param"] == "model"
    r = srv.post("/v1/completions", {"model": "a", "prompt": "hi", "max_tokens": 2, "use_beam_search": True,
                                     "n": 2})
    assert r.status_code == 400 and _error(r)["param"] == "use_beam_search", r.text
    assert "LoRA adapter `a`" in _error(r)["message"]
    r = srv.post("/v1/embeddings", {"model": "a", "input": "hi"})
    assert r.status_code == 400 and _error(r)["param"] == "model", r.text
    assert "is a LoRA adapter" in _error(r)["message"]
    assert _complete(srv, "a", PROMPTS[2]) == setup["ref"]("a", PROMPTS[2])


def test_runtime_load_unload(srv, setup):
    """vLLM's routes and answers: success texts, 400 for a duplicate or a bad adapter, 404 for no adapter at the
    path and for an unknown name; an unloaded name stops at once; a name loaded again gets a new id (the engine
    refuses an id with another folder, so serving b's folder under the old id would fail)."""
    ref = setup["ref"]
    r = srv.post("/v1/load_lora_adapter", {"lora_name": "c", "lora_path": str(setup["a"])})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'c' added successfully."
    assert _complete(srv, "c", PROMPTS[1]) == ref("a", PROMPTS[1])
    assert "c" in [m.id for m in srv.client().models.list().data]

    r = srv.post("/v1/load_lora_adapter", {"lora_name": "c", "lora_path": str(setup["b"])})
    assert r.status_code == 400 and _error(r)["type"] == "InvalidUserInput" and _error(r)["code"] == 400
    assert "The lora adapter 'c' has already been loaded." in _error(r)["message"]
    r = srv.post("/v1/load_lora_adapter", {"lora_name": "gone", "lora_path": str(setup["root"] / "nowhere")})
    assert r.status_code == 404 and _error(r)["type"] == "NotFoundError", r.text
    assert "No adapter found" in _error(r)["message"] and "'gone'" in _error(r)["message"]
    r = srv.post("/v1/load_lora_adapter", {"lora_name": "dora", "lora_path": _variant(setup, "dora",
                                                                                      {"use_dora": True})})
    assert r.status_code == 400 and _error(r)["type"] == "BadRequestError", r.text
    assert "use_dora" in _error(r)["message"]
    r = srv.post("/v1/load_lora_adapter", {"lora_name": "", "lora_path": ""})
    assert r.status_code == 400 and "Both 'lora_name' and 'lora_path' must be provided." in _error(r)["message"]
    r = srv.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(setup["a"]), "pinned": True})
    assert r.status_code == 400 and "pinned" in r.text
    assert {"dora", "gone", "x"}.isdisjoint(m.id for m in srv.client().models.list().data)

    r = srv.post("/v1/unload_lora_adapter", {"lora_name": "c"})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'c' removed successfully."
    with pytest.raises(openai.NotFoundError):
        _complete(srv, "c", PROMPTS[1])
    r = srv.post("/v1/unload_lora_adapter", {"lora_name": "c"})
    assert r.status_code == 404 and _error(r)["type"] == "NotFoundError"
    assert _error(r)["message"] == "The lora adapter 'c' cannot be found."

    r = srv.post("/v1/load_lora_adapter", {"lora_name": "c", "lora_path": str(setup["b"])})
    assert r.status_code == 200, r.text
    assert _complete(srv, "c", PROMPTS[0]) == ref("b", PROMPTS[0])
    r = srv.post("/v1/load_lora_adapter", {"lora_name": "c", "lora_path": str(setup["a"]), "load_inplace": True})
    assert r.status_code == 200, r.text
    assert _complete(srv, "c", PROMPTS[0]) == ref("a", PROMPTS[0])
    assert _complete(srv, BASE, PROMPTS[0]) == ref("base", PROMPTS[0])


def test_lora_requests_info_gauge(srv):
    """vLLM's gauge: labels max_lora, running / waiting adapters (comma-separated names), no model_name."""
    _complete(srv, "a", PROMPTS[0])
    lines = [ln for ln in srv.get("/metrics").text.splitlines() if ln.startswith("pagoda:lora_requests_info{")]
    assert lines and all('max_lora="2"' in ln and "model_name" not in ln for ln in lines)
    assert any('running_lora_adapters="a"' in ln or 'running_lora_adapters="a,' in ln for ln in lines), lines


def test_runtime_routes_absent_without_the_variable(monkeypatch):
    """Without VLLM_ALLOW_RUNTIME_LORA_UPDATING the routes do not exist (404), as vLLM's."""
    from fastapi.testclient import TestClient

    from pagoda.entrypoints.cli import build_parser
    from pagoda.entrypoints.openai.api_server import build_app

    monkeypatch.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
    monkeypatch.delenv("PAGODA_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
    args = build_parser().parse_args(["serve", "--enable-lora"])
    client = TestClient(build_app(args))  # no lifespan: no engine is loaded
    assert client.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "/x"}).status_code == 404
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "a"}).status_code == 404
    monkeypatch.setenv("PAGODA_ALLOW_RUNTIME_LORA_UPDATING", "1")
    r = TestClient(build_app(args)).post("/v1/unload_lora_adapter", json={"lora_name": "a"})
    assert r.status_code == 503  # the route exists: the model is not loaded in this app


def _serve_fails(args: list[str], timeout: float = 120) -> str:
    """``pagoda serve ARGS`` exits non-zero before loading anything: its stderr."""
    proc = subprocess.run([sys.executable, "-m", "pagoda", "serve", *args, "--port", str(free_port())],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    return proc.stderr


def test_lora_modules_flag_errors(setup):
    """Parse- and check-time errors name the flag: the forms, --enable-lora missing (vLLM: "LoRA is not enabled"),
    a name given twice."""
    from pagoda.entrypoints.openai.lora_modules import LoRAModulePath, parse_lora_module

    assert parse_lora_module("x=/p=q") == LoRAModulePath("x", "/p=q")
    assert parse_lora_module('{"name": "x", "path": "/p", "base_model_name": "m"}') == LoRAModulePath("x", "/p", "m")
    for bad, msg in (("x", "name=path"), ('{"name": "x"}', "'name' and 'path'"), ('{"name": "x", "path": "/p", '
                                                                                   '"rank": 2}', "unknown key"),
                     ("{oops", "invalid JSON")):
        with pytest.raises(ValueError, match=msg):
            parse_lora_module(bad)
    base = str(setup["base"])
    err = _serve_fails([base, "--lora-modules", f"a={setup['a']}"])
    assert "--lora-modules needs --enable-lora" in err
    err = _serve_fails([base, "--enable-lora", "--lora-modules", f"a={setup['a']}", f"a={setup['b']}"])
    assert "--lora-modules names ['a'] more than once" in err
    err = _serve_fails([base, "--enable-lora", "--lora-modules", "a"])
    assert "--lora-modules a: give name=path" in err
    from pagoda.entrypoints.openai.lora_modules import check_lora_args

    with pytest.raises(ValueError, match="--api-server-count 2"):
        check_lora_args(argparse.Namespace(enable_lora=True, lora_modules=[], api_server_count=2), True)


def test_bad_lora_module_is_a_startup_error(setup):
    """A module whose folder is refused stops start-up with an error naming the module (after the engine loads)."""
    bad = _variant(setup, "dora_start", {"use_dora": True})
    s = RemoteServer(str(setup["base"]), ["--dtype", "float32", "--kv-cache-memory-bytes", "16M", *LORA_FLAGS,
                                          "--lora-modules", f"good={setup['a']}", f"bad={bad}"], wait=False)
    try:
        assert s.proc.wait(timeout=180) == 1
        log = Path(s.log_path).read_text()
        assert f"--lora-modules bad={bad}" in log and "use_dora" in log, log[-3000:]
    finally:
        s.stop()


def test_llm_engine_add_remove_list_lora(setup):
    """vLLM's ``LLMEngine.add_lora`` / ``remove_lora`` / ``list_loras``: a loaded adapter serves its requests; a
    missing folder is a LoRANotFoundError, an engine without LoRA a ValueError naming ``enable_lora``."""
    from pagoda import LLM, SamplingParams
    from pagoda.lora.peft import LoRANotFoundError
    from pagoda.lora.request import LoRARequest

    la = LoRARequest("a", 1, str(setup["a"]))
    sp = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)
    with LLM(str(setup["base"]), dtype="float32", enable_lora=True, max_lora_rank=8, max_cpu_loras=2) as llm:
        eng = llm.llm_engine
        assert eng.list_loras() == set()
        assert eng.add_lora(la) is True and eng.list_loras() == {1}
        with pytest.raises(LoRANotFoundError, match="No adapter found"):
            eng.add_lora(LoRARequest("gone", 2, str(setup["root"] / "nowhere")))
        assert eng.list_loras() == {1}
        out = llm.generate({"prompt_token_ids": PROMPTS[0]}, sp, use_tqdm=False, lora_request=la)
        assert out[0].outputs[0].token_ids == setup["ref"]("a", PROMPTS[0])
        assert eng.remove_lora(1) is True and eng.remove_lora(1) is False and eng.list_loras() == set()
        out = llm.generate({"prompt_token_ids": PROMPTS[0]}, sp, use_tqdm=False, lora_request=la)  # read again
        assert out[0].outputs[0].token_ids == setup["ref"]("a", PROMPTS[0])
    with LLM(str(setup["base"]), dtype="float32") as llm:
        with pytest.raises(ValueError, match="enable_lora=True"):
            llm.llm_engine.add_lora(la)
