"""A rank that is stuck, not dead: the step (or the start-up rendezvous) fails after ``PAGODA_DIST_TIMEOUT_S`` with
an error that names the step, the limit, the silent rank and the variable, not gloo's bare "Timed out waiting
15000ms"; a stuck worker of a failed start-up is stopped at once, not when the half-built engine is collected.

Each case runs in its own interpreter (one process holds one distributed engine). A stuck rank is a worker
process stopped with SIGSTOP (alive, silent); a slow engine core is an all-reduce that sleeps past the limit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pagoda.distributed.executor import is_timeout

STUCK_WORKER = """
import os, signal, sys
from pagoda import LLM, SamplingParams
llm = LLM(sys.argv[1], dtype="float32", device="cpu", tensor_parallel_size=2)
sp = SamplingParams(temperature=0, max_tokens=4)
llm.generate(["hello there"], sp, use_tqdm=False)
worker = llm.llm_engine.core.runner.executor.procs[0]
os.kill(worker.pid, signal.SIGSTOP)
try:
    llm.generate(["hello there"], sp, use_tqdm=False)
except Exception as e:
    print(type(e).__name__ + ":", e)
os.kill(worker.pid, signal.SIGCONT)
llm.llm_engine.shutdown()
"""

SLOW_CORE = """
import sys, time
from pagoda import LLM, SamplingParams
from pagoda.distributed import parallel_state
llm = LLM(sys.argv[1], dtype="float32", device="cpu", tensor_parallel_size=2)
sp = SamplingParams(temperature=0, max_tokens=4)
llm.generate(["hello there"], sp, use_tqdm=False)
real, calls = parallel_state.TPGroup.all_reduce, []
def slow(self, x):  # the engine core's rank stalls mid-step; its worker waits in the same all-reduce
    calls.append(1)
    if len(calls) == 2:
        time.sleep(18)
    return real(self, x)
parallel_state.TPGroup.all_reduce = slow
try:
    llm.generate(["hello there"], sp, use_tqdm=False)
except Exception as e:
    print(type(e).__name__ + ":", e)
parallel_state.TPGroup.all_reduce = real
llm.llm_engine.shutdown()
"""

STUCK_AT_START = """
import os, signal, subprocess, sys
from pagoda import LLM
from pagoda.distributed import executor

started = []
class Spawn:  # executor's view of subprocess: every worker is stopped as soon as it starts
    def __getattr__(self, name):
        return getattr(subprocess, name)
    @staticmethod
    def Popen(*a, **k):
        p = subprocess.Popen(*a, **k)
        os.kill(p.pid, signal.SIGSTOP)
        started.append(p)
        return p
executor.subprocess = Spawn()
try:
    LLM(sys.argv[1], dtype="float32", device="cpu", tensor_parallel_size=2)
except Exception as e:
    print(type(e).__name__ + ":", e)
    print("workers left:", sum(p.poll() is None for p in started))  # e still holds the half-built engine
"""


def _run(script: str, tiny, limit: int) -> str:
    """``limit``: PAGODA_DIST_TIMEOUT_S; where the workers must join, long enough for a loaded machine's start-up."""
    env = {**os.environ, "PAGODA_DIST_TIMEOUT_S": str(limit)}
    out = subprocess.run([sys.executable, "-c", script, str(tiny.path("llama"))], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_stuck_worker_fails_the_step_naming_the_rank_and_the_variable(tiny):
    out = _run(STUCK_WORKER, tiny, 15)
    assert out.startswith("WorkerDied: distributed step "), out
    assert "timed out: the engine core's rank (tensor-parallel rank 0 of 2) waited PAGODA_DIST_TIMEOUT_S=15 s" in out
    assert "still running without answering: tensor-parallel rank 1 of 2" in out
    assert "set PAGODA_DIST_TIMEOUT_S higher" in out


def test_slow_engine_core_worker_timeout_names_the_variable(tiny):
    out = _run(SLOW_CORE, tiny, 15)
    assert out.startswith("WorkerDied: tensor-parallel rank 1 of 2 died (exit code 1)"), out
    assert "it waited PAGODA_DIST_TIMEOUT_S=15 s in a collective" in out
    assert "set PAGODA_DIST_TIMEOUT_S higher" in out


def test_stuck_worker_at_start_up_names_the_variable_and_is_stopped(tiny):
    out = _run(STUCK_AT_START, tiny, 3)
    assert out.startswith("RuntimeError: distributed rendezvous timed out: the 2 ranks did not all join within "
                          "PAGODA_DIST_TIMEOUT_S=3 s"), out
    assert "Set PAGODA_DIST_TIMEOUT_S higher" in out
    assert "workers left: 0" in out


@pytest.mark.parametrize("text, timeout", [
    ("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to complete", True),
    ("Wait timeout", True),
    ("Watchdog caught collective operation timeout: WorkNCCL(SeqNum=3, OpType=ALLREDUCE) ran for 600000 "
     "milliseconds before timing out.", True),
    ("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:175", False),
    ("CUDA out of memory", False),
])
def test_timeouts_are_told_from_deaths(text, timeout):
    assert is_timeout(text) is timeout
    assert is_timeout(RuntimeError(text)) is timeout
