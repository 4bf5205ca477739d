"""Routing policies, metric parsing and discovery parsing, without any server."""

from __future__ import annotations

import pytest

from pagoda.router.backends import Backend, BackendPool, normalize_url
from pagoda.router.discovery import DiscoveryError, endpoint_slice_urls, parse_backends_document
from pagoda.router.health import parse_load
from pagoda.router.policies import HashRing, PrefixAware, RequestInfo, Session, make_policy, prompt_text

URLS = [f"http://10.0.0.{i}:8000" for i in range(1, 4)]


def backends(**load: float) -> list[Backend]:
    return [Backend(u, num_running=load.get(f"b{i}", 0.0)) for i, u in enumerate(URLS, 1)]


def test_hash_ring_moves_only_the_keys_of_a_removed_replica():
    ring = HashRing()
    keys = [f"user-{i}" for i in range(600)]
    before = {k: ring.lookup(URLS, k) for k in keys}
    counts = {u: list(before.values()).count(u) for u in URLS}
    assert all(120 < c < 280 for c in counts.values()), counts  # ~200 each (fixed keys: deterministic)
    after = {k: ring.lookup(URLS[:2], k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == URLS[2] for k in moved)


def test_session_id_order_header_then_field_then_user():
    s = Session("x-session")
    assert s.session_id(RequestInfo("/", {"x-session": "h"}, {"x-session": "f", "user": "u"})) == "h"
    assert s.session_id(RequestInfo("/", {}, {"x-session": "f", "user": "u"})) == "f"
    assert s.session_id(RequestInfo("/", {}, {"user": "u"})) == "u"
    assert s.session_id(RequestInfo("/", {}, {})) is None
    b = backends()
    picks = {s.choose(b, RequestInfo("/", {"x-session": "alice"})).url for _ in range(5)}
    assert len(picks) == 1


def test_roundrobin_and_leastloaded():
    rr = make_policy("roundrobin")
    b = backends()
    assert [rr.choose(b, RequestInfo("/")).url for _ in range(6)] == URLS * 2
    ll = make_policy("leastloaded")
    loaded = backends(b1=3, b2=1, b3=5)
    assert {ll.choose(loaded, RequestInfo("/")).url for _ in range(4)} == {URLS[1]}
    loaded[1].in_flight = 9  # the router's own count wins while the scrape lags
    assert ll.choose(loaded, RequestInfo("/")).url == URLS[0]
    ties = backends()
    assert {ll.choose(ties, RequestInfo("/")).url for _ in range(3)} == set(URLS)  # equals take turns


def test_prefixaware_follows_the_longest_prefix_and_yields_to_load():
    p = PrefixAware(chunk_size=8, balance_threshold=4)
    b = backends()
    shared = "0123456789abcdefghij" * 2
    first = p.choose(b, RequestInfo("/", body={"prompt": shared + "one"}))
    for tail in ("two", "three", "four"):
        assert p.choose(b, RequestInfo("/", body={"prompt": shared + tail})) is first
    first.num_running = 10  # far busier than the others: the cache is not worth the queue
    other = p.choose(b, RequestInfo("/", body={"prompt": shared + "five"}))
    assert other is not first
    short = PrefixAware(chunk_size=8)
    assert short.chain("1234567") == []  # under one chunk: no prefix to follow


def test_prompt_text_of_each_request_shape():
    chat = {"messages": [{"role": "system", "content": "S"},
                         {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert prompt_text(chat) == "<system>S\n<user>ab\n"
    assert prompt_text({"prompt": "p"}) == "p"
    assert prompt_text({"prompt": [1, 2, 3]}) == "1,2,3"
    assert prompt_text({"prompt": ["x", "y"]}) == "x"
    assert prompt_text({"input": "q", "instructions": "I"}) == "Iq"
    assert prompt_text({}) == ""


def test_parse_load_reads_both_prefixes():
    text = ('# HELP x\nvllm:num_requests_running{model_name="m",engine="0"} 2.0\n'
            'vllm:num_requests_waiting{model_name="m",engine="0"} 3.0\n'
            'vllm:num_requests_waiting_by_reason{reason="capacity"} 3.0\n'
            'vllm:kv_cache_usage_perc{model_name="m",engine="0"} 0.25\n')
    assert parse_load(text) == {"num_running": 2.0, "num_waiting": 3.0, "kv_usage": 0.25}
    assert parse_load(text.replace("vllm:", "pagoda:")) == {"num_running": 2.0, "num_waiting": 3.0,
                                                            "kv_usage": 0.25}
    assert parse_load("garbage line\n") == {}


def test_parse_load_of_a_data_parallel_server_sums_counts_and_averages_kv_usage():
    text = "".join(f'vllm:num_requests_running{{model_name="m",engine="{e}"}} {r}\n'
                   f'vllm:kv_cache_usage_perc{{model_name="m",engine="{e}"}} {u}\n'
                   for e, r, u in ((0, 2.0, 0.5), (1, 3.0, 0.25)))
    assert parse_load(text) == {"num_running": 5.0, "kv_usage": 0.375}


def test_pool_and_url_rules():
    assert normalize_url("10.0.0.1:8000/") == "http://10.0.0.1:8000"
    with pytest.raises(ValueError):
        normalize_url("ftp://x")
    for bad in ("http://h:abc", "http://h:99999", "http://:8000", "htps://h:8000"):  # found here, not by a probe
        with pytest.raises(ValueError, match="backend URL"):
            normalize_url(bad)
    assert normalize_url("http://[fd00::4]:8000") == "http://[fd00::4]:8000"
    pool = BackendPool(["http://a:1", "http://b:1"])
    pool.backends["http://a:1"].healthy = False
    added, removed = pool.set_urls(["http://a:1", "http://c:1"])
    assert added == ["http://c:1"] and removed == ["http://b:1"]
    assert not pool.backends["http://a:1"].healthy  # state of a URL that stays is kept
    assert [b.url for b in pool.candidates(None)] == ["http://c:1"]


def test_backends_document_shapes():
    assert parse_backends_document(["a:1", {"url": "b:2"}], "f") == ["a:1", "b:2"]
    assert parse_backends_document({"backends": ["a:1"]}, "f") == ["a:1"]
    for bad in ("a:1", {"nope": 1}, [3], [{"url": ""}]):
        with pytest.raises(DiscoveryError):
            parse_backends_document(bad, "f")


def test_endpoint_slice_port_choice():
    sl = {"items": [{"ports": [{"name": "m", "port": 9}, {"name": "http", "port": 8}],
                     "endpoints": [{"addresses": ["1.1.1.1"]},
                                   {"addresses": ["2.2.2.2"], "conditions": {"ready": False}}]}]}
    assert endpoint_slice_urls(sl, None, None) == ["http://1.1.1.1:9"]
    assert endpoint_slice_urls(sl, None, "http") == ["http://1.1.1.1:8"]
    assert endpoint_slice_urls(sl, 7, None) == ["http://1.1.1.1:7"]
    assert endpoint_slice_urls(sl, None, "grpc") == []
