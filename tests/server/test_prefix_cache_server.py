"""Prefix caching seen from the server: cache_salt, usage.prompt_tokens_details.cached_tokens,
the prefix-cache / host-tier metrics, POST /reset_prefix_cache and the periodic stats log line."""

from __future__ import annotations

import random

import pytest
from server_utils import API_KEY, MODEL, RemoteServer, wait_for

from pagoda.engine.messages import SchedulerStats
from pagoda.entrypoints.openai.metrics import LoggingStatLogger

BLOCK = 16


@pytest.fixture(scope="module")
def srv(tiny_model_dir):
    s = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                           "--enable-prompt-tokens-details", "--disable-uvicorn-access-log"],
                     env={"PAGODA_LOG_STATS_INTERVAL": "0.3"}, api_key=API_KEY, log_level="INFO")
    yield s
    s.stop()


_rng = random.Random(1234)


def fresh_prompt(n: int = 40) -> list[int]:
    """Token ids no other test sends (so nothing of it is cached yet)."""
    return [_rng.randint(10, 390) for _ in range(n)]


def complete(srv, prompt, salt=None, **kw) -> dict:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0, "ignore_eos": True, **kw}
    if salt is not None:
        body["cache_salt"] = salt
    r = srv.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    return r.json()


def cached(resp: dict) -> int:
    return resp["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_cache_salt_keeps_tenants_apart(srv):
    p = fresh_prompt(40)
    full = (40 - 1) // BLOCK * BLOCK  # full blocks, never the one holding the last token
    assert cached(complete(srv, p, salt="tenant-a")) == 0
    assert cached(complete(srv, p, salt="tenant-a")) == full  # same salt: hit
    assert cached(complete(srv, p, salt="tenant-b")) == 0  # other salt: miss
    assert cached(complete(srv, p)) == 0  # no salt is its own tenant too
    assert cached(complete(srv, p)) == full
    assert cached(complete(srv, p, salt="tenant-b")) == full


def test_cache_salt_chat_and_streaming(srv):
    words = " ".join(f"w{i}" for i in _rng.sample(range(1000), 60))
    body = {"model": MODEL, "messages": [{"role": "user", "content": words}], "max_tokens": 2, "temperature": 0,
            "cache_salt": "chat-tenant"}
    first = srv.post("/v1/chat/completions", body).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    again = srv.post("/v1/chat/completions", body).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= BLOCK
    other = srv.post("/v1/chat/completions", {**body, "cache_salt": "someone-else"}).json()
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # the streamed usage chunk reports it too
    p = fresh_prompt(40)
    complete(srv, p, salt="s")
    r = srv.post("/v1/completions", {"model": MODEL, "prompt": p, "max_tokens": 2, "stream": True,
                                     "stream_options": {"include_usage": True}, "cache_salt": "s"})
    import json
    usage = [json.loads(line[6:])["usage"] for line in r.text.splitlines()
             if line.startswith("data: {") and json.loads(line[6:]).get("usage")]
    assert usage[-1]["prompt_tokens_details"]["cached_tokens"] == 32


@pytest.mark.parametrize("salt", ["", 5, ["a"]])
def test_cache_salt_validation(srv, salt):
    r = srv.post("/v1/completions", {"model": MODEL, "prompt": "hello", "max_tokens": 1, "cache_salt": salt})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "cache_salt" and "cache_salt" in err["message"]
    r = srv.post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                          "max_tokens": 1, "cache_salt": salt})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache_salt"


def test_cache_salt_with_beam_search(srv):
    # Every per-step request of the search carries the salt: the beams are the same as unsalted,
    # and a second tenant's identical search finds none of the first tenant's blocks.
    prompt = "The quick brown fox jumps over the lazy dog " * 4
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 3, "n": 2, "use_beam_search": True}
    plain = srv.post("/v1/completions", body).json()
    hits = []
    for salt in ("tenant-a", "tenant-b", "tenant-a"):
        before = srv.metric("pagoda:prefix_cache_hits_total")
        r = srv.post("/v1/completions", {**body, "cache_salt": salt})
        assert r.status_code == 200, r.text
        assert [c["text"] for c in r.json()["choices"]] == [c["text"] for c in plain["choices"]]
        hits.append(srv.metric("pagoda:prefix_cache_hits_total") - before)
    # tenant-b's first step hits nothing (its later steps hit its own blocks); tenant-a's repeat hits
    # its own earlier search from the first step on, so it hits more than tenant-b did.
    assert hits[2] > hits[1]
    r = srv.post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                          "max_tokens": 2, "n": 2, "use_beam_search": True, "cache_salt": "t"})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text


def test_prompt_tokens_details_off_by_default(server):
    r = server.post("/v1/completions", {"model": MODEL, "prompt": "hello there", "max_tokens": 1})
    assert r.status_code == 200 and r.json()["usage"].get("prompt_tokens_details") is None


def test_prefix_cache_metrics_move(srv):
    q0 = srv.metric("pagoda:prefix_cache_queries_total")
    h0 = srv.metric("pagoda:prefix_cache_hits_total")
    p = fresh_prompt(50)
    complete(srv, p)
    complete(srv, p)
    full = (50 - 1) // BLOCK * BLOCK

    def moved() -> bool:
        return srv.metric("pagoda:prefix_cache_queries_total") - q0 == 100

    assert wait_for(moved, 60)
    assert srv.metric("pagoda:prefix_cache_hits_total") - h0 == full
    text = srv.get("/metrics").text
    for name in ("pagoda:cpu_cache_usage_perc", "pagoda:kv_offload_stored_blocks_total",
                 "pagoda:kv_offload_loaded_blocks_total"):
        assert f'{name}{{model_name="{MODEL}"}}' in text
    assert srv.metric("pagoda:cpu_cache_usage_perc") == 0.0  # no host tier on this server
    assert "# TYPE pagoda:prefix_cache_hits_total counter" in text


def test_reset_prefix_cache(srv):
    p = fresh_prompt(40)
    complete(srv, p)
    assert cached(complete(srv, p)) == 32
    # guarded by the API key like every route but /health
    r = srv.post("/reset_prefix_cache", {}, headers={"Authorization": ""})
    assert r.status_code == 401
    r = srv.post("/reset_prefix_cache", {})
    assert r.status_code == 200 and r.json() == {"success": True}
    h0 = srv.metric("pagoda:prefix_cache_hits_total")
    assert cached(complete(srv, p)) == 0  # the repeat misses now
    assert cached(complete(srv, p)) == 32  # and is cached again afterwards
    assert wait_for(lambda: srv.metric("pagoda:prefix_cache_hits_total") - h0 == 32, 60)


def test_stats_log_line(srv):
    p = fresh_prompt(40)
    complete(srv, p, max_tokens=8)
    complete(srv, p, max_tokens=8)
    assert wait_for(lambda: "Prefix cache hit rate:" in srv.log(), 10), srv.log()
    line = [ln for ln in srv.log().splitlines() if "Prefix cache hit rate:" in ln][-1]
    for part in ("Avg prompt throughput:", "Avg generation throughput:", "Running:", "Waiting:", "KV cache usage:"):
        assert part in line
    assert "Host KV tier usage" not in line  # only when the tier is on


# ------------------------------------------------------------------ log line, unit
def test_logging_stat_logger_unit():
    now = [0.0]
    lines: list[str] = []
    lg = LoggingStatLogger(interval_s=10, kv_offload=True, clock=lambda: now[0], log=lambda fmt, s: lines.append(s))
    lg.on_step(SchedulerStats(num_running=2, num_prompt_tokens=100, num_generation_tokens=0,
                              prefix_cache_queries=200, prefix_cache_hits=150, kv_cache_usage=0.25,
                              cpu_kv_cache_usage=0.5, external_prefix_cache_queries=200, external_prefix_cache_hits=20))
    assert not lines  # not yet 10 s
    now[0] = 10.0
    lg.on_step(SchedulerStats(num_running=2, num_generation_tokens=2, prefix_cache_queries=200,
                              prefix_cache_hits=150, kv_cache_usage=0.25, cpu_kv_cache_usage=0.5,
                              external_prefix_cache_queries=200, external_prefix_cache_hits=20))
    assert lines == ["Avg prompt throughput: 10.0 tokens/s, Avg generation throughput: 0.2 tokens/s, Running: 2 reqs, "
                     "Waiting: 0 reqs, KV cache usage: 25.0%, Prefix cache hit rate: 75.0%, "
                     "External prefix cache hit rate: 10.0%, Host KV tier usage: 50.0%"]
    # after a reset the rate restarts; idle after busy is logged once, then idle intervals are silent
    lg.on_prefix_cache_reset()
    now[0] = 20.0
    lg.on_step(SchedulerStats(prefix_cache_queries=300, prefix_cache_hits=150))
    assert "Prefix cache hit rate: 0.0%" in lines[-1] and len(lines) == 2
    now[0] = 30.0
    lg.on_step(SchedulerStats(prefix_cache_queries=300, prefix_cache_hits=150))
    assert len(lines) == 2


def test_host_tier_metrics_and_log_line(tiny_model_dir):
    """With the host KV tier on, evicted cached blocks are stored there and loaded back on a repeat:
    the offload counters and the host-tier gauge move, and the stats line names the tier."""
    s = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--num-gpu-blocks-override", "9",
                                           "--kv-offloading-size", "0.01", "--enable-prompt-tokens-details",
                                           "--disable-uvicorn-access-log"],
                     env={"PAGODA_LOG_STATS_INTERVAL": "0.3"}, log_level="INFO")
    try:
        prompts = [fresh_prompt(40) for _ in range(4)]  # 3 blocks each; 8 usable device blocks
        for p in prompts:
            complete(s, p)
        again = complete(s, prompts[0])  # its blocks were evicted to the host tier: a hit from there
        assert cached(again) == 32
        assert wait_for(lambda: s.metric("pagoda:kv_offload_loaded_blocks_total") >= 2, 60)
        assert s.metric("pagoda:kv_offload_stored_blocks_total") >= 2
        assert s.metric("pagoda:cpu_cache_usage_perc") > 0
        assert wait_for(lambda: "Host KV tier usage:" in s.log(), 10), s.log()
    finally:
        s.stop()
