"""``--distributed-executor-backend ray`` on Ray's own multi-node test cluster (two raylets on this machine, one
CPU each): a PP=2 engine with its stages on the two nodes gives PP=1's tokens, TP=2 across them too, a killed
actor fails the engine fast, and an unreachable cluster or too few resources fail start-up naming the flag."""

from __future__ import annotations

import pytest
from engine_checks import PROMPTS, assert_engine_clean, greedy, token_ids

ray = pytest.importorskip("ray")

KW = {"max_num_batched_tokens": 32, "max_num_seqs": 4, "device": "cpu", "distributed_executor_backend": "ray"}


def _llm(tiny, **kw):
    from pagoda import LLM

    return LLM(str(tiny.path("llama")), dtype="float32", **{**KW, **kw})


def test_unreachable_ray_address_fails_within_seconds(tiny, monkeypatch):
    """Runs before the module's cluster exists (this process has not joined one)."""
    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ValueError, match=r"--distributed-executor-backend ray: the Ray cluster at "
                                         r"RAY_ADDRESS='127.0.0.1:1' cannot be reached"):
        _llm(tiny, pipeline_parallel_size=2)
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def test_pp2_across_two_nodes_matches_pp1(tiny, cluster, monkeypatch):
    """The engine joins the cluster RAY_ADDRESS names (as `pagoda serve` on a head node does) and leaves it at
    shutdown."""
    prompts = PROMPTS[:6]
    one = tiny.llm("llama", **{k: v for k, v in KW.items() if k != "distributed_executor_backend"})
    ref = token_ids(one.generate(prompts, greedy(max_tokens=10), use_tqdm=False))
    ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    try:
        llm = _llm(tiny, pipeline_parallel_size=2)
        try:
            executor = llm.llm_engine.core.runner.executor
            assert len(set(executor.node_ids.values())) == 2  # one stage per raylet
            assert token_ids(llm.generate(prompts, greedy(max_tokens=10), use_tqdm=False)) == ref
            assert_engine_clean(llm)
        finally:
            llm.llm_engine.shutdown()
        assert not ray.is_initialized()  # the engine's own connection ended with it
    finally:
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    assert ray.available_resources().get("CPU") == 2  # the placement group was given back


def test_killed_actor_fails_the_engine_fast(tiny, cluster):
    """TP=2 across the two nodes; the worker's actor is killed between steps."""
    from pagoda.distributed.executor import WorkerDied

    llm = _llm(tiny, tensor_parallel_size=2)
    try:
        ref = token_ids(llm.generate(PROMPTS[:2], greedy(max_tokens=4), use_tqdm=False))
        assert ref == token_ids(llm.generate(PROMPTS[:2], greedy(max_tokens=4), use_tqdm=False))
        executor = llm.llm_engine.core.runner.executor
        ray.kill(executor.actors[1])
        # The message comes from the actor's death (RayActorError), not from a collective's timeout.
        with pytest.raises(WorkerDied, match=r"tensor-parallel rank 1 of 2 died \(its Ray actor is gone"):
            llm.generate(PROMPTS[:2], greedy(max_tokens=4), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()


def test_more_ranks_than_cluster_resources_fails_start_up(tiny, cluster):
    with pytest.raises(ValueError, match=r"--distributed-executor-backend ray: --tensor-parallel-size 2 x "
                                         r"--pipeline-parallel-size 2 needs 4 x CPU in the Ray cluster, which has 2"):
        _llm(tiny, tensor_parallel_size=2, pipeline_parallel_size=2)
