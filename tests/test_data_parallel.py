"""Data parallelism without a model: the load balancer, the summed stats, each replica's devices, and the start-up
errors that name the flag (the served path runs in tests/server/test_dp_server.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pagoda.config import EngineArgs
from pagoda.engine.core_engines import check_data_parallel, replica_envs
from pagoda.engine.dp_lb import LoadBalancer, sum_stats
from pagoda.engine.messages import SchedulerStats


def test_least_loaded_replica_gets_the_request_ties_round_robin():
    lb = LoadBalancer(3)
    assert [lb.choose() for _ in range(3)] == [0, 1, 2]  # all idle: one each (each dispatch counts as waiting)
    assert lb.counts == [[1, 0], [1, 0], [1, 0]]
    lb.on_stats(0, SchedulerStats(num_waiting=0, num_running=1))  # the reports replace the local counts
    lb.on_stats(1, SchedulerStats(num_waiting=0, num_running=3))
    lb.on_stats(2, SchedulerStats(num_waiting=1, num_running=0))
    assert lb.choose() == 0  # score 1 < 3 < 4 (a waiting request weighs 4 running ones)
    assert lb.counts[0] == [1, 1]
    assert lb.choose() == 1  # 0 now scores 5, 1 scores 3, 2 scores 4
    for i in range(3):
        lb.on_stats(i, SchedulerStats())
    picks = [lb.choose() for _ in range(6)]  # a burst between two reports spreads evenly
    assert sorted(picks) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        LoadBalancer(0)


def test_one_replica_always_gets_it():
    lb = LoadBalancer(1)
    assert {lb.choose() for _ in range(5)} == {0}


def test_stats_sum_over_replicas():
    a = SchedulerStats(num_running=2, num_waiting=1, kv_cache_usage=0.5, num_generation_tokens=3,
                       prefix_cache_queries=10, prefix_cache_hits=4, spec_accepted_per_pos=[1, 2],
                       num_waiting_deferred=1, running_lora_adapters={"x": 2}, waiting_lora_adapters={"y": 1})
    b = SchedulerStats(num_running=1, kv_cache_usage=0.25, num_generation_tokens=1, prefix_cache_queries=6,
                       spec_accepted_per_pos=[5], num_waiting=2, num_waiting_deferred=1,
                       running_lora_adapters={"x": 1, "z": 1})
    s = sum_stats([a, b])
    assert (s.num_running, s.num_waiting, s.num_generation_tokens, s.num_waiting_deferred) == (3, 3, 4, 2)
    assert (s.running_lora_adapters, s.waiting_lora_adapters) == ({"x": 3, "z": 1}, {"y": 1})
    assert (s.prefix_cache_queries, s.prefix_cache_hits) == (16, 4)
    assert s.kv_cache_usage == pytest.approx(0.375)  # the mean: every replica has a cache of its own
    assert s.spec_accepted_per_pos == [6, 2]
    assert sum_stats([a]) is a


def test_each_gpu_replica_sees_its_own_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert replica_envs(2, 2, torch.device("cuda")) == [{"CUDA_VISIBLE_DEVICES": "4,5"},
                                                        {"CUDA_VISIBLE_DEVICES": "6,7"}]
    assert replica_envs(4, 1, torch.device("cuda"))[3] == {"CUDA_VISIBLE_DEVICES": "7"}
    assert replica_envs(1, 2, torch.device("cuda")) == [{}]


def test_cpu_replicas_split_the_threads_unless_the_user_chose(monkeypatch):
    from pagoda.worker import cpu_threads

    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert replica_envs(2, 1, torch.device("cpu")) == [{"OMP_NUM_THREADS": "4"}] * 2
    assert replica_envs(16, 1, torch.device("cpu"))[0] == {"OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert replica_envs(2, 1, torch.device("cpu")) == [{}, {}]


def test_more_replicas_than_devices_is_a_start_up_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_data_parallel(2, 1, torch.device("cuda"))
    with pytest.raises(ValueError, match=r"--data-parallel-size 2 x --tensor-parallel-size 2 needs 4 CUDA devices"):
        check_data_parallel(2, 2, torch.device("cuda"))
    with pytest.raises(ValueError, match=r"--data-parallel-size 2 x --tensor-parallel-size 1 x "
                                         r"--pipeline-parallel-size 2 needs 4 CUDA devices"):
        check_data_parallel(2, 1, torch.device("cuda"), pp=2)
    with pytest.raises(ValueError, match="--data-parallel-size 3 .* only 2 are visible"):
        check_data_parallel(3, 1, torch.device("cuda"))
    with pytest.raises(ValueError, match="--data-parallel-size 2: each replica gets its own devices"):
        check_data_parallel(2, 1, torch.device("cuda:1"))
    check_data_parallel(4, 1, torch.device("cpu"))  # CPU replicas share the host


def test_bad_sizes_name_the_flag():
    with pytest.raises(ValueError, match=r"--data-parallel-size\) must be at least 1, got 0"):
        EngineArgs(data_parallel_size=0).validate()
    with pytest.raises(ValueError, match="--data-parallel-size-local 1: every replica runs on this machine"):
        EngineArgs(data_parallel_size=2, data_parallel_size_local=1).validate()
    EngineArgs(data_parallel_size=2, data_parallel_size_local=2).validate()


def test_each_replica_starts_from_valid_single_engine_args():
    """-dp 2 -dpl 2 is accepted by the front end, and each replica's own arguments validate too."""
    from pagoda.engine.core_engines import replica_engine_args

    front = EngineArgs(data_parallel_size=2, data_parallel_size_local=2)
    front.validate()
    replica = EngineArgs(**replica_engine_args(front))
    replica.validate()
    assert (replica.data_parallel_size, replica.data_parallel_size_local) == (1, None)


def test_offline_llm_refuses_data_parallelism_before_loading():
    from pagoda import LLM

    with pytest.raises(ValueError, match=r"data_parallel_size=2 \(--data-parallel-size\): the offline engine"):
        LLM(model="/nonexistent/model", data_parallel_size=2)  # refused before the model is looked for


def test_serve_refuses_a_bad_size_at_once():
    # (vLLM's multi-node flags, refused by name at parse time, are covered by tests/server/test_serve_flags.py)
    r = subprocess.run([sys.executable, "-m", "pagoda", "serve", "/nonexistent/model", "--data-parallel-size", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--data-parallel-size) must be at least 1" in r.stderr, r.stderr[-2000:]
