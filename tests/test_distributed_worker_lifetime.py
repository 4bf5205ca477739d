"""How long tensor-parallel worker processes live: as long as the engine's process, not the thread that started
them (``PR_SET_PDEATHSIG`` fires when the parent *thread* exits), and no longer than that process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine_checks import PROMPTS, greedy, token_ids

TP_KW = {"dtype": "float32", "device": "cpu", "max_num_batched_tokens": 48, "max_num_seqs": 8}


def test_llm_built_in_a_thread_that_ends_keeps_its_workers(tiny):
    """``LLM(tensor_parallel_size=2)`` made in a short-lived thread (a thread pool, a framework's start-up hook),
    then used from the main thread: the workers are alive and the tokens equal TP=1's."""
    from pagoda import LLM

    prompts = PROMPTS[:3]
    one = tiny.llm("llama", **{k: v for k, v in TP_KW.items() if k != "dtype"}).generate(
        prompts, greedy(max_tokens=6), use_tqdm=False)
    box: dict[str, object] = {}
    t = threading.Thread(target=lambda: box.setdefault("llm", LLM(str(tiny.path("llama")), tensor_parallel_size=2,
                                                                  **TP_KW)))
    t.start()
    t.join()
    llm = box["llm"]
    try:
        time.sleep(0.5)  # a worker that the thread's end signalled has exited by now
        assert [p.poll() for p in llm.llm_engine.core.runner.executor.procs] == [None]
        assert token_ids(llm.generate(prompts, greedy(max_tokens=6), use_tqdm=False)) == token_ids(one)
    finally:
        llm.llm_engine.shutdown()


def _state(pid: int) -> str | None:
    """The process's state letter (Z: exited, not yet reaped), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_worker_exits_when_its_parent_process_is_killed():
    """The watch that replaces the death signal: a process watching its parent exits within a few polls of the
    parent's SIGKILL (here the watched process holds no socket to the parent, so only the watch can end it)."""
    child = ("import os, time\n"
             "from pagoda.distributed.worker import watch_parent\n"
             "watch_parent(os.getppid(), 0.05)\n"
             "print('watching', flush=True)\n"
             "time.sleep(120)\n")
    parent = ("import subprocess, sys, time\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    watcher = 0
    try:
        assert proc.stdout is not None
        watcher = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "watching"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while _state(watcher) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(watcher) in (None, "Z")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if watcher and _state(watcher) not in (None, "Z"):
            os.kill(watcher, 9)


def test_cpu_worker_threads_are_a_share_of_the_usable_cpus(monkeypatch):
    """In a container of 4 CPUs on a 64-CPU host, two ranks get 2 threads each (not 32); a count already set lower
    (OMP_NUM_THREADS, Ray's one CPU per actor) is kept; at least one thread."""
    import torch

    from pagoda.distributed import worker
    from pagoda.worker import cpu_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert worker.cpu_threads_per_rank(2) == 2
    assert worker.cpu_threads_per_rank(8) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert worker.cpu_threads_per_rank(2) == 1
