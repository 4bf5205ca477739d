"""`pagoda serve --data-parallel-size 2`: the replicas' sampling randomness.

Unseeded sampling must differ between replicas (each replica's sampling RNG is seeded with ``--seed`` + its
index), while what must not differ still does not: dummy weights (the same ``--seed`` on every replica: greedy
outputs equal the offline engine's), a request's own ``seed`` (the same text whichever replica serves it, equal
to the offline engine's), and ``--seed`` run to run (a restarted server gives the same unseeded texts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pagoda import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
from server_utils import RemoteServer  # noqa: E402

PROMPT = "Paris is"


def _server(tiny) -> RemoteServer:
    return RemoteServer(str(tiny.path("llama")), ["--served-model-name", "tiny", "--dtype", "float32",
                                                   "--load-format", "dummy", "--kv-cache-memory-bytes", "16M",
                                                   "--data-parallel-size", "2"])


def _texts(srv: RemoteServer, **fields) -> list[str]:
    """Two identical prompts in one request: two engine requests, to replica 0 and replica 1 (both idle)."""
    r = srv.post("/v1/completions", {"model": "tiny", "prompt": [PROMPT, PROMPT], "max_tokens": 12,
                                     "ignore_eos": True, **fields})
    assert r.status_code == 200, r.text
    return [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]


@pytest.fixture(scope="module")
def offline(tiny):
    from pagoda import LLM

    llm = LLM(model=str(tiny.path("llama")), dtype="float32", load_format="dummy", kv_cache_memory_bytes=16 << 20)
    yield llm
    llm.shutdown()


def _offline_text(llm, **params) -> str:
    out = llm.generate([PROMPT], SamplingParams(max_tokens=12, ignore_eos=True, **params), use_tqdm=False)
    return out[0].outputs[0].text


def test_dp_replicas_sample_differently_but_seeded_and_greedy_agree(tiny, offline):
    greedy_ref = _offline_text(offline, temperature=0.0)
    seeded_ref = _offline_text(offline, temperature=1.0, seed=7)
    srv = _server(tiny)
    try:
        unseeded = _texts(srv, temperature=1.0)
        assert unseeded[0] != unseeded[1], unseeded  # was: both replicas drew the same noise
        assert _texts(srv, temperature=0.0) == [greedy_ref, greedy_ref]  # same dummy weights on both replicas
        assert _texts(srv, temperature=1.0, seed=7) == [seeded_ref, seeded_ref]  # a request's seed wins
    finally:
        srv.stop()
    srv = _server(tiny)
    try:
        assert _texts(srv, temperature=1.0) == unseeded  # --seed: the same draws run to run
    finally:
        srv.stop()


def test_only_data_parallel_replicas_get_a_rank(monkeypatch):
    from pagoda import envs
    from pagoda.engine.core_engines import replica_rank_env

    assert replica_rank_env(1, 0) == {}  # one engine: its seed is --seed exactly, as before
    assert [replica_rank_env(3, i) for i in range(3)] == [{"PAGODA_DP_RANK": str(i)} for i in range(3)]
    monkeypatch.delenv("PAGODA_DP_RANK", raising=False)
    assert envs.dp_rank() == 0
    monkeypatch.setenv("PAGODA_DP_RANK", "2")
    assert envs.dp_rank() == 2
    monkeypatch.setenv("PAGODA_DP_RANK", "one")
    with pytest.raises(ValueError, match="PAGODA_DP_RANK must be a replica index"):
        envs.check()


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_seed_outside_torchs_range_is_refused_naming_the_flag(seed):
    from pagoda.config import EngineArgs

    with pytest.raises(ValueError, match=r"--seed"):
        EngineArgs(model="unused", seed=seed).validate()
    EngineArgs(model="unused", seed=2**64 - 1).validate()  # the top of the range is a seed like any other
