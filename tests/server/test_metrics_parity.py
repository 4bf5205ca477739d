"""vLLM metric parity: every vLLM metric pagoda exports is on /metrics with vLLM's type, labels
and help text, under ``pagoda:`` (default) or ``vllm:`` (``--metrics-prefix vllm``), and the
values agree with the requests made (a fresh server per prefix, so counts are exact)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_utils import MODEL, RemoteServer, wait_for

from pagoda.entrypoints.openai.metrics import NATIVE_METRICS, VLLM_METRICS

PROMPT_A = list(range(10, 17))  # 7 tokens
PROMPT_B = list(range(20, 29))  # 9 tokens
PROMPT_C = list(range(30, 35))  # 5 tokens


@pytest.fixture(scope="module", params=["pagoda", "vllm"])
def prefixed_server(request, tiny_model_dir):
    args = ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M"]
    if request.param == "vllm":
        args += ["--metrics-prefix", "vllm"]
    srv = RemoteServer(str(tiny_model_dir), args)
    _run_requests(srv)
    yield request.param, srv
    srv.stop()


def _run_requests(srv: RemoteServer) -> None:
    client = srv.client()
    eos = {"ignore_eos": True}
    r = client.completions.create(model=MODEL, prompt=PROMPT_A, max_tokens=5, n=2, temperature=1.0, extra_body=eos)
    assert [len(c.text) >= 0 for c in r.choices] == [True, True]
    stream = client.completions.create(model=MODEL, prompt=PROMPT_B, max_tokens=4, stream=True, extra_body=eos)
    assert sum(1 for _ in stream) >= 1
    client.completions.create(model=MODEL, prompt=PROMPT_C, max_tokens=3, extra_body=eos)


def _families(srv: RemoteServer) -> dict:
    return {f.name: f for f in text_string_to_metric_families(srv.get("/metrics").text)}


def _value(fams: dict, family: str, sample: str, **labels) -> float:
    return sum(s.value for s in fams[family].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_every_vllm_metric_present_with_type_labels_help(prefixed_server):
    prefix, srv = prefixed_server
    fams = _families(srv)
    for name, (kind, doc, _buckets, extra) in VLLM_METRICS.items():
        if name.startswith("spec_decode_"):
            continue  # only with --speculative-config, as vLLM (tests/test_spec_decode.py)
        family = f"{prefix}:{name}"
        assert family in fams, family
        f = fams[family]
        assert f.type == kind, (family, f.type)
        if name != "cache_config_info":
            assert f.documentation == doc, family
        assert f.samples, family
        for s in f.samples:
            assert s.labels.get("engine") == "0", (family, s.labels)
            if name == "cache_config_info":
                assert {"block_size", "num_gpu_blocks", "enable_prefix_caching"} <= set(s.labels)
                continue
            assert s.labels.get("model_name") == MODEL, (family, s.labels)
            for label in extra:
                assert label in s.labels, (family, label)
    other = "vllm:" if prefix == "pagoda" else "pagoda:"
    for fam in fams:
        if fam.startswith(other):
            assert prefix == "vllm" and fam[len(other):] in NATIVE_METRICS, fam
    for name in NATIVE_METRICS:
        assert f"pagoda:{name}" in fams


def test_values_agree_with_requests(prefixed_server):
    prefix, srv = prefixed_server
    p = prefix + ":"
    n_engine_requests = 4  # the n=2 request counts twice, as in vLLM
    gen_tokens = 5 * 2 + 4 + 3
    assert wait_for(lambda: _value(_families(srv), p + "request_success", p + "request_success_total")
                    == n_engine_requests, 10)
    f = _families(srv)
    assert _value(f, p + "request_success", p + "request_success_total", finished_reason="length") == 4
    assert _value(f, p + "generation_tokens", p + "generation_tokens_total") == gen_tokens
    prompt_total = _value(f, p + "prompt_tokens", p + "prompt_tokens_total")
    assert prompt_total == 2 * len(PROMPT_A) + len(PROMPT_B) + len(PROMPT_C)  # each of n=2's requests: vLLM's
    it = p + "iteration_tokens_total"
    assert _value(f, it, it + "_sum") == prompt_total + gen_tokens

    def hist(name: str, part: str) -> float:
        return _value(f, p + name, p + name + "_" + part)

    assert hist("request_params_n", "count") == 3 and hist("request_params_n", "sum") == 4
    assert hist("request_params_max_tokens", "count") == 4 and hist("request_params_max_tokens", "sum") == gen_tokens
    assert hist("request_max_num_generation_tokens", "count") == 3
    assert hist("request_max_num_generation_tokens", "sum") == 5 + 4 + 3
    assert hist("request_generation_tokens", "sum") == gen_tokens
    assert hist("request_prompt_tokens", "sum") == 2 * len(PROMPT_A) + len(PROMPT_B) + len(PROMPT_C)
    for name in ("e2e_request_latency_seconds", "request_queue_time_seconds", "request_inference_time_seconds",
                 "request_prefill_time_seconds", "request_decode_time_seconds", "time_to_first_token_seconds",
                 "request_time_per_output_token_seconds", "request_prompt_tokens",
                 "request_prefill_kv_computed_tokens"):
        assert hist(name, "count") == n_engine_requests, name
    # One inter-token interval per token after each request's first.
    assert hist("inter_token_latency_seconds", "count") == gen_tokens - n_engine_requests
    assert hist("time_per_output_token_seconds", "count") == gen_tokens - n_engine_requests
    inference = hist("request_inference_time_seconds", "sum")
    assert inference == pytest.approx(hist("request_prefill_time_seconds", "sum")
                                      + hist("request_decode_time_seconds", "sum"), abs=1e-6)
    assert inference <= hist("e2e_request_latency_seconds", "sum")
    assert hist("request_prefill_kv_computed_tokens", "sum") <= hist("request_prompt_tokens", "sum")
    assert wait_for(lambda: _value(_families(srv), p + "num_requests_running", p + "num_requests_running") == 0, 10)
    f = _families(srv)
    assert _value(f, p + "engine_sleep_state", p + "engine_sleep_state", sleep_state="awake") == 1
    assert _value(f, p + "cache_config_info", p + "cache_config_info") == 1
    assert _value(f, p + "kv_cache_usage_perc", p + "kv_cache_usage_perc") == \
        _value(f, p + "gpu_cache_usage_perc", p + "gpu_cache_usage_perc")
    assert _value(f, p + "prefix_cache_queries", p + "prefix_cache_queries_total") == \
        _value(f, p + "gpu_prefix_cache_queries", p + "gpu_prefix_cache_queries_total")


def test_token_counters_count_what_usage_counts(prefixed_server):
    """vLLM's counters (vllm/v1/metrics/stats.py): a prompt served from the prefix cache counts whole, and a token the
    engine generated after a stop string ended the request (the step already in flight) is not counted: both
    counters move by exactly what the responses' usage says."""
    prefix, srv = prefixed_server
    p = prefix + ":"
    client = srv.client()

    def totals() -> tuple[float, float]:
        f = _families(srv)
        return (_value(f, p + "prompt_tokens", p + "prompt_tokens_total"),
                _value(f, p + "generation_tokens", p + "generation_tokens_total"))

    prompt = list(range(40, 80))  # 40 tokens: whole blocks in the prefix cache after the first request
    start = totals()
    first, again = (client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
                    for _ in range(2))  # the second one's prompt mostly from the prefix cache
    text = first.choices[0].text
    stop = next((text[i:i + 2] for i in range(1, len(text) - 2) if text.find(text[i:i + 2]) == i
                 and text[i:i + 2].strip()), None)
    assert stop is not None, text
    cut = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < first.usage.completion_tokens
    usages = [first.usage, again.usage, cut.usage]
    want = (start[0] + sum(u.prompt_tokens for u in usages), start[1] + sum(u.completion_tokens for u in usages))
    assert wait_for(lambda: totals() == want, 10), (totals(), want)

